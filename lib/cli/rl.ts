/**
 * `tunekit reward | dpo | ppo | grpo`: reward models from preference pairs, DPO, and PPO / GRPO with a reward model,
 * each with a progress bar, metrics.jsonl, a plot and results.json in --out.
 */
import fs from 'node:fs';
import path from 'node:path';
import { builtinSplits } from '../data/builtin';
import { Model } from '../model';
import { LoRA } from '../peft/lora';
import { lineChartSvg, Series, writeSvg } from '../plot';
import { MetricsWriter, progressBar } from '../progress';
import { DPO, DPOLossType, GRPO, PPO, PreferencePair, readPairs, RewardTrainer, sentimentPairs } from '../rl';
import type { RewardFn } from '../rl/score';
import { writeJsonAtomic } from '../safetensors';
import { Tokenizer } from '../tokenizer';
import {
  CHECKPOINT_FLAGS,
  checkpointing,
  Command,
  computeOptions,
  PRECISION_HELP,
  modelDir,
  num,
  Opts,
  prepareOut,
  saveTrained,
  UsageError,
} from './args';
import { NPROC_FLAG, relaunch, workerRole } from './launch';
import { defaultProcessGroup } from '../distributed';
import { CheckpointDir } from '../checkpoint';

const BUILTIN_PAIRS = 'builtin:sentiment-pairs';

async function pairsOf(o: Opts): Promise<{ train: PreferencePair[]; test: PreferencePair[]; source: string }> {
  const spec = String(o.data ?? BUILTIN_PAIRS);
  if (spec === BUILTIN_PAIRS) return { train: sentimentPairs('train'), test: sentimentPairs('test'), source: spec };
  if (!fs.existsSync(spec)) throw new UsageError(`--data ${spec}: no such file (or use ${BUILTIN_PAIRS})`);
  const all = await readPairs(spec);
  const cut = Math.max(1, Math.round(all.length * 0.9));
  return { train: all.slice(0, cut), test: all.slice(cut).length ? all.slice(cut) : all.slice(-1), source: spec };
}

/** Prompts for PPO and GRPO: the first 2-8 tokens of the built-in IMDB sentences (TRL's gpt2-sentiment recipe). */
function reviewPrompts(tok: Tokenizer, count: number, seed: number): number[][] {
  const rows = builtinSplits('imdb-sentences').train.rows;
  return rows
    .slice(0, count)
    .map((r, i) => tok.encode(r.text!, { addSpecialTokens: false }).slice(0, 2 + ((i * 7 + seed) % 7)))
    .filter((q) => q.length > 0);
}

/**
 * The reward of a sample: a one-output reward model scores it directly; a classifier (e.g. the sentiment model
 * `tunekit finetune` writes) gives the logit of --reward-label, on the text re-encoded with its own tokenizer.
 */
async function rewardOf(o: Opts, policyTok: Tokenizer): Promise<{ fn: RewardFn; model: Model }> {
  if (o['reward-model'] === undefined) throw new UsageError('--reward-model DIR is required (a reward model or a classifier)');
  const dir = modelDir({ model: o['reward-model'] });
  const model = await Model.fromPretrained(dir, { task: 'sequence-classification', ...computeOptions(o) });
  const tok = await Tokenizer.fromPretrained(dir);
  let index = 0;
  if (model.numLabels > 1) {
    const label = String(o['reward-label'] ?? 'positive');
    index = model.labelNames.indexOf(label);
    if (index < 0 && /^\d+$/.test(label)) index = Number(label);
    if (index < 0 || index >= model.numLabels)
      throw new UsageError(`--reward-label ${label}: the reward model's classes are ${model.labelNames.join(', ')}`);
  }
  const fn: RewardFn = async (samples) => {
    const texts = samples.map((s) => policyTok.decode(s.ids, { skipSpecialTokens: true }));
    const batch = tok.encodeBatch(texts, { maxLength: model.dims.maxPositions });
    await model.eval();
    const out = await model.forward(batch);
    const k = out.logits.shape[1];
    return texts.map((_, i) => out.logits.data[i * k + index]);
  };
  return { fn, model };
}

