// bf16 mixed precision against transformers (and PEFT) under torch.autocast on the same weights and batch: the first
// step's loss, and where 50 AdamW steps end, beside each side's float32 run. Then the precision option's rules.
import test from 'ava';
import path from 'node:path';
import { AdamW, DPO, GradScaler, LoRA, Model, PPO, Precision, Trainer, TunekitError } from '../lib';
import { ATTENTION_MASK, CLASS_LABELS, INPUT_IDS, LM_LABELS, python, savedParams, tmpDir } from './helpers';

const STEPS = 50;
// bfloat16 keeps 8 significant bits: one rounding moves a value by up to u = 2^-8 of itself.
const U = 2 ** -8;

async function losses(dir: string, precision: Precision, adapter?: string): Promise<number[]> {
  const model = await Model.fromPretrained(dir, { precision });
  if (adapter) await model.loadAdapter(adapter, { trainable: true });
  await model.train();
  const opt = new AdamW(model, { lr: 1e-3, weightDecay: 0 });
  const labels = model.task === 'sequence-classification' ? CLASS_LABELS : LM_LABELS;
  const out: number[] = [];
  for (let i = 0; i < STEPS; i++) {
    out.push((await model.backward({ inputIds: INPUT_IDS, attentionMask: ATTENTION_MASK, labels })).loss);
    await opt.step();
    await opt.zeroGrad();
  }
  opt.dispose();
  model.dispose();
  return out;
}

test('bf16-mixed trains gpt2, llama, distilbert and a LoRA adapter as transformers and PEFT do under torch.autocast', async (t) => {
  const out = tmpDir('precision');
  const ref = python('autocast.py', [out, String(STEPS)]);
  for (const name of ['gpt2', 'llama', 'distilbert', 'gpt2-lora']) {
    const dir = path.join(out, name === 'gpt2-lora' ? 'gpt2' : name);
    const adapter = name === 'gpt2-lora' ? path.join(out, name) : undefined;
    const bf16 = await losses(dir, 'bf16-mixed', adapter);
    const f32 = await losses(dir, '32-true', adapter);
    const py = ref[name] as { bf16: number[]; f32: number[] };
    // The first loss comes from the same weights through the same autocast op lists; the bound, about 2.5 u.
    const first = Math.abs(bf16[0] - py.bf16[0]) / py.bf16[0];
    t.true(first < 1e-2, `${name}: first bf16 loss ${bf16[0]} vs transformers ${py.bf16[0]} (relative ${first.toExponential(2)})`);
    t.true(Math.abs(f32[0] - py.f32[0]) / py.f32[0] < 1e-5, `${name}: first float32 loss ${f32[0]} vs ${py.f32[0]}`);
    t.not(bf16[0], f32[0], `${name}: the bf16 run must actually compute in bfloat16`);
    // After 50 steps two correct bf16 runs have each strayed from the float32 trajectory by their own rounding, which
    // Python's run measures: |py.bf16 - py.f32|. Another implementation's rounding strays as far in another
    // direction, so the two may differ by about twice that (3x for margin), plus a few roundings (4u) of the last
    // loss itself, which is read from bf16 logits.
    const last = STEPS - 1;
    const drift = Math.abs(py.bf16[last] - py.f32[last]);
    const tol = 3 * drift + 4 * U * py.bf16[last];
    const vsPython = Math.abs(bf16[last] - py.bf16[last]);
    const vsOwnF32 = Math.abs(bf16[last] - f32[last]);
    t.log(
      `${name}: last loss ${bf16[last].toFixed(5)} (transformers ${py.bf16[last].toFixed(5)}, float32 ${f32[last].toFixed(5)}), tolerance ${tol.toExponential(2)}`,
    );
    t.true(
      vsPython < tol,
      `${name}: ${STEPS} bf16 steps end ${vsPython.toExponential(2)} from transformers' (tolerance ${tol.toExponential(2)})`,
    );
    t.true(
      vsOwnF32 < tol,
      `${name}: ${STEPS} bf16 steps end ${vsOwnF32.toExponential(2)} from tunekit's float32 run (tolerance ${tol.toExponential(2)})`,
    );
    t.true(bf16[last] < 0.75 * bf16[0], `${name}: the bf16 run learns (${bf16[0]} -> ${bf16[last]})`);
  }
});

