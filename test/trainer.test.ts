// The managed loop: accumulation, evaluation, progress, atomic checkpoints and an exact resume.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { AdamW, Example, Model, Progress, Trainer } from '../lib';
import { modelDir, savedParams, tmpDir } from './helpers';

// Token sequences with a pattern a tiny model can pick up: counting upwards from a random start.
const lmData: Example[] = Array.from({ length: 24 }, (_, i) => ({
  inputIds: Array.from({ length: 6 + (i % 5) }, (_, j) => 10 + ((i * 7 + j) % 60)),
}));

async function run(maxSteps: number, checkpointDir?: string) {
  const model = await Model.fromPretrained(modelDir('gpt2-causal-lm'));
  const optimizer = new AdamW(model, { lr: 3e-3, schedule: { type: 'cosine', warmupSteps: 2, totalSteps: 12 } });
  const progress: Progress[] = [];
  const trainer = new Trainer(model, {
    optimizer,
    batchSize: 4,
    epochs: 3,
    maxSteps,
    gradAccumulation: 2,
    maxGradNorm: 1.0,
    seed: 3,
    checkpointDir,
    checkpointEvery: 3,
    onProgress: (p) => progress.push(p),
  });
  const result = await trainer.train(lmData, { evalSet: lmData.slice(0, 8) });
  return { model, result, progress };
}

test('trains a language model with accumulation, evaluation and progress', async (t) => {
  const { model, result, progress } = await run(9);
  t.is(result.steps, 9);
  t.is(progress.length, 9);
  t.deepEqual(
    progress.map((p) => p.step),
    [1, 2, 3, 4, 5, 6, 7, 8, 9],
  );
  t.is(progress[0].lr, 0, 'first warmup step has lr 0, as transformers');
  t.true(progress.every((p) => p.tokensPerSecond > 0 && Number.isFinite(p.loss) && p.totalSteps === 9));
  t.true(progress[8].loss < progress[0].loss, `loss ${progress[0].loss} -> ${progress[8].loss}`);
  t.truthy(result.eval && result.eval.perplexity! > 1);
  model.dispose();
});

test('a run stopped at a checkpoint and resumed ends on the same weights as one uninterrupted run', async (t) => {
  const straight = await run(6);
  const dir = tmpDir('ckpt');
  const first = await run(3, dir);
  t.deepEqual(fs.readdirSync(dir).sort(), ['checkpoint-3', 'latest.json']);
  t.deepEqual(fs.readdirSync(path.join(dir, 'checkpoint-3')).sort(), [
    'config.json',
    'model.safetensors',
    'optimizer.safetensors',
    'trainer_state.json',
  ]);
  first.model.dispose();
  const resumed = await run(6, dir);
  t.is(resumed.result.resumedFrom, 3);
  t.deepEqual(
    resumed.progress.map((p) => p.step),
    [4, 5, 6],
  );
  t.deepEqual(
    resumed.progress.map((p) => p.loss),
    straight.progress.slice(3).map((p) => p.loss),
  );
  const a = await savedParams(straight.model);
  const b = await savedParams(resumed.model);
  for (const [name, w] of a) t.deepEqual(b.get(name), w, name);
  // Checkpoints were renamed into place whole: no temporary folder is left.
  t.deepEqual(
    fs.readdirSync(dir).filter((f) => f.startsWith('.tmp')),
    [],
  );
  t.is(JSON.parse(fs.readFileSync(path.join(dir, 'latest.json'), 'utf8')).checkpoint, 'checkpoint-6');
  straight.model.dispose();
  resumed.model.dispose();
});

test('a classifier fits a small labelled set and evaluate reports accuracy', async (t) => {
  const model = await Model.fromPretrained(modelDir('distilbert-seq-cls'));
  const data: Example[] = Array.from({ length: 16 }, (_, i) => ({
    inputIds: [2, ...Array.from({ length: 5 }, (_, j) => (i % 2 ? 20 : 50) + ((i + j) % 9))],
    label: i % 2,
  }));
  const trainer = new Trainer(model, { optimizer: new AdamW(model, { lr: 1e-3 }), batchSize: 8, epochs: 8 });
  const before = await trainer.evaluate(data);
  const result = await trainer.train(data, { evalSet: data });
  t.log(`accuracy ${before.accuracy} -> ${result.eval!.accuracy}`);
  t.is(result.eval!.accuracy, 1);
  t.true(result.eval!.loss < before.loss);
  model.dispose();
});
