import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { Model, SGD, TunekitError } from '../lib';
import { ATTENTION_MASK, INPUT_IDS, modelDir, python, readTensors, relError, tmpDir } from './helpers';

// Position 0 holds each row's next-sentence label (the third row's is ignored); the rest are masked-LM targets at
// every other real token.
const LABELS = INPUT_IDS.map((row, i) =>
  row.map((tok, j) => (j === 0 ? [1, 0, -100][i] : ATTENTION_MASK[i][j] && j % 2 === 1 ? tok : -100)),
);
const batch = { inputIds: INPUT_IDS, attentionMask: ATTENTION_MASK, labels: LABELS };

async function pretrainingModel(): Promise<{ model: Model; dir: string }> {
  // The masked-LM checkpoint loads into the pretraining task with a fresh (seeded) next-sentence head.
  const model = await Model.fromPretrained(modelDir('distilbert-masked-lm'), { task: 'pretraining', seed: 7 });
  const dir = tmpDir('pretraining');
  await model.savePretrained(dir, { includeAdapters: true }); // a trainer checkpoint keeps the head
  return { model, dir };
}

test('pretraining: masked-LM + next-sentence loss and every gradient match the PyTorch twin', async (t) => {
  const { model, dir } = await pretrainingModel();
  const before = readTensors(path.join(dir, 'model.safetensors'));
  t.true(
    [...before.keys()].some((k) => k.startsWith('nsp_')),
    'the checkpoint form keeps the next-sentence head',
  );
  const ref = python('pretraining.py', [dir, JSON.stringify(LABELS)]);
  t.true(ref.loss - ref.mlm_loss > 0.1, 'the next-sentence term must weigh in for the test to mean anything');

  await model.train();
  const opt = new SGD(model, { lr: 1, weightDecay: 0 });
  const { loss } = await model.backward(batch);
  t.true(Math.abs(loss - ref.loss) / ref.loss < 1e-5, `loss ${loss} vs ${ref.loss}`);
  await opt.step();
  const afterDir = tmpDir('pretraining-after');
  await model.savePretrained(afterDir, { includeAdapters: true });
  const after = readTensors(path.join(afterDir, 'model.safetensors'));
  const grads = Object.entries(ref.grads as Record<string, number[]>);
  const largest = Math.max(...grads.flatMap(([, g]) => g.map(Math.abs)));
  let worst = 0;
  for (const [name, g] of grads) {
    const step = after.get(name)!.map((v, i) => before.get(name)![i] - v);
    if (name.endsWith('attention.k_lin.bias')) {
      // A key bias shifts all of a query's scores by the same amount, which softmax ignores: its gradient is zero in
      // exact arithmetic and both sides hold float32 rounding noise, held to a millionth of the largest gradient.
      for (const v of [...step, ...g]) t.true(Math.abs(v) <= 1e-6 * largest, `${name}: ${v} vs largest ${largest}`);
      continue;
    }
    worst = Math.max(worst, relError(step, g));
  }
  t.log(`worst gradient relative error: ${worst.toExponential(2)}`);
  t.true(worst < 1e-4);
  t.true(Object.keys(ref.grads).includes('nsp_classifier.weight'));
  model.dispose();
});

test('pretraining: without next-sentence labels the loss is the masked-LM loss alone', async (t) => {
  const { model, dir } = await pretrainingModel();
  const ref = python('pretraining.py', [dir, JSON.stringify(LABELS)]);
  const mlmOnly = LABELS.map((row) => [-100, ...row.slice(1)]);
  const { loss } = await model.forward({ inputIds: INPUT_IDS, attentionMask: ATTENTION_MASK, labels: mlmOnly });
  t.true(Math.abs(loss! - ref.mlm_loss) / ref.mlm_loss < 1e-5, `loss ${loss} vs ${ref.mlm_loss}`);
  model.dispose();
});

test('pretraining: savePretrained writes the masked-LM class without the next-sentence head, and transformers reads it', async (t) => {
  const { model } = await pretrainingModel();
  const dir = tmpDir('pretraining-published');
  await model.savePretrained(dir);
  const config = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
  t.deepEqual(config.architectures, ['DistilBertForMaskedLM']);
  const keys = [...readTensors(path.join(dir, 'model.safetensors')).keys()];
  t.false(keys.some((k) => k.startsWith('nsp_')));
  t.true(keys.includes('vocab_transform.weight'));
  const ref = python('logits.py', [dir]);
  const mine = await model.forward({ inputIds: INPUT_IDS, attentionMask: ATTENTION_MASK });
  t.deepEqual(mine.logits.shape, ref.shape);
  t.true(relError(mine.logits.data, ref.data) < 1e-4);
  const reloaded = await Model.fromPretrained(dir);
  t.is(reloaded.task, 'masked-lm');
  model.dispose();
  reloaded.dispose();
});

test('pretraining: refused where it does not exist, and a next-sentence label out of range is E_RANGE', async (t) => {
  const gpt2 = await t.throwsAsync(Model.fromPretrained(modelDir('gpt2-causal-lm'), { task: 'pretraining' }), { instanceOf: TunekitError });
  t.is((gpt2 as TunekitError).code, 'E_CONFIG');
  const { model } = await pretrainingModel();
  const bad = LABELS.map((row) => [2, ...row.slice(1)]);
  const err = await t.throwsAsync(model.forward({ inputIds: INPUT_IDS, attentionMask: ATTENTION_MASK, labels: bad }), {
    instanceOf: TunekitError,
  });
  t.is((err as TunekitError).code, 'E_RANGE');
  t.regex(err!.message, /next-sentence label/);
  model.dispose();
});

test('masked LM: a loss-only forward scores the target positions alone and gives the loss over every position', async (t) => {
  // Targets at every other real token; without --logits the head runs on those rows only.
  const mlm = LABELS.map((row) => [-100, ...row.slice(1)]);
  for (const name of ['distilbert-masked-lm', 'bert-masked-lm']) {
    const model = await Model.fromPretrained(modelDir(name));
    const full = await model.forward({ inputIds: INPUT_IDS, attentionMask: ATTENTION_MASK, labels: mlm });
    const lossOnly = await model.forward({ inputIds: INPUT_IDS, attentionMask: ATTENTION_MASK, labels: mlm }, { logits: false });
    t.true(Math.abs(lossOnly.loss! - full.loss!) / full.loss! < 1e-6, `${name}: ${lossOnly.loss} vs ${full.loss}`);
    const bad = mlm.map((row) => row.slice(1));
    const err = await t.throwsAsync(model.forward({ inputIds: INPUT_IDS, labels: bad }, { logits: false }), { instanceOf: TunekitError });
    t.is((err as TunekitError).code, 'E_SHAPE');
    model.dispose();
  }
  const { model } = await pretrainingModel();
  const full = await model.forward(batch);
  const lossOnly = await model.forward(batch, { logits: false });
  t.true(Math.abs(lossOnly.loss! - full.loss!) / full.loss! < 1e-6, `pretraining: ${lossOnly.loss} vs ${full.loss}`);
  model.dispose();
});
