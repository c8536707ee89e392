// Preference objectives against TRL's own trainers on the same weights and rows: RewardTrainer's loss (plain, centred,
// with margins) and one step; DPOTrainer's loss for every loss type, with a reference that differs from the policy,
// and one step. Then the default references, and bad input.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { DPO, GRPO, LoRA, Model, PPO, RewardTrainer, TokenizedPair, TunekitError } from '../lib';
import { python, readTensors, relError, tmpDir } from './helpers';

// The rows of test/reference/rlhf.py.
const PROMPTS = [
  [5, 6, 7],
  [10, 11],
  [13, 14, 15, 16],
];
const CHOSEN = [
  [8, 9, 2],
  [12, 40, 41, 2],
  [17, 2],
];
const REJECTED = [
  [20, 21, 22, 23, 2],
  [30, 2],
  [50, 51, 52, 2],
];
const MARGINS = [0.5, 0.0, 1.5];
const pairs = (margins = false): TokenizedPair[] =>
  PROMPTS.map((p, i) => ({ promptIds: p, chosenIds: CHOSEN[i], rejectedIds: REJECTED[i], ...(margins ? { margin: MARGINS[i] } : {}) }));

// Sums and means over a few rows of a 2-layer model: float32 rounding, far below the 1e-4 standard.
const TOL = 1e-4;

function close(t: any, got: Record<string, number>, want: Record<string, number>, keys: string[], what: string) {
  for (const k of keys) {
    const err = Math.abs(got[k] - want[k]) / Math.max(1e-3, Math.abs(want[k]));
    t.true(err < TOL, `${what} ${k}: ${got[k]} vs TRL ${want[k]} (relative error ${err.toExponential(2)})`);
  }
}

async function sameParams(t: any, model: Model, want: Record<string, number[]>) {
  const dir = tmpDir('rlhf-params');
  await model.savePretrained(dir);
  const got = readTensors(path.join(dir, 'model.safetensors'));
  let worst = 0;
  let worstName = '';
  for (const [name, values] of Object.entries(want)) {
    const g = got.get(name) ?? got.get(name.replace(/^transformer\./, ''));
    t.truthy(g, name);
    // The key bias (the middle third of c_attn.bias) has a true gradient of zero: adding it shifts every score of a
    // query by the same amount, which softmax ignores. Its computed gradient is rounding noise, which Adam's first
    // step (g / (|g| + eps)) turns into a full +-lr move in either implementation; the comparison leaves it out.
    const width = values.length / 3;
    const keep = name.endsWith('attn.c_attn.bias') ? (i: number) => i < width || i >= 2 * width : undefined;
    const e = relError(g!, values, keep);
    if (e > worst) [worst, worstName] = [e, name];
  }
  t.log(`worst parameter relative error after one step: ${worst.toExponential(2)} (${worstName})`);
  t.true(worst < TOL);
}

test('RewardTrainer: the loss, accuracy, margin and rewards of TRL RewardTrainer, and one step to the same weights', async (t) => {
  const out = tmpDir('rlhf-reward');
  const ref = python('rlhf.py', ['reward', out]);
  const model = await Model.fromPretrained(path.join(out, 'model'), { task: 'sequence-classification', numLabels: 1 });
  const keys = ['loss', 'accuracy', 'margin', 'mean_reward'];
  const rename = (e: Record<string, number>) => ({ ...e, mean_reward: e.meanReward });
  close(t, rename(await new RewardTrainer(model).evaluate(pairs())), ref.plain, keys, 'plain');
  close(t, rename(await new RewardTrainer(model, { centerRewardsCoefficient: 0.01 }).evaluate(pairs())), ref.centred, ['loss'], 'centred');
  close(
    t,
    rename(await new RewardTrainer(model, { centerRewardsCoefficient: 0.01 }).evaluate(pairs(true))),
    ref.margin,
    ['loss'],
    'margin',
  );
  const trainer = new RewardTrainer(model, { centerRewardsCoefficient: 0.01, lr: 1e-3, batchSize: 3 });
  const r = await trainer.train(pairs(true));
  t.is(r.steps, 1);
  t.true(Math.abs(r.history[0].loss - ref.margin.loss) / ref.margin.loss < TOL);
  await sameParams(t, model, ref.step.params);
  model.dispose();
});

