// What tunekit saves, transformers loads with the same outputs; and tunekit reloads its own save.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { Model } from '../lib';
import { ATTENTION_MASK, DEVICE, INPUT_IDS, modelDir, python, relError, tmpDir } from './helpers';

for (const name of ['gpt2-causal-lm', 'llama-causal-lm', 'distilbert-seq-cls', 'gpt2-base']) {
  test(`${name}: saved by tunekit, loaded by transformers, equal outputs`, async (t) => {
    const model = await Model.fromPretrained(modelDir(name), { device: DEVICE });
    const dir = tmpDir('save');
    await model.savePretrained(dir);
    t.true(fs.existsSync(path.join(dir, 'config.json')));
    t.deepEqual(
      fs.readdirSync(dir).filter((f) => f.endsWith('.tmp')),
      [],
      'no temporary file is left behind',
    );
    const ours = await model.forward({ inputIds: INPUT_IDS, attentionMask: ATTENTION_MASK });
    const theirs = python('logits.py', [dir]);
    t.deepEqual(ours.logits.shape, theirs.shape);
    // Compare the unpadded first row, where every position is meaningful.
    const perRow = ours.logits.data.length / 3;
    const err = relError(ours.logits.data.subarray(0, perRow), theirs.data.slice(0, perRow));
    t.log(`transformers on tunekit's save: relative error ${err.toExponential(2)}`);
    t.true(err < 1e-4);
    const again = await Model.fromPretrained(dir, { device: DEVICE });
    t.is(again.task, model.task);
    const back = await again.forward({ inputIds: INPUT_IDS, attentionMask: ATTENTION_MASK });
    t.deepEqual(back.logits.data, ours.logits.data);
    model.dispose();
    again.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  });
}

test('a causal-LM checkpoint loads for classification with a fresh, seeded head', async (t) => {
  const a = await Model.fromPretrained(modelDir('gpt2-causal-lm'), { task: 'sequence-classification', numLabels: 3, seed: 1 });
  const b = await Model.fromPretrained(modelDir('gpt2-causal-lm'), { task: 'sequence-classification', numLabels: 3, seed: 1 });
  t.deepEqual(a.newlyInitialized, ['score.weight']);
  const x = await a.forward({ inputIds: INPUT_IDS, attentionMask: ATTENTION_MASK });
  const y = await b.forward({ inputIds: INPUT_IDS, attentionMask: ATTENTION_MASK });
  t.deepEqual(x.logits.shape, [3, 3]);
  t.deepEqual(x.logits.data, y.logits.data);
  a.dispose();
  b.dispose();
});

test('bfloat16 runs on CPU and stays close to float32', async (t) => {
  const f32 = await Model.fromPretrained(modelDir('llama-causal-lm'));
  const bf16 = await Model.fromPretrained(modelDir('llama-causal-lm'), { dtype: 'bfloat16' });
  t.is(bf16.dtype, 'bfloat16');
  const batch = { inputIds: INPUT_IDS.slice(0, 1), labels: INPUT_IDS.slice(0, 1) };
  const a = await f32.forward(batch);
  const b = await bf16.forward(batch);
  const err = relError(b.logits.data, a.logits.data);
  t.log(`bf16 vs f32 logits: ${err.toExponential(2)}`);
  t.true(err < 0.05);
  const { loss } = await bf16.backward(batch);
  t.true(Number.isFinite(loss));
  f32.dispose();
  bf16.dispose();
});
