/**
 * The tunekit side of `npm run bench`: one workload in its own process, on the weights and batch python_side.py wrote.
 *   node --require tsx/cjs bench/tunekit_side.ts WORKLOAD_JSON DIR STEPS WARMUP   -> one JSON line
 */
import fs from 'node:fs';
import path from 'node:path';
import { AdamW, GRPO, LoRA, Model, PPO, Tokenizer } from '../lib';
import { addon } from '../lib/native';

async function main() {
  const [wj, dir, stepsArg, warmupArg] = process.argv.slice(2);
  const w = JSON.parse(wj);
  const steps = Number(stepsArg);
  const warmup = Number(warmupArg);
  const b = JSON.parse(fs.readFileSync(path.join(dir, 'batch.json'), 'utf8'));
  const ids: number[][] = b.input_ids.slice(0, w.batch).map((r: number[]) => r.slice(0, w.seq));
  const labels = Array.isArray(b.labels[0])
    ? b.labels.slice(0, w.batch).map((r: number[]) => r.slice(0, w.seq))
    : b.labels.slice(0, w.batch);
  const model = await Model.fromPretrained(path.join(dir, 'model'), { precision: w.precision ?? '32-true' });
  const times: number[] = [];
  let first: unknown;
  if (w.kind === 'train') {
    if (w.lora) await new LoRA({ r: w.lora.r, alpha: w.lora.alpha, targetModules: w.lora.target_modules, dropout: 0 }).apply(model);
    await model.train();
    const opt = new AdamW(model, { lr: 1e-4, weightDecay: 0.01, maxGradNorm: 1.0 });
    const batch = { inputIds: ids, labels };
    for (let i = 0; i < warmup + steps; i++) {
      const t = process.hrtime.bigint();
      const { loss } = await model.backward(batch);
      await opt.step();
      await opt.zeroGrad();
      const dt = Number(process.hrtime.bigint() - t) / 1e9;
      if (i === 0) first = loss;
      if (i >= warmup) times.push(dt);
    }
  } else if (w.kind === 'forward') {
    for (let i = 0; i < warmup + steps; i++) {
      const t = process.hrtime.bigint();
      const out = await model.forward({ inputIds: ids });
      const dt = Number(process.hrtime.bigint() - t) / 1e9;
      if (i === 0) {
        const V = out.logits.shape[2];
        first = Array.from(out.logits.data.subarray((w.seq - 1) * V, (w.seq - 1) * V + 8));
      }
      if (i >= warmup) times.push(dt);
    }
  } else if (w.kind === 'grpo') {
    // As python_side.py: the same prompts through the same small BPE tokenizer, a cheap reward, beta 0, one update per
    // generation batch; the check is the summed log-probability of fixed completions (temperature 1).
    const tok = await Tokenizer.fromPretrained(path.join(__dirname, '..', 'test', '.cache', 'models', 'tokenizer-bpe'));
    const prompts = ['The film opens with', 'What I liked most was', 'The actors in this movie', 'By the end of it I felt']
      .slice(0, w.batch)
      .map((p) => tok.encode(p));
    const fixed = [...prompts[0], ...Array.from({ length: w.new_tokens }, (_, i) => 5 + i)];
    const lp = await model.tokenLogprobs({ inputIds: [fixed] });
    first = Array.from(lp.data.subarray(prompts[0].length - 1)).reduce((a, v) => a + v, 0);
    const grpo = await GRPO.create(model, {
      rewardFn: (s) => s.map((x) => (x.ids.length % 7) / 7),
      numGenerations: w.generations,
      maxCompletionLength: w.new_tokens,
      temperature: 1,
      lr: 1e-5,
    });
    for (let i = 0; i < warmup + steps; i++) {
      const t = process.hrtime.bigint();
      await grpo.train(prompts, { steps: 1, batchSize: w.batch });
      const dt = Number(process.hrtime.bigint() - t) / 1e9;
      if (i >= warmup) times.push(dt);
    }
    grpo.dispose();
  } else if (w.kind === 'ppo') {
    // As the Python twin: a reward that is a cheap fixed function of the tokens; the check runs one step on fixed
    // responses (the batch's next tokens) and reports its pre-update entropy.
    const reward = (rows: number[][]) => rows.map((r) => (r.reduce((a, v) => a + v, 0) % 7) / 7);
    const ppo = await PPO.create(model, {
      rewardFn: (samples) => reward(samples.map((x) => x.ids)),
      responseLength: w.new_tokens,
      temperature: 1,
      ppoEpochs: w.ppo_epochs,
      lr: 1e-5,
    });
    const queries = ids;
    const fixed: number[][] = b.input_ids.slice(0, w.batch).map((r: number[]) => r.slice(w.seq, w.seq + w.new_tokens));
    first = (await ppo.step({ queries, responses: fixed, scores: reward(fixed) }))['objective/entropy'];
    for (let i = 0; i < warmup + steps; i++) {
      const t = process.hrtime.bigint();
      await ppo.step(await ppo.rollout(queries));
      const dt = Number(process.hrtime.bigint() - t) / 1e9;
      if (i >= warmup) times.push(dt);
    }
    ppo.dispose();
  } else {
    for (let i = 0; i < warmup + steps; i++) {
      const t = process.hrtime.bigint();
      // eosTokenId -1: never stop early, as min_new_tokens on the Python side.
      const out = await model.generate({ inputIds: ids }, { maxNewTokens: w.new_tokens, eosTokenId: -1 });
      const dt = Number(process.hrtime.bigint() - t) / 1e9;
      if (i === 0) first = out[0].slice(-8);
      if (i >= warmup) times.push(dt);
    }
  }
  const info = JSON.parse(addon.torchInfo());
  console.log(
    JSON.stringify({
      side: 'tunekit',
      first,
      times,
      threads: info.threads,
      torch: info.torch,
      peakRssMiB: process.resourceUsage().maxRSS / 1024,
      params: model.countParameters(),
    }),
  );
  model.dispose();
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : String(e));
  process.exit(1);
});