test('DPO: sigmoid, hinge, IPO and robust losses and statistics of TRL DPOTrainer with a separate reference; one step', async (t) => {
  const out = tmpDir('rlhf-dpo');
  const ref = python('rlhf.py', ['dpo', out]);
  const policy = await Model.fromPretrained(path.join(out, 'policy'));
  const reference = await Model.fromPretrained(path.join(out, 'reference'));
  const keys = ['loss', 'rewards/chosen', 'rewards/rejected', 'rewards/accuracies', 'rewards/margins'];
  for (const [lossType, labelSmoothing] of [
    ['sigmoid', undefined],
    ['hinge', undefined],
    ['ipo', undefined],
    ['robust', 0.2],
  ] as const) {
    const dpo = new DPO(policy, { reference, beta: 0.3, lossType, ...(labelSmoothing !== undefined ? { labelSmoothing } : {}) });
    close(t, await dpo.evaluate(pairs()), ref[lossType], keys, lossType);
  }
  const dpo = new DPO(policy, { reference, beta: 0.3, lr: 1e-3, batchSize: 3 });
  const r = await dpo.train(pairs());
  close(t, r.history[0], ref.sigmoid, [...keys, 'logps/chosen', 'logps/rejected'], 'train step');
  await sameParams(t, policy, ref.step.params);
  policy.dispose();
  reference.dispose();
});

test('DPO default references: a LoRA policy is compared with its adapter off, a full policy with a frozen copy of itself', async (t) => {
  const out = tmpDir('rlhf-dpo-default');
  python('rlhf.py', ['dpo', out]);
  const policy = await Model.fromPretrained(path.join(out, 'policy'));
  await new LoRA({ r: 4, alpha: 8, seed: 1 }).apply(policy);
  const base = await Model.fromPretrained(path.join(out, 'policy'));
  const withCopy = new DPO(policy, { reference: base, beta: 0.3 });
  const withAdapterOff = new DPO(policy, { beta: 0.3 });
  // B = 0 at the start: the adapter changes nothing yet, so both references agree and every log-ratio is zero.
  const a = await withAdapterOff.evaluate(pairs());
  t.true(Math.abs(a.loss - Math.log(2)) < 1e-5, `loss ${a.loss} at log-ratios 0`);
  await withAdapterOff.train(pairs());
  t.is(policy.activeAdapter, 'default', 'the adapter is back on after each reference pass');
  const after = await withAdapterOff.evaluate(pairs());
  const explicit = await withCopy.evaluate(pairs());
  t.true(Math.abs(after.loss - explicit.loss) < 1e-5, `${after.loss} vs ${explicit.loss}`);
  t.not(after.loss, a.loss, 'a step moved the policy away from its reference');
  policy.dispose();

  const full = await Model.fromPretrained(path.join(out, 'policy'));
  const frozen = new DPO(full, { beta: 0.3, lr: 1e-2 });
  t.true(Math.abs((await frozen.evaluate(pairs())).loss - Math.log(2)) < 1e-5);
  await frozen.train(pairs());
  const moved = await frozen.evaluate(pairs());
  t.true(moved.loss < Math.log(2), `training lowers the loss against the frozen start: ${moved.loss}`);
  t.is((await new DPO(full, { reference: base, beta: 0.3 }).evaluate(pairs())).loss, moved.loss);
  frozen.dispose();
  full.dispose();
  base.dispose();
});

test('bad preference input is a TunekitError and leaves the weights alone', async (t) => {
  const out = tmpDir('rlhf-bad');
  python('rlhf.py', ['reward', out]);
  const rm = await Model.fromPretrained(path.join(out, 'model'), { task: 'sequence-classification', numLabels: 1 });
  const trainer = new RewardTrainer(rm, { lr: 1e-2 });
  const same = { promptIds: [5], chosenIds: [8, 9], rejectedIds: [8, 9] };
  const empty = { promptIds: [5], chosenIds: [], rejectedIds: [8] };
  const long = { promptIds: new Array(40).fill(5), chosenIds: [8], rejectedIds: [9] };
  for (const [bad, want] of [
    [[same], /chosen and rejected are the same/],
    [[empty], /must not be empty/],
    [[long], /the prompt has 40 tokens, leaving no room/],
    [[{ chosen: 'a', rejected: 'b' }], /string pairs need the tokenizer option/],
    [[], /non-empty array/],
  ] as [any[], RegExp][]) {
    const e = await t.throwsAsync(trainer.train(bad), { instanceOf: TunekitError });
    t.regex(e!.message, want);
  }
  t.throws(() => new RewardTrainer(rm, { centreRewards: 1 } as any), { message: /unknown option 'centreRewards'/ });
  const lm = await Model.fromPretrained(path.join(out, 'model'), { task: 'causal-lm' }).catch((e) => e);
  t.true(lm instanceof TunekitError || lm instanceof Model);
  if (lm instanceof Model) {
    t.throws(() => new RewardTrainer(lm), { message: /sequence classifier with one output/ });
    lm.dispose();
  }
  t.throws(() => new DPO(rm), { message: /DPO trains a causal-lm policy/ });
  rm.dispose();
});