test('precision: chosen at load, switched between 32-true and bf16-mixed, bf16-true holds bf16 weights, 16-mixed needs CUDA', async (t) => {
  const out = tmpDir('precision-rules');
  python('autocast.py', [out, '1']);
  const dir = path.join(out, 'gpt2');
  const batch = { inputIds: INPUT_IDS, attentionMask: ATTENTION_MASK, labels: LM_LABELS };
  const model = await Model.fromPretrained(dir);
  t.is(model.precision, '32-true');
  const f32 = (await model.forward(batch)).loss!;
  await model.setPrecision('bf16-mixed');
  t.is(model.precision, 'bf16-mixed');
  const mixed = (await model.forward(batch)).loss!;
  t.not(mixed, f32);
  t.true(Math.abs(mixed - f32) / f32 < 1e-2);
  await model.setPrecision('32-true');
  t.is((await model.forward(batch)).loss, f32, 'back to float32 gives the float32 loss exactly');
  const e = await t.throwsAsync(model.setPrecision('16-mixed'), { instanceOf: TunekitError });
  t.is((e as TunekitError).code, 'E_DEVICE');
  await t.throwsAsync(model.setPrecision('bf16-true'), { message: /load the model with \{ precision: 'bf16-true' \}/ });
  await t.throwsAsync(model.setPrecision('fp8' as Precision), { message: /precision must be one of '32-true'/ });
  model.dispose();
  await t.throwsAsync(Model.fromPretrained(dir, { precision: 'bf16-true', dtype: 'float32' }), { message: /contradicts/ });

  // Decoding under bf16-mixed casts the weights once per call and runs as on bfloat16 weights: bf16-true's tokens.
  const prompt = { inputIds: [INPUT_IDS[0], INPUT_IDS[0].map((id) => (id * 7) % 90)] };
  const mixedModel = await Model.fromPretrained(dir, { precision: 'bf16-mixed' });
  const mixedTokens = await mixedModel.generate(prompt, { maxNewTokens: 12, eosTokenId: -1 });
  mixedModel.dispose();
  const base = await Model.fromPretrained(dir, { precision: 'bf16-true' });
  t.deepEqual(await base.generate(prompt, { maxNewTokens: 12, eosTokenId: -1 }), mixedTokens);

  // bf16-true: a LoRA run on a bfloat16 base; the adapter and its optimizer state stay float32.
  t.is(base.dtype, 'bfloat16');
  await new LoRA({ r: 4, alpha: 8, seed: 1 }).apply(base);
  await base.train();
  const opt = new AdamW(base, { lr: 1e-2, weightDecay: 0 });
  const first = (await base.backward(batch)).loss;
  await opt.step();
  await opt.zeroGrad();
  const second = (await base.backward(batch)).loss;
  t.true(Number.isFinite(first) && second < first, `a LoRA step on a bf16 base lowers the loss: ${first} -> ${second}`);
  t.true(Math.abs(first - f32) / f32 < 1e-2, `bf16 weights give the float32 loss to bf16 rounding: ${first} vs ${f32}`);
  opt.dispose();
  base.dispose();

  // bf16-true with every weight trainable: AdamW keeps bfloat16 moments for bfloat16 weights, as torch.optim does.
  const whole = await Model.fromPretrained(dir, { precision: 'bf16-true' });
  await whole.train();
  const wopt = new AdamW(whole, { lr: 1e-2, weightDecay: 0 });
  const start = (await whole.backward(batch)).loss;
  await wopt.step();
  await wopt.zeroGrad();
  const next = (await whole.backward(batch)).loss;
  t.true(next < start, `a full bf16-true step lowers the loss: ${start} -> ${next}`);
  wopt.dispose();
  whole.dispose();
});

