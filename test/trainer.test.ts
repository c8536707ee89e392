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

/** A trainer over lmData writing checkpoints into `dir` every 2 steps. */
async function checkpointed(dir: string, maxSteps: number, extra: Record<string, unknown> = {}) {
  const model = await Model.fromPretrained(modelDir('gpt2-causal-lm'));
  const trainer = new Trainer(model, {
    optimizer: new AdamW(model, { lr: 1e-3 }),
    batchSize: 4,
    maxSteps,
    seed: 1,
    checkpointDir: dir,
    checkpointEvery: 2,
    ...extra,
  });
  return { model, trainer };
}

test('a fresh run into a folder holding checkpoints is refused; pruning never removes the checkpoint latest.json names', async (t) => {
  const dir = tmpDir('ckpt-used');
  const first = await checkpointed(dir, 4);
  await first.trainer.train(lmData);
  first.model.dispose();
  t.deepEqual(fs.readdirSync(dir).sort(), ['checkpoint-2', 'checkpoint-4', 'latest.json']);
  const fresh = await checkpointed(dir, 4, { resume: false });
  await t.throwsAsync(fresh.trainer.train(lmData), {
    code: 'E_STATE',
    message: /already holds checkpoints of an earlier run \(checkpoint-2, checkpoint-4\)/,
  } as any);
  fresh.model.dispose();
  // A higher-numbered folder from an abandoned longer run: resuming from checkpoint-4 must keep each new checkpoint.
  fs.cpSync(path.join(dir, 'checkpoint-4'), path.join(dir, 'checkpoint-40'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'latest.json'), JSON.stringify({ checkpoint: 'checkpoint-4', step: 4 }));
  const resumed = await checkpointed(dir, 6);
  const r = await resumed.trainer.train(lmData);
  t.is(r.resumedFrom, 4);
  const latest = JSON.parse(fs.readFileSync(path.join(dir, 'latest.json'), 'utf8')).checkpoint;
  t.is(latest, 'checkpoint-6');
  t.deepEqual(fs.readdirSync(dir).sort(), ['checkpoint-4', 'checkpoint-6', 'latest.json']);
  resumed.model.dispose();
});

test('leftovers of killed runs are cleaned; a missing latest checkpoint falls back to the newest complete one, with a warning', async (t) => {
  const dir = tmpDir('ckpt-stale');
  const first = await checkpointed(dir, 4);
  await first.trainer.train(lmData);
  first.model.dispose();
  // A dead writer's temporary, a half-deleted checkpoint, an incomplete newer checkpoint and a latest.json naming it.
  const deadPid = 2 ** 22 + 12345;
  fs.cpSync(path.join(dir, 'checkpoint-4'), path.join(dir, `.tmp-checkpoint-6-${deadPid}`), { recursive: true });
  fs.mkdirSync(path.join(dir, `.trash-checkpoint-2-${deadPid}`));
  fs.mkdirSync(path.join(dir, 'checkpoint-8'));
  fs.copyFileSync(path.join(dir, 'checkpoint-4', 'trainer_state.json'), path.join(dir, 'checkpoint-8', 'trainer_state.json'));
  fs.writeFileSync(path.join(dir, 'latest.json'), JSON.stringify({ checkpoint: 'checkpoint-8', step: 8 }));
  const warnings: string[] = [];
  const onWarning = (w: Error) => warnings.push(w.message);
  process.on('warning', onWarning);
  const resumed = await checkpointed(dir, 6);
  const r = await resumed.trainer.train(lmData);
  await new Promise((res) => setImmediate(res));
  process.off('warning', onWarning);
  t.is(r.resumedFrom, 4);
  t.true(
    warnings.some((w) => /names checkpoint-8, which is missing or incomplete; resuming from checkpoint-4/.test(w)),
    warnings.join('\n'),
  );
  t.deepEqual(fs.readdirSync(dir).sort(), ['checkpoint-4', 'checkpoint-6', 'latest.json']);
  resumed.model.dispose();
});

test('language-model batches with no token to predict are skipped and counted; onTrained runs before the final evaluation', async (t) => {
  const model = await Model.fromPretrained(modelDir('gpt2-causal-lm'));
  const data: Example[] = [{ inputIds: [] }, { inputIds: [5] }, ...lmData.slice(0, 2)];
  const order: string[] = [];
  const trainer = new Trainer(model, {
    optimizer: new AdamW(model),
    batchSize: 1,
    seed: 0,
    onTrained: () => {
      order.push('trained');
    },
  });
  const evalSet = lmData.slice(0, 2);
  const evaluate = trainer.evaluate.bind(trainer);
  trainer.evaluate = async (d) => {
    order.push('evaluate');
    return evaluate(d);
  };
  const r = await trainer.train(data, { evalSet });
  t.is(r.skippedBatches, 2);
  t.is(r.steps, 2);
  t.true(Number.isFinite(r.trainLoss));
  t.deepEqual(order, ['trained', 'evaluate']);
  model.dispose();
});
