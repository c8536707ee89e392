// IA3 against PEFT 0.21 on every family: PEFT's files both ways, logits, loss and gradients, merge and unmerge.
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { IA3, Model } from '../lib';
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

// PEFT's own defaults for gpt2, llama, qwen2 and bert; distilbert has none in PEFT, so tunekit's are passed to both.
const CASES = [
  { name: 'gpt2-seq-cls', targets: ['c_attn', 'mlp.c_proj'], ff: ['mlp.c_proj'], classify: true },
  { name: 'llama-causal-lm', targets: ['k_proj', 'v_proj', 'down_proj'], ff: ['down_proj'], classify: false },
  { name: 'qwen2-causal-lm', targets: ['q_proj', 'v_proj', 'down_proj'], ff: ['down_proj'], classify: false },
  { name: 'distilbert-seq-cls', targets: ['k_lin', 'v_lin', 'ffn.lin2'], ff: ['ffn.lin2'], classify: true },
  { name: 'bert-seq-cls', targets: ['key', 'value', 'output.dense'], ff: ['output.dense'], classify: true },
];

for (const c of CASES) {
  test(`IA3 on ${c.name}: a PEFT adapter loads with PEFT's logits, loss and gradients; trainable count as PEFT`, async (t) => {
    const dir = tmpDir('peft-ia3');
    const ref = python('peft_ia3.py', [
      'create',
      modelDir(c.name),
      dir,
      JSON.stringify({ target_modules: c.targets, feedforward_modules: c.ff, seed: 1 }),
    ]);
    const model = await Model.fromPretrained(modelDir(c.name), { device: DEVICE });
    await model.loadAdapter(dir, { trainable: true });
    t.is(model.countParameters({ trainableOnly: true }), ref.trainable);
    await model.train();
    const before = await adapterTensors(model);
    const batch = fullBatch(c.classify);
    const out = await model.forward(batch);
    t.true(relError(out.logits.data, ref.logits, realPosition(ref.shape)) < 1e-5, 'logits');
    t.true(Math.abs(out.loss! - ref.loss) / Math.abs(ref.loss) < 1e-5, `loss ${out.loss} vs ${ref.loss}`);
    await expectGradients(t, model, batch, before, ref.grads, /\.(ia3_l|modules_to_save)\./);
    model.dispose();
  });

  test(`IA3 on ${c.name}: trained in tunekit, saved, loaded by PEFT with the same logits; merge and unmerge`, async (t) => {
    const model = await Model.fromPretrained(modelDir(c.name), { device: DEVICE });
    const base = await savedParams(model);
    await new IA3({ targetModules: c.targets, feedforwardModules: c.ff }).apply(model);
    const batch = fullBatch(c.classify);
    const start = await model.forward(batch);
    const { mine, dir } = await trainThenSaveAdapter(model, batch, 'tk-ia3');
    t.notDeepEqual(mine.logits.data, start.logits.data, 'training moved the vectors');
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'));
    t.is(cfg.peft_type, 'IA3');
    t.deepEqual(cfg.feedforward_modules, c.ff);
    const ref = python('peft_ia3.py', ['load', modelDir(c.name), dir]);
    const err = relError(mine.logits.data, ref.logits, realPosition(ref.shape));
    t.true(err < 1e-4, `tunekit vs PEFT logits: ${err}`);
    await model.mergeAdapter();
    const merged = await model.forward(batch);
    t.true(relError(merged.logits.data, mine.logits.data, realPosition(ref.shape)) < 1e-5, 'merged weights give the same logits');
    await model.unmergeAdapter();
    const restored = await savedParams(model);
    let worst = 0;
    for (const [name, w] of base) worst = Math.max(worst, relError(restored.get(name)!, w));
    // Unmerging divides by (l + 1e-8), as PEFT does: exact up to float32 rounding and that 1e-8.
    t.true(worst < 1e-6, `unmerge restores the base weights (worst ${worst})`);
    model.dispose();
  });
}

test('IA3 bad input: no matching module, feed-forward outside the targets, unknown option', async (t) => {
  const model = await Model.fromPretrained(modelDir('bert-seq-cls'), { device: DEVICE });
  await t.throwsAsync(new IA3({ targetModules: ['q_proj'] }).apply(model), { code: 'E_ARG', message: /match no linear layer/ } as any);
  await t.throwsAsync(new IA3({ targetModules: ['key'], feedforwardModules: ['value'] }).apply(model), {
    code: 'E_ARG',
    message: /among targetModules/,
  } as any);
  await t.throwsAsync(new IA3({ targetModule: ['key'] } as any).apply(model), {
    code: 'E_ARG',
    message: /unknown option 'targetModule'/,
  } as any);
  t.deepEqual(model.adapters, []);
  model.dispose();
});