test('the Trainer, DPO and PPO compute at the precision they are given; a frozen reference copy follows the policy', async (t) => {
  const out = tmpDir('precision-trainers');
  python('autocast.py', [out, '1']);
  const dir = path.join(out, 'gpt2');
  const examples = INPUT_IDS.map((ids) => ({ inputIds: ids.filter((id) => id !== 0) }));
  const firstLoss = async (precision: Precision) => {
    const model = await Model.fromPretrained(dir);
    const optimizer = new AdamW(model, { lr: 1e-3 });
    const r = await new Trainer(model, { optimizer, batchSize: 3, precision }).train(examples);
    t.is(model.precision, precision);
    optimizer.dispose();
    model.dispose();
    return r.history[0].loss;
  };
  const [f32, bf16] = [await firstLoss('32-true'), await firstLoss('bf16-mixed')];
  t.not(f32, bf16);
  t.true(Math.abs(f32 - bf16) / f32 < 1e-2, `${f32} vs ${bf16}`);

  // The default reference of a full policy is a frozen copy; at the policy's precision the log-ratios start at exactly
  // 0 and the loss at log 2. A copy left in float32 under a bf16 policy would not give that.
  const policy = await Model.fromPretrained(dir);
  const pairs = [{ promptIds: [5, 6, 7], chosenIds: [8, 9, 2], rejectedIds: [20, 21, 2] }];
  const dpo = new DPO(policy, { precision: 'bf16-mixed', lr: 1e-3, batchSize: 1 });
  const start = (await dpo.evaluate(pairs)).loss;
  t.true(Math.abs(start - Math.log(2)) < 1e-6, `DPO loss ${start} at log-ratios 0`);
  await dpo.train(pairs);
  t.is(policy.precision, 'bf16-mixed');
  dpo.dispose();
  await policy.setPrecision('32-true');
  const ppo = await PPO.create(policy, { rewardFn: (s) => s.map(() => 1), responseLength: 2, precision: 'bf16-mixed' });
  t.is(policy.precision, 'bf16-mixed');
  const stats = await ppo.step(await ppo.rollout([[5, 6, 7]]));
  t.true(Number.isFinite(stats['objective/kl']));
  ppo.dispose();
  policy.dispose();
});

test('GradScaler (a forced overflow on the CPU): overflowing steps are skipped and the scale backs off; applied steps equal unscaled training bit for bit', async (t) => {
  const out = tmpDir('precision-scaler');
  python('autocast.py', [out, '1']);
  const dir = path.join(out, 'gpt2');
  const examples = [{ inputIds: INPUT_IDS[0] }];
  // 2^130 times a loss near 5 is beyond float32's 3.4e38: the first steps overflow until the scale has backed off.
  const scaled = await Model.fromPretrained(dir);
  const scaler = new GradScaler({ initScale: 2 ** 130, growthInterval: 3 });
  const sopt = new AdamW(scaled, { lr: 1e-3 });
  const run = await new Trainer(scaled, { optimizer: sopt, batchSize: 1, epochs: 10, gradScaler: scaler }).train(examples);
  const skipped = run.history.filter((p) => p.skipped).length;
  t.true(skipped >= 4 && run.history[0].skipped === true, `${skipped} of 10 steps skipped`);
  for (let i = 1; i < run.history.length; i++) {
    const [before, after] = [run.history[i - 1].lossScale!, run.history[i].lossScale!];
    if (run.history[i].skipped) t.is(after, before / 2, `step ${i + 1}: a skip halves the scale`);
    else t.true(after === before || after === before * 2, `step ${i + 1}: a clean step keeps or doubles it`);
  }
  t.true(
    run.history.some((p, i) => i > 0 && p.lossScale! > run.history[i - 1].lossScale!),
    'growth after 3 clean steps is exercised',
  );
  t.is(sopt.stepCount, 10 - skipped);

  const plain = await Model.fromPretrained(dir);
  const popt = new AdamW(plain, { lr: 1e-3 });
  await new Trainer(plain, { optimizer: popt, batchSize: 1, epochs: 10 - skipped }).train(examples);
  const a = await savedParams(scaled);
  const b = await savedParams(plain);
  for (const [name, values] of a) t.deepEqual(Array.from(values), Array.from(b.get(name)!), name);
  for (const m of [scaled, plain]) m.dispose();
});
