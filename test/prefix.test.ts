import test from 'ava';
import { AdamW, Model, PrefixTuning } from '../lib';
import {
  adapterTensors,
  DEVICE,
  expectGradients,
  fullBatch,
  INPUT_IDS,
  modelDir,
  python,
  realPosition,
  relError,
  tmpDir,
  trainThenSaveAdapter,
} from './helpers';

const ROWS = [0, 1, 2];
const CASES = [
  { name: 'gpt2-seq-cls', classify: true },
  { name: 'llama-causal-lm', classify: false },
  { name: 'bert-seq-cls', classify: true },
];
const batchFor = fullBatch;
const valid = realPosition;

for (const c of CASES) {
  test(`prefix tuning on ${c.name}: a PEFT adapter loads with PEFT's logits, loss and gradients`, async (t) => {
    const dir = tmpDir('peft-prefix');
    const ref = python('peft_prefix.py', ['create', modelDir(c.name), dir, JSON.stringify({ num_virtual_tokens: 3, rows: ROWS, seed: 6 })]);
    const model = await Model.fromPretrained(modelDir(c.name), { device: DEVICE });
    await model.loadAdapter(dir, { trainable: true });
    t.is(model.countParameters({ trainableOnly: true }), ref.trainable);
    await model.train();
    const batch = batchFor(c.classify);
    const out = await model.forward(batch);
    t.deepEqual(out.logits.shape, ref.shape);
    t.true(
      relError(out.logits.data, ref.logits, valid(ref.shape)) < 1e-5,
      `logits ${relError(out.logits.data, ref.logits, valid(ref.shape))}`,
    );
    t.true(Math.abs(out.loss! - ref.loss) / Math.abs(ref.loss) < 1e-5, `loss ${out.loss} vs ${ref.loss}`);
    const before = await adapterTensors(model);
    await expectGradients(t, model, batch, before, ref.grads, /modules_to_save|prefix_encoder/);
    model.dispose();
  });

  test(`prefix tuning on ${c.name} with the reparameterisation MLP: trained in tunekit, loaded by PEFT with the same logits`, async (t) => {
    const model = await Model.fromPretrained(modelDir(c.name), { device: DEVICE });
    await new PrefixTuning({ numVirtualTokens: 4, prefixProjection: true, encoderHiddenSize: 12, seed: 2 }).apply(model);
    const { mine, dir } = await trainThenSaveAdapter(model, batchFor(c.classify), 'tk-prefix');
    const ref = python('peft_prefix.py', ['load', modelDir(c.name), dir, JSON.stringify(ROWS)]);
    t.true(
      relError(mine.logits.data, ref.logits, valid(ref.shape)) < 1e-4,
      `tunekit vs PEFT ${relError(mine.logits.data, ref.logits, valid(ref.shape))}`,
    );
    // Greedy generation runs behind the prefix too.
    if (!c.classify) {
      const [ids] = await model.generate({ inputIds: [INPUT_IDS[0]] }, { maxNewTokens: 3 });
      t.is(ids.length, INPUT_IDS[0].length + 3);
    }
    model.dispose();
  });
}

test('prefix tuning on distilbert (PEFT cannot: DistilBERT takes no past key values): trains, saves and reloads', async (t) => {
  const model = await Model.fromPretrained(modelDir('distilbert-seq-cls'), { device: DEVICE });
  const batch = batchFor(true);
  await new PrefixTuning({ numVirtualTokens: 3, seed: 1 }).apply(model);
  const opt = new AdamW(model, { lr: 5e-2 });
  await model.train();
  const first = (await model.backward(batch)).loss;
  await opt.step();
  await opt.zeroGrad();
  for (let i = 0; i < 5; i++) {
    await model.backward(batch);
    await opt.step();
    await opt.zeroGrad();
  }
  await model.eval();
  const mine = await model.forward(batch);
  t.true(mine.loss! < first, `loss ${first} -> ${mine.loss}`);
  const dir = tmpDir('db-prefix');
  await model.saveAdapter(dir);
  const again = await Model.fromPretrained(modelDir('distilbert-seq-cls'), { device: DEVICE });
  await again.loadAdapter(dir);
  t.deepEqual((await again.forward(batch)).logits.data, mine.logits.data);
  model.dispose();
  again.dispose();
});