test('PPO: one step (2 epochs, clipping active) equals a PyTorch twin of TRL PPOv2: statistics and every weight, value head included', async (t) => {
  const out = tmpDir('rlhf-ppo');
  const ref = python('ppo.py', [out]);
  t.true(ref.clipfrac_epoch2 > 0, 'the second epoch clips some ratios, so the clipped branch is compared too');
  const policy = await Model.fromPretrained(path.join(out, 'policy'));
  const reference = await Model.fromPretrained(path.join(out, 'reference'));
  const s = ref.settings;
  const ppo = await PPO.create(policy, {
    reference,
    rewardFn: () => [],
    responseLength: 5,
    lr: s.lr,
    klCoef: s.kl_coef,
    gamma: s.gamma,
    lam: s.lam,
    cliprange: s.cliprange,
    clipRangeValue: s.cliprange_value,
    vfCoef: s.vf_coef,
    ppoEpochs: s.ppo_epochs,
    temperature: s.temperature,
    maxGradNorm: s.max_grad_norm,
  });
  const stats = await ppo.step({ queries: ref.queries, responses: ref.responses, scores: ref.scores });
  close(t, stats, ref.stats, Object.keys(ref.stats), 'ppo');
  await sameParams(t, policy, ref.params);
  ppo.dispose();
  policy.dispose();
  reference.dispose();
});

test("GRPO: group-normalised advantages and TRL GRPOTrainer's loss, KL and clip ratios for dapo, grpo and bnpo", async (t) => {
  const out = tmpDir('rlhf-grpo');
  const ref = python('grpo.py', [out]);
  const policy = await Model.fromPretrained(path.join(out, 'policy'));
  const reference = await Model.fromPretrained(path.join(out, 'reference'));
  const s = ref.settings;
  const P = ref.prompts[0].length;
  const C = Math.max(...ref.completions.map((c: number[]) => c.length));
  const seq = P + C;
  const oldLogps = new Float32Array(ref.prompts.length * (seq - 1));
  ref.old_logps.forEach((row: number[], i: number) => row.forEach((v, k) => (oldLogps[i * (seq - 1) + P - 1 + k] = v)));
  for (const lossType of ['dapo', 'grpo', 'bnpo'] as const) {
    const grpo = await GRPO.create(policy, {
      reference,
      rewardFn: () => [],
      numGenerations: 3,
      maxCompletionLength: C,
      beta: s.beta,
      epsilon: s.epsilon,
      epsilonHigh: s.epsilon_high,
      temperature: s.temperature,
      lossType,
    });
    const advantages = grpo.advantages(ref.rewards);
    t.true(relError(advantages, ref.advantages) < TOL);
    const stats = await grpo.step(
      { prompts: ref.prompts, completions: ref.completions, rewards: ref.rewards, advantages, oldLogps },
      { backward: false },
    );
    close(t, stats, ref[lossType], Object.keys(ref[lossType]), lossType);
    grpo.dispose();
  }
  policy.dispose();
  reference.dispose();
});

