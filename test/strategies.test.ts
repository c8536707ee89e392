import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { AdamW, Dataset, FeatureBased, FinetuneAll, FinetuneHead, Model, Tokenizer } from '../lib';
import { readHeader } from '../lib/safetensors';
import { ATTENTION_MASK, CLASS_LABELS, DEVICE, INPUT_IDS, modelDir, ROOT, tmpDir } from './helpers';

const batch = { inputIds: INPUT_IDS, attentionMask: ATTENTION_MASK, labels: CLASS_LABELS };

for (const [name, head] of [
  ['distilbert-seq-cls', ['pre_classifier.weight', 'pre_classifier.bias', 'classifier.weight', 'classifier.bias']],
  ['gpt2-seq-cls', ['score.weight']],
  ['llama-seq-cls', ['score.weight']],
] as const) {
  test(`FinetuneHead on ${name}: only the head gets gradients and optimizer state`, async (t) => {
    const model = await Model.fromPretrained(modelDir(name), { device: DEVICE });
    const s = new FinetuneHead();
    await s.apply(model);
    t.deepEqual(
      model
        .parameters()
        .filter((p) => p.trainable)
        .map((p) => p.name)
        .sort(),
      [...head].sort(),
    );
    await model.backward(batch);
    t.deepEqual((await model.parametersWithGradients()).sort(), [...head].sort());
    const opt = new AdamW(model, { lr: 1e-3 });
    await opt.step();
    const file = path.join(tmpDir('opt'), 'optimizer.safetensors');
    await opt.save(file);
    const stateOf = new Set([...readHeader(file).tensors.keys()].map((k) => k.replace(/\.(exp_avg|exp_avg_sq|momentum_buffer)$/, '')));
    t.deepEqual([...stateOf].sort(), [...head].sort());
    model.dispose();
  });
}

test('FinetuneHead with unfreezeLastBlocks adds the last block (and gpt2 its final norm)', async (t) => {
  const model = await Model.fromPretrained(modelDir('gpt2-seq-cls'), { device: DEVICE });
  await new FinetuneHead({ unfreezeLastBlocks: 1 }).apply(model);
  const layers = Number(model.config.n_layer);
  const trainable = model
    .parameters()
    .filter((p) => p.trainable)
    .map((p) => p.name);
  t.true(trainable.includes('score.weight'));
  t.true(trainable.some((n) => n.startsWith(`transformer.h.${layers - 1}.`)));
  t.false(trainable.some((n) => n.startsWith(`transformer.h.${layers - 2}.`)));
  t.true(trainable.includes('transformer.ln_f.weight'));
  await model.backward(batch);
  t.deepEqual((await model.parametersWithGradients()).sort(), trainable.sort());
  await t.throwsAsync(new FinetuneHead({ unfreezeLastBlocks: layers + 1 }).apply(model), { code: 'E_ARG' } as any);
  model.dispose();
});

test('FinetuneAll trains every parameter', async (t) => {
  const model = await Model.fromPretrained(modelDir('distilbert-seq-cls'), { device: DEVICE });
  await model.setTrainable('all', false);
  await new FinetuneAll().apply(model);
  t.is(model.countParameters({ trainableOnly: true }), model.countParameters());
  await model.backward(batch);
  t.is((await model.parametersWithGradients()).length, model.parameters().length);
  model.dispose();
});

/**
 * Which site a review sentence comes from, IMDB (0) or Yelp (1): a held-out task the frozen features of the small
 * shipped model can carry. (On the sentiment task itself, tiny-distilbert's frozen [CLS] state is too weak for the head
 * alone: see docs/RESULTS.md.)
 */
function sourceTask(tok: Tokenizer) {
  const dir = path.join(path.dirname(require.resolve('sentiment/package.json')), 'test', 'fixtures');
  const rows = ['imdb', 'yelp'].flatMap((f, label) =>
    (JSON.parse(fs.readFileSync(path.join(dir, `${f}.json`), 'utf8')) as { text: string }[])
      .filter((r) => r.text.trim() !== '')
      .map((r) => ({ text: r.text.trim(), label })),
  );
  const parts = new Dataset(rows, { labelNames: ['imdb', 'yelp'] }).split({ train: 0.7, validation: 0.1, test: 0.2 }, 11);
  return {
    train: parts.train.toExamples(tok, { maxLength: 64 }),
    validation: parts.validation.toExamples(tok, { maxLength: 64 }),
    test: parts.test.toExamples(tok, { maxLength: 64 }),
  };
}

test('each strategy beats chance on a held-out split with tiny-distilbert', async (t) => {
  const dir = path.join(ROOT, 'models', 'tiny-distilbert');
  const tok = await Tokenizer.fromPretrained(dir);
  const { train, validation, test: test_ } = sourceTask(tok);
  t.is(test_.length, 400);
  const results: Record<string, number> = {};
  const fm = await Model.fromPretrained(dir, { task: 'feature-extraction' });
  const f = await new FeatureBased().run(fm, { train, test: test_ });
  results.features = f.test!.accuracy!;
  fm.dispose();
  for (const s of [new FinetuneHead({ lr: 2e-3, epochs: 2, seed: 1 }), new FinetuneAll({ lr: 3e-4, epochs: 1, seed: 1 })]) {
    const model = await Model.fromPretrained(dir, { task: 'sequence-classification', numLabels: 2, seed: 1 });
    const r = await s.run(model, { train, validation, test: test_ });
    results[s.name] = r.test!.accuracy!;
    t.true(r.trainableParameters === model.countParameters({ trainableOnly: true }) && r.peakRssMiB > 0 && r.tokensPerSecond! > 0);
    model.dispose();
  }
  t.log(JSON.stringify(results));
  // 400 balanced test sentences: 224 or more right (56%) has probability under 1% by chance (binomial, one-sided).
  for (const [k, acc] of Object.entries(results)) t.true(acc >= 0.56, `${k}: ${acc}`);
});

test('the CLI runs the feature-based strategy', async (t) => {
  const { spawnSync } = await import('node:child_process');
  const out = path.join(tmpDir('cli-features'), 'run');
  const r = spawnSync(
    process.execPath,
    [path.join(ROOT, 'dist', 'cli', 'main.js'), 'finetune', '--strategy', 'features', '--out', out, '--quiet'],
    { encoding: 'utf8' },
  );
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, /test accuracy [\d.]+% \(loss [\d.]+, 200 examples\)/);
  const clf = JSON.parse(fs.readFileSync(path.join(out, 'classifier.json'), 'utf8'));
  t.is(clf.weights.length, 256);
});