async function finish(out: string, metrics: MetricsWriter, title: string, keys: string[], results: Record<string, unknown>) {
  const rows = fs
    .readFileSync(metrics.file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l));
  const series: Series[] = keys.map((k) => ({
    name: k,
    points: rows.filter((r) => typeof r[k] === 'number').map((r) => ({ x: r.step, y: r[k] })),
  }));
  await writeSvg(path.join(out, 'curves.svg'), await lineChartSvg(series, { title, y: 'value' }));
  await writeJsonAtomic(path.join(out, 'results.json'), results);
}

const shared = {
  model: { type: 'string' },
  data: { type: 'string' },
  out: { type: 'string' },
  lr: { type: 'string' },
  'batch-size': { type: 'string' },
  seed: { type: 'string' },
  precision: { type: 'string' },
  lora: { type: 'boolean' },
  ...CHECKPOINT_FLAGS.options,
  overwrite: { type: 'boolean' },
  quiet: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;
/** The flags of the commands that score samples with a reward model (ppo, grpo). */
const REWARD_FLAGS = {
  options: { 'reward-model': { type: 'string' }, 'reward-label': { type: 'string' } },
  help: {
    'reward-model': 'a one-output reward model, or a classifier whose --reward-label logit is the reward',
    'reward-label': 'the class whose logit rewards (default positive)',
  },
} as const;

const sharedHelp = {
  model: 'the model folder to train',
  data: `${BUILTIN_PAIRS} (synthetic: a positive review sentence preferred over a negative one) or a .jsonl of { prompt?, chosen, rejected }`,
  out: 'folder for the model (or adapter), metrics.jsonl, curves.svg and results.json',
  lr: 'learning rate',
  'batch-size': 'pairs (or prompts) per step',
  seed: 'seed (default 42)',
  precision: `${PRECISION_HELP} (the policy and the reward model)`,
  lora: 'train a LoRA adapter (r 8, alpha 16) instead of every weight; --out gets a PEFT adapter',
  ...CHECKPOINT_FLAGS.help,
  overwrite: 'replace what --out holds',
  quiet: 'no progress bar',
};

async function policyOf(o: Opts, task: 'causal-lm' | 'sequence-classification', extra = {}) {
  const dir = modelDir(o);
  const model = await Model.fromPretrained(dir, { task, seed: num(o, 'seed', 42, 'int'), ...computeOptions(o), ...extra });
  if (o.lora) await new LoRA({ r: 8, alpha: 16, seed: num(o, 'seed', 42, 'int') }).apply(model);
  return { dir, model, tok: await Tokenizer.fromPretrained(dir) };
}

/** The run's --out, prepared by the process that writes it (rank 0 of a data-parallel job). */
function outOf(o: Opts, name: string, lead = true): string {
  if (o.out === undefined) throw new UsageError(`--out DIR is required (where the ${name} run writes)`);
  const out = path.resolve(String(o.out));
  if (!lead) return out;
  prepareOut(out, o, true);
  fs.mkdirSync(out, { recursive: true });
  return out;
}

export const RL_COMMANDS: Record<string, Command> = {
  reward: {
    summary: 'train a reward model (one-output classifier) on preference pairs, as TRL RewardTrainer',
    usage: 'tunekit reward --model DIR --out DIR [--data SPEC] [--epochs N] [--margin M] [--center-rewards C]',
    options: {
      ...shared,
      epochs: { type: 'string' },
      margin: { type: 'string' },
      'center-rewards': { type: 'string' },
      ...NPROC_FLAG.options,
    },
    help: {
      ...sharedHelp,
      ...NPROC_FLAG.help,
      epochs: 'passes over the pairs (default 1)',
      margin: 'margin for every pair',
      'center-rewards': "TRL's center_rewards_coefficient",
    },
    async run(o) {
      const { relaunch: nproc, distributed, lead } = workerRole(o);
      if (nproc) return relaunch(nproc);
      const out = outOf(o, 'reward', lead);
      const { train, test, source } = await pairsOf(o);
      const { dir, model, tok } = await policyOf(o, 'sequence-classification', { numLabels: 1 });
      const metrics = lead ? new MetricsWriter(path.join(out, 'metrics.jsonl'), { resume: Boolean(o.resume) }) : undefined;
      let bar: ReturnType<typeof progressBar> | undefined;
      const trainer = new RewardTrainer(model, {
        tokenizer: tok,
        lr: num(o, 'lr', 1e-4),
        epochs: num(o, 'epochs', 1, 'int'),
        batchSize: num(o, 'batch-size', 16, 'int'),
        seed: num(o, 'seed', 42, 'int'),
        margin: num(o, 'margin', undefined),
        centerRewardsCoefficient: num(o, 'center-rewards', undefined),
        ...checkpointing(o, out),
        ...(distributed ? { distributed: true } : {}),
        onProgress: (p) => {
          if (!metrics) return;
          bar ??= progressBar(p.totalSteps, 'reward', { silent: Boolean(o.quiet) });
          bar.update(p.step, { loss: p.loss.toFixed(4), acc: p.accuracy.toFixed(2) });
          metrics.write({ step: p.step, loss: p.loss, accuracy: p.accuracy, margin: p.margin, meanReward: p.meanReward, lr: p.lr });
        },
      });
      const before = metrics ? await trainer.evaluate(test) : undefined;
      try {
        await trainer.train(train);
      } finally {
        bar?.stop();
      }
      if (!metrics || !before) return model.dispose();
      await saveTrained(model, dir, out, Boolean(o.lora));
      const after = await trainer.evaluate(test);
      await finish(out, metrics, 'reward model: loss and pairwise accuracy', ['loss', 'accuracy'], {
        model: dir,
        data: source,
        before,
        after,
      });
      console.log(
        `held-out pairwise accuracy ${(100 * before.accuracy).toFixed(1)}% -> ${(100 * after.accuracy).toFixed(1)}% (${after.pairs} pairs); saved to ${out}`,
      );
      model.dispose();
    },
  },

  dpo: {
    summary: 'direct preference optimisation of a causal LM on preference pairs, as TRL DPOTrainer',
    usage: 'tunekit dpo --model DIR --out DIR [--data SPEC] [--beta B] [--loss-type sigmoid|hinge|ipo|robust] [--lora]',
    options: { ...shared, epochs: { type: 'string' }, beta: { type: 'string' }, 'loss-type': { type: 'string' }, ...NPROC_FLAG.options },
    help: {
      ...sharedHelp,
      ...NPROC_FLAG.help,
      epochs: 'passes over the pairs (default 1)',
      beta: 'pull towards the reference (default 0.1)',
      'loss-type': 'sigmoid (default), hinge, ipo, robust',
    },
    async run(o) {
      const { relaunch: nproc, distributed, lead } = workerRole(o);
      if (nproc) return relaunch(nproc);
      const out = outOf(o, 'dpo', lead);
      const { train, test, source } = await pairsOf(o);
      const { dir, model, tok } = await policyOf(o, 'causal-lm');
      const metrics = lead ? new MetricsWriter(path.join(out, 'metrics.jsonl'), { resume: Boolean(o.resume) }) : undefined;
      let bar: ReturnType<typeof progressBar> | undefined;
      const dpo = new DPO(model, {
        tokenizer: tok,
        lr: num(o, 'lr', o.lora ? 1e-4 : 1e-5),
        epochs: num(o, 'epochs', 1, 'int'),
        batchSize: num(o, 'batch-size', 8, 'int'),
        seed: num(o, 'seed', 42, 'int'),
        beta: num(o, 'beta', 0.1),
        lossType: (o['loss-type'] as DPOLossType | undefined) ?? 'sigmoid',
        ...checkpointing(o, out),
        ...(distributed ? { distributed: true } : {}),
        onProgress: (p) => {
          if (!metrics) return;
          bar ??= progressBar(p.totalSteps, 'dpo', { silent: Boolean(o.quiet) });
          bar.update(p.step, { loss: p.loss.toFixed(4), margin: p['rewards/margins'].toFixed(3) });
          metrics.write({ ...p });
        },
      });
      const before = metrics ? await dpo.evaluate(test) : undefined;
      try {
        await dpo.train(train);
      } finally {
        bar?.stop();
      }
      if (!metrics || !before) {
        dpo.dispose();
        return model.dispose();
      }
      await saveTrained(model, dir, out, Boolean(o.lora));
      const after = await dpo.evaluate(test);
      await finish(out, metrics, 'DPO: loss and reward margin', ['loss', 'rewards/margins'], { model: dir, data: source, before, after });
      console.log(
        `held-out DPO loss ${before.loss.toFixed(4)} -> ${after.loss.toFixed(4)}, reward accuracy ${(100 * after['rewards/accuracies']).toFixed(1)}%; saved to ${out}`,
      );
      dpo.dispose();
      model.dispose();
    },
  },

  ppo: {
    summary: 'PPO of a causal LM against a reward model (TRL PPOv2 math), on review-sentence prompts',
    usage: 'tunekit ppo --model DIR --reward-model DIR --out DIR [--steps N] [--batch-size B] [--response-length L] [--lora]',
    options: {
      ...shared,
      ...REWARD_FLAGS.options,
      steps: { type: 'string' },
      'response-length': { type: 'string' },
      'kl-coef': { type: 'string' },
      ...NPROC_FLAG.options,
    },
    help: {
      ...sharedHelp,
      ...REWARD_FLAGS.help,
      ...NPROC_FLAG.help,
      steps: 'PPO iterations (default 20)',
      'response-length': 'tokens per response (default 16)',
      'kl-coef': 'KL penalty coefficient (default 0.05)',
    },
    async run(o) {
      const { relaunch: nproc, distributed, lead } = workerRole(o);
      if (nproc) return relaunch(nproc);
      const group = distributed ? await defaultProcessGroup() : undefined;
      const out = outOf(o, 'ppo', lead);
      const { dir, model, tok } = await policyOf(o, 'causal-lm');
      const reward = await rewardOf(o, tok);
      const seed = num(o, 'seed', 42, 'int')!;
      const bs = num(o, 'batch-size', 16, 'int')!;
      const steps = num(o, 'steps', 20, 'int')!;
      const prompts = reviewPrompts(tok, 512, seed);
      const ppo = await PPO.create(model, {
        rewardFn: reward.fn,
        tokenizer: tok,
        responseLength: num(o, 'response-length', 16, 'int')!,
        lr: num(o, 'lr', o.lora ? 1e-4 : 1.41e-5),
        klCoef: num(o, 'kl-coef', 0.05),
        temperature: 1,
        seed,
        ...(group ? { distributed: group } : {}),
      });
      const { checkpointDir, checkpointEvery, resume } = checkpointing(o, out);
      const checkpoints = checkpointDir === undefined ? undefined : new CheckpointDir(checkpointDir);
      const latest = await checkpoints?.resumeFrom(Boolean(resume), group);
      if (latest) await ppo.load(latest);
      const metrics = lead ? new MetricsWriter(path.join(out, 'metrics.jsonl'), { resume }) : undefined;
      const bar = progressBar(steps, 'ppo', { silent: Boolean(o.quiet) || !lead });
      const world = group?.worldSize ?? 1;
      const samples: Record<string, string[]> = {};
      try {
        for (let s = ppo.stepCount; s < steps; s++) {
          // Each rank samples from its own bs prompts of the step's bs * world.
          const first = (s * world + (group?.rank ?? 0)) * bs;
          const queries = Array.from({ length: bs }, (_, i) => prompts[(first + i) % prompts.length]);
          const rollout = await ppo.rollout(queries);
          if (s === 0 || s === steps - 1)
            samples[s === 0 ? 'first' : 'last'] = rollout.queries
              .slice(0, 4)
              .map((q, i) => tok.decode([...q, ...rollout.responses[i]], { skipSpecialTokens: true }));
          const stats = await ppo.step(rollout);
          bar.update(s + 1, {
            reward: stats['objective/scores'].toFixed(3),
            kl: stats['objective/kl'].toFixed(3),
            len: stats['response/length'].toFixed(1),
          });
          metrics?.write({ ...stats, step: s + 1 });
          if (checkpoints && checkpointEvery && (s + 1) % checkpointEvery === 0) await checkpoints.write(s + 1, (d) => ppo.save(d), group);
        }
      } finally {
        bar.stop();
      }
      if (!metrics) {
        ppo.dispose();
        reward.model.dispose();
        return model.dispose();
      }
      await saveTrained(model, dir, out, Boolean(o.lora));
      await finish(out, metrics, 'PPO: reward and KL', ['objective/scores', 'objective/kl'], {
        model: dir,
        rewardModel: o['reward-model'],
        steps,
        samples,
      });
      console.log(`saved to ${out} (metrics.jsonl, curves.svg, results.json with samples)`);
      ppo.dispose();
      reward.model.dispose();
      model.dispose();
    },
  },

  grpo: {
    summary: 'GRPO of a causal LM against a reward model (TRL GRPOTrainer math), on review-sentence prompts',
    usage: 'tunekit grpo --model DIR --reward-model DIR --out DIR [--steps N] [--num-generations G] [--lora]',
    options: {
      ...shared,
      ...REWARD_FLAGS.options,
      steps: { type: 'string' },
      'num-generations': { type: 'string' },
      'response-length': { type: 'string' },
      beta: { type: 'string' },
      ...NPROC_FLAG.options,
    },
    help: {
      ...sharedHelp,
      ...REWARD_FLAGS.help,
      ...NPROC_FLAG.help,
      steps: 'GRPO iterations (default 20)',
      'num-generations': 'completions per prompt (default 8)',
      'response-length': 'tokens per completion (default 16)',
      beta: 'KL weight (default 0)',
    },
    async run(o) {
      const { relaunch: nproc, distributed, lead } = workerRole(o);
      if (nproc) return relaunch(nproc);
      const out = outOf(o, 'grpo', lead);
      const { dir, model, tok } = await policyOf(o, 'causal-lm');
      const reward = await rewardOf(o, tok);
      const seed = num(o, 'seed', 42, 'int')!;
      const steps = num(o, 'steps', 20, 'int')!;
      const grpo = await GRPO.create(model, {
        rewardFn: reward.fn,
        tokenizer: tok,
        numGenerations: num(o, 'num-generations', 8, 'int'),
        maxCompletionLength: num(o, 'response-length', 16, 'int')!,
        beta: num(o, 'beta', 0),
        lr: num(o, 'lr', o.lora ? 1e-4 : 1e-5),
        seed,
        ...(distributed ? { distributed: true } : {}),
      });
      const metrics = lead ? new MetricsWriter(path.join(out, 'metrics.jsonl'), { resume: Boolean(o.resume) }) : undefined;
      const bar = progressBar(steps, 'grpo', { silent: Boolean(o.quiet) || !lead });
      try {
        await grpo.train(reviewPrompts(tok, 512, seed), {
          steps,
          batchSize: num(o, 'batch-size', 4, 'int'),
          ...checkpointing(o, out),
          onStep: (st) => {
            bar.update(grpo.stepCount, { reward: st.reward.toFixed(3), len: st['completions/mean_length'].toFixed(1) });
            metrics?.write({ step: grpo.stepCount, ...st });
          },
        });
      } finally {
        bar.stop();
      }
      if (!metrics) {
        grpo.dispose();
        reward.model.dispose();
        return model.dispose();
      }
      await saveTrained(model, dir, out, Boolean(o.lora));
      await finish(out, metrics, 'GRPO: reward and loss', ['reward', 'loss'], { model: dir, rewardModel: o['reward-model'], steps });
      console.log(`saved to ${out} (metrics.jsonl, curves.svg, results.json)`);
      grpo.dispose();
      reward.model.dispose();
      model.dispose();
    },
  },
};
