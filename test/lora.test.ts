import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { LoRA, Model, SGD } from '../lib';
import {
  adapterTensors,
  DEVICE,
  expectGradients,
  fullBatch,
  modelDir,
  python,
  realPosition,
  relError,
  savedParams,
  tmpDir,
  trainThenSaveAdapter,
} from './helpers';

const CASES = [
  { name: 'gpt2-seq-cls', targets: ['c_attn'], classify: true },
  { name: 'llama-causal-lm', targets: ['q_proj', 'v_proj'], classify: false },
  { name: 'distilbert-seq-cls', targets: ['q_lin', 'v_lin'], classify: true },
  { name: 'bert-seq-cls', targets: ['query', 'value'], classify: true },
  { name: 'qwen2-causal-lm', targets: ['q_proj', 'v_proj'], classify: false },
];
const batchFor = fullBatch;
const valid = realPosition;

/** Values of the adapter tensors as PEFT keys, read back through saveAdapter. */

for (const c of CASES) {
  test(`LoRA on ${c.name}: a PEFT adapter loads with PEFT's logits, loss and gradients; trainable count as PEFT`, async (t) => {
    const dir = tmpDir('peft-made');
    const ref = python('peft_lora.py', [
      'create',
      modelDir(c.name),
      dir,
      JSON.stringify({ r: 4, alpha: 8, target_modules: c.targets, seed: 1 }),
    ]);
    const model = await Model.fromPretrained(modelDir(c.name), { device: DEVICE });
    await model.loadAdapter(dir, { trainable: true });
    t.is(model.countParameters({ trainableOnly: true }), ref.trainable);
    await model.train();
    const before = await adapterTensors(model);
    const batch = batchFor(c.classify);
    const out = await model.forward(batch);
    t.true(relError(out.logits.data, ref.logits, valid(ref.shape)) < 1e-5, 'logits');
    t.true(Math.abs(out.loss! - ref.loss) / Math.abs(ref.loss) < 1e-5, `loss ${out.loss} vs ${ref.loss}`);
    await expectGradients(t, model, batch, before, ref.grads, /\.(lora_[AB]|modules_to_save)\./);
    model.dispose();
  });

  test(`LoRA on ${c.name}: trained in tunekit, saved, loaded by PEFT with the same logits; merge and unmerge`, async (t) => {
    const model = await Model.fromPretrained(modelDir(c.name), { device: DEVICE });
    const base = await savedParams(model);
    await new LoRA({ r: 4, alpha: 16, targetModules: c.targets, seed: 3 }).apply(model);
    const batch = batchFor(c.classify);
    const { mine, dir } = await trainThenSaveAdapter(model, batch, 'tk-adapter');
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'));
    t.is(cfg.peft_type, 'LORA');
    t.is(cfg.fan_in_fan_out, c.name.startsWith('gpt2'));
    const ref = python('peft_lora.py', ['load', modelDir(c.name), dir]);
    const err = relError(mine.logits.data, ref.logits, valid(ref.shape));
    t.true(err < 1e-4, `tunekit vs PEFT logits: ${err}`);
    // Merged: the same outputs from plain weights; unmerged: the base weights come back.
    await model.mergeAdapter();
    const merged = await model.forward(batch);
    t.true(relError(merged.logits.data, mine.logits.data, valid(ref.shape)) < 1e-5);
    await model.unmergeAdapter();
    const restored = await savedParams(model);
    let worst = 0;
    for (const [name, w] of base) worst = Math.max(worst, relError(restored.get(name)!, w));
    t.true(worst < 1e-6, `unmerge restores the base weights (worst ${worst})`);
    model.dispose();
  });
}

test('two adapters on one base, switched per call; the bare base with setAdapter(null)', async (t) => {
  const model = await Model.fromPretrained(modelDir('gpt2-seq-cls'), { device: DEVICE });
  const batch = batchFor(true);
  const bare = await model.forward(batch);
  const trained: Record<string, Float32Array> = {};
  for (const [name, lr] of [
    ['a', 5e-2],
    ['b', -5e-2],
  ] as const) {
    await new LoRA({ r: 2, targetModules: ['c_attn'], seed: name === 'a' ? 1 : 2 }).apply(model, { adapterName: name });
    const opt = new SGD(model, { lr: Math.abs(lr) });
    await model.train();
    await model.backward({ ...batch, labels: name === 'a' ? [0, 0, 0] : [1, 1, 1] });
    await opt.step();
    await opt.zeroGrad();
    await model.eval();
    trained[name] = (await model.forward(batch)).logits.data;
  }
  t.deepEqual(model.adapters, ['a', 'b']);
  t.notDeepEqual(trained.a, trained.b);
  for (const name of ['a', 'b', 'a', 'b']) {
    await model.setAdapter(name);
    t.deepEqual((await model.forward(batch)).logits.data, trained[name], `adapter ${name}`);
  }
  await model.setAdapter(null);
  t.deepEqual((await model.forward(batch)).logits.data, bare.logits.data);
  await t.throwsAsync(model.setAdapter('c'), { code: 'E_ARG' } as any);
  model.dispose();
});

test('LoRA bad input: no matching module, bad rank, missing or foreign adapter files', async (t) => {
  const model = await Model.fromPretrained(modelDir('gpt2-seq-cls'), { device: DEVICE });
  await t.throwsAsync(new LoRA({ targetModules: ['q_proj'] }).apply(model), { code: 'E_ARG', message: /match no linear layer/ } as any);
  await t.throwsAsync(new LoRA({ r: 0 }).apply(model), { code: 'E_ARG' } as any);
  await t.throwsAsync(model.loadAdapter('/no/such/adapter'), { code: 'E_FILE' } as any);
  const dir = tmpDir('bad-adapter');
  const ref = python('peft_lora.py', [
    'create',
    modelDir('distilbert-seq-cls'),
    dir,
    JSON.stringify({ r: 2, alpha: 4, target_modules: ['q_lin'] }),
  ]);
  t.truthy(ref.loss);
  await t.throwsAsync(model.loadAdapter(dir), { code: 'E_FORMAT', message: /names no parameter|does not have/ } as any);
  t.deepEqual(model.adapters, []);
  model.dispose();
});