test('PPO and GRPO rollouts: sampled, scored and trained end to end; a rewardFn that throws, returns NaN or the wrong count is a clear error', async (t) => {
  const out = tmpDir('rlhf-rollout');
  python('ppo.py', [out]);
  const policy = await Model.fromPretrained(path.join(out, 'policy'));
  const before = await policy.tokenLogprobs({ inputIds: [[5, 6, 7, 8]] });
  // A reward that varies with the sampled tokens, so that advantages are not zero.
  const rewardFn = (samples: { ids: number[] }[]) => samples.map((s) => s.ids.reduce((a, b) => a + b, 0) / 100);
  const ppo = await PPO.create(policy, { rewardFn, responseLength: 4, lr: 1e-3, temperature: 1, seed: 3 });
  const queries = [
    [5, 6, 7],
    [10, 11],
    [13, 14, 15, 16],
    [5, 9],
  ];
  const rollout = await ppo.rollout(queries);
  t.is(rollout.responses.length, 4);
  t.true(rollout.responses.every((r) => r.length === 4));
  // The same seeded sampling with the second sampled token of the first query as stopTokenId: that response ends
  // right after it (TRL's truncation), and a response can only end at its stop token or at full length.
  const stop = rollout.responses[0][1];
  const stopping = await PPO.create(policy, { rewardFn, responseLength: 4, temperature: 1, seed: 3, stopTokenId: stop });
  const cut = await stopping.rollout(queries);
  t.deepEqual(cut.responses[0], rollout.responses[0].slice(0, rollout.responses[0].indexOf(stop) + 1));
  for (const r of cut.responses) t.true(r.length === 4 || r.indexOf(stop) === r.length - 1, JSON.stringify(r));
  stopping.dispose();
  const stats = await ppo.step(rollout);
  for (const k of ['objective/kl', 'objective/scores', 'loss/policy_avg', 'loss/value_avg', 'policy/approxkl_avg', 'response/length'])
    t.true(Number.isFinite(stats[k]), k);
  t.notDeepEqual(Array.from((await policy.tokenLogprobs({ inputIds: [[5, 6, 7, 8]] })).data), Array.from(before.data));
  for (const [fn, want] of [
    [
      () => {
        throw new Error('scorer down');
      },
      /rewardFn threw: scorer down/,
    ],
    [(s: unknown[]) => s.map(() => NaN), /rewardFn returned NaN for sample 0/],
    [() => [1], /rewardFn must return 4 numbers/],
  ] as [any, RegExp][]) {
    const bad = await PPO.create(policy, { rewardFn: fn, responseLength: 2 });
    const e = await t.throwsAsync(bad.rollout(queries), { instanceOf: TunekitError });
    t.regex(e!.message, want);
    bad.dispose();
  }
  await t.throwsAsync(ppo.step({ queries, responses: [[1], [], [2], [3]], scores: [0, 0, 0, 0] }), {
    message: /response 1 must be a non-empty/,
  });
  await t.throwsAsync(ppo.step({ queries, responses: rollout.responses, scores: [0, NaN, 0, 0] }), {
    message: /scores must be 4 finite numbers/,
  });
  await t.throwsAsync(ppo.rollout([new Array(40).fill(5)]), { message: /leaving no room in the model's context of 32/ });
  ppo.dispose();
  const grpo = await GRPO.create(policy, { rewardFn, numGenerations: 4, maxCompletionLength: 3, lr: 1e-3, temperature: 1 });
  const r = await grpo.train(queries, { steps: 2, batchSize: 2 });
  t.is(r.history.length, 2);
  t.true(r.history.every((h) => Number.isFinite(h.loss) && Number.isFinite(h.reward)));
  grpo.dispose();
  policy.dispose();
});

test('PPO saved after one iteration and loaded into a fresh run continues exactly as the unbroken run', async (t) => {
  const out = tmpDir('rlhf-ppo-resume');
  python('ppo.py', [out]);
  const options = {
    rewardFn: (s: { ids: number[] }[]) => s.map((x) => x.ids.reduce((a, b) => a + b, 0) / 100),
    responseLength: 4,
    lr: 1e-3,
    temperature: 1,
    adaptiveKl: { target: 0.1, horizon: 100 },
    seed: 7,
  };
  const queries = [
    [5, 6, 7],
    [10, 11],
    [13, 14, 15, 16],
  ];
  const run = async (policy: Model, ppo: PPO) => ppo.step(await ppo.rollout(queries));
  const unbroken = await Model.fromPretrained(path.join(out, 'policy'));
  const a = await PPO.create(unbroken, options);
  await run(unbroken, a);
  const last = await run(unbroken, a);

  const first = await Model.fromPretrained(path.join(out, 'policy'));
  const b = await PPO.create(first, options);
  await run(first, b);
  const ckpt = path.join(tmpDir('rlhf-ppo-ckpt'), 'checkpoint');
  const klAfterOne = b.currentKlCoef;
  t.not(klAfterOne, 0.05, 'the adaptive controller moved the coefficient, so restoring it is tested');
  await b.save(ckpt);
  b.dispose();
  first.dispose();
  const resumed = await Model.fromPretrained(path.join(out, 'policy'));
  const c = await PPO.create(resumed, options);
  await c.load(ckpt);
  t.is(c.stepCount, 1);
  t.is(c.currentKlCoef, klAfterOne);
  const again = await run(resumed, c);
  t.deepEqual(again, last);
  const wa = readTensors(path.join(await saved(unbroken), 'model.safetensors'));
  const wc = readTensors(path.join(await saved(resumed), 'model.safetensors'));
  for (const [k, v] of wa) t.true(Buffer.from(v.buffer).equals(Buffer.from(wc.get(k)!.buffer)), k);
  await t.throwsAsync(c.load(tmpDir('empty')), { message: /trainer_state\.json.*not a tunekit checkpoint/ });
  a.dispose();
  c.dispose();
  unbroken.dispose();
  resumed.dispose();
});

async function saved(model: Model): Promise<string> {
  const dir = tmpDir('rlhf-saved');
  await model.savePretrained(dir);
  return dir;
}

/** Trains once unbroken and once interrupted (an exception at step `stopAt`) then resumed; both must end alike. */
async function resumesExactly(
  t: any,
  load: () => Promise<Model>,
  train: (model: Model, extra: { checkpointDir: string; stopAt?: number }) => Promise<{ history: Record<string, number>[] }>,
  stopAt: number,
) {
  const unbroken = await load();
  const whole = await train(unbroken, { checkpointDir: path.join(tmpDir('rlhf-resume-whole'), 'checkpoints') });
  const dir = path.join(tmpDir('rlhf-resume-cut'), 'checkpoints');
  const cut = await load();
  await t.throwsAsync(train(cut, { checkpointDir: dir, stopAt }), { message: 'interrupted' });
  cut.dispose();
  const resumed = await load();
  const again = await train(resumed, { checkpointDir: dir });
  t.deepEqual(again.history, whole.history);
  const wa = readTensors(path.join(await saved(unbroken), 'model.safetensors'));
  const wb = readTensors(path.join(await saved(resumed), 'model.safetensors'));
  t.true(wa.size > 0);
  for (const [k, v] of wa) t.true(Buffer.from(v.buffer).equals(Buffer.from(wb.get(k)!.buffer)), k);
  unbroken.dispose();
  resumed.dispose();
  return dir;
}

const interruptAt = (stopAt: number | undefined) => (p: { step: number }) => {
  if (p.step === stopAt) throw new Error('interrupted');
};

test('RewardTrainer, DPO and GRPO interrupted after a checkpoint resume to the unbroken run: same history, same weights bit for bit', async (t) => {
  const out = tmpDir('rlhf-resume');
  python('rlhf.py', ['dpo', out]);
  python('rlhf.py', ['reward', out]);
  // Checkpoints every 2 steps of 6 (3 pairs a batch of 1, 2 epochs); step 5 fails, so the run resumes mid-epoch from 4.
  const common = { batchSize: 1, epochs: 2, lr: 1e-2, checkpointEvery: 2 };
  await resumesExactly(
    t,
    () => Model.fromPretrained(path.join(out, 'model'), { task: 'sequence-classification', numLabels: 1 }),
    (m, { checkpointDir, stopAt }) => new RewardTrainer(m, { ...common, checkpointDir, onProgress: interruptAt(stopAt) }).train(pairs()),
    5,
  );
  // A full policy: the default reference is a frozen copy of the starting weights, not of the checkpoint's.
  await resumesExactly(
    t,
    () => Model.fromPretrained(path.join(out, 'policy')),
    async (m, { checkpointDir, stopAt }) => {
      const dpo = new DPO(m, { ...common, beta: 0.3, checkpointDir, onProgress: interruptAt(stopAt) });
      try {
        return await dpo.train(pairs());
      } finally {
        dpo.dispose();
      }
    },
    5,
  );
  // Dropout on (GRPO's default) and sampling: the RNG and the step count are restored.
  const gpt2 = tmpDir('rlhf-resume-grpo');
  python('ppo.py', [gpt2]);
  const configFile = path.join(gpt2, 'policy', 'config.json');
  const config = JSON.parse(fs.readFileSync(configFile, 'utf8'));
  fs.writeFileSync(configFile, JSON.stringify({ ...config, resid_pdrop: 0.1, embd_pdrop: 0.1, attn_pdrop: 0.1 }));
  const rewardFn = (s: { ids: number[] }[]) => s.map((x) => x.ids.reduce((a, b) => a + b, 0) / 100);
  const grpoCheckpoints = await resumesExactly(
    t,
    () => Model.fromPretrained(path.join(gpt2, 'policy')),
    async (m, { checkpointDir, stopAt }) => {
      const grpo = await GRPO.create(m, { rewardFn, numGenerations: 4, maxCompletionLength: 3, lr: 1e-3, seed: 5 });
      try {
        return await grpo.train(PROMPTS, {
          steps: 4,
          batchSize: 2,
          checkpointDir,
          checkpointEvery: 1,
          onStep: () => interruptAt(stopAt)({ step: grpo.stepCount }),
        });
      } finally {
        grpo.dispose();
      }
    },
    3,
  );
  const wrong = await Model.fromPretrained(path.join(gpt2, 'policy'));
  const ppo = await PPO.create(wrong, { rewardFn, responseLength: 2 });
  await t.throwsAsync(ppo.load(path.join(grpoCheckpoints, 'checkpoint-4')), { message: /a checkpoint of "grpo", not of ppo/ });
  ppo.dispose();
  wrong.dispose();
});
