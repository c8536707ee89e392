/**
 * PPO for language models, the math of TRL's PPOv2 trainer ("The N Implementation Details of RLHF with PPO", Huang et
 * al. 2024): sampled responses scored by a reward model or function, per-token KL rewards against a reference, GAE,
 * whitened advantages, clipped policy and value losses. The kernels (GAE, whitening, the losses) run in the core
 * (native/core/rl/objectives.cpp); this file drives them.
 */
import { padRows } from '../batch';
import { TunekitError } from '../errors';
import { Model, Precision } from '../model';
import { AdamW } from '../optim';
import { shuffled } from '../random';
import { checkBoolean, checkNumber, checkOptions } from '../validate';
import { addon } from '../native';
import { loadCheckpoint, LoopState, saveCheckpoint } from '../checkpoint';
import { checkDistributed, DistributedOptions, ProcessGroup, resolveDistributed } from '../distributed';
import { applyPrecision } from './pairs';
import { Reference } from './reference';
import { checkScoring, RewardFn, scoreResponses, Scoring, truncateAtStop } from './score';

export interface PPOOptions extends Scoring {
  reference?: Model;
  lr?: number;
  klCoef?: number;
  /** Ziegler et al.'s adaptive KL controller: moves klCoef towards a target KL over `horizon` samples. */
  adaptiveKl?: { target: number; horizon: number };
  cliprange?: number;
  clipRangeValue?: number;
  vfCoef?: number;
  gamma?: number;
  lam?: number;
  ppoEpochs?: number;
  numMiniBatches?: number;
  whitenRewards?: boolean;
  temperature?: number;
  /** Tokens sampled per response. */
  responseLength: number;
  /** Responses end after this token (e.g. EOS); what follows is not part of them. */
  stopTokenId?: number;
  /** Subtracted from the score of a response that never produced stopTokenId. */
  missingEosPenalty?: number;
  /** Clip the global gradient norm (default 1); null: no clipping. */
  maxGradNorm?: number | null;
  /** Update with dropout off (default true, as TRL's PPOv2: old and new log-probabilities then agree at the start). */
  disableDropout?: boolean;
  seed?: number;
  /** Sets the policy's precision (Model.setPrecision) for rollouts and updates; default: the precision it has. */
  precision?: Precision;
  /**
   * Data-parallel across the processes of a group (as the Trainer's): each rank samples and steps on its own queries,
   * the minibatch gradients are averaged across ranks (advantages are whitened per rank, as TRL's PPOv2 under
   * accelerate), and the statistics (and with it the adaptive KL coefficient) are averaged.
   */
  distributed?: boolean | ProcessGroup | DistributedOptions;
}

const PPO_OPTIONS = [
  'reference',
  'rewardModel',
  'rewardFn',
  'tokenizer',
  'rewardTokenizer',
  'lr',
  'klCoef',
  'adaptiveKl',
  'cliprange',
  'clipRangeValue',
  'vfCoef',
  'gamma',
  'lam',
  'ppoEpochs',
  'numMiniBatches',
  'whitenRewards',
  'temperature',
  'responseLength',
  'stopTokenId',
  'missingEosPenalty',
  'maxGradNorm',
  'disableDropout',
  'seed',
  'precision',
  'distributed',
];

export interface Rollout {
  queries: number[][];
  responses: number[][];
  scores: number[];
}

/** Statistics of one PPO step, by TRL's names. */
export type PPOStats = Record<string, number>;
export type { RewardFn };

export class PPO {
  private klCoef: number;
  private steps = 0;

  private constructor(
    readonly policy: Model,
    readonly options: Readonly<PPOOptions>,
    private readonly reference: Reference,
    private readonly optimizer: AdamW,
    private readonly group: ProcessGroup | undefined,
  ) {
    this.klCoef = options.klCoef ?? 0.05;
  }

  /**
   * Adds the value head to the policy (once), prepares the reference and one AdamW (betas 0.9/0.999, eps 1e-8, no
   * weight decay, constant rate) over the policy's trainable parameters and the head.
   */
  static async create(policy: Model, options: PPOOptions): Promise<PPO> {
    const o = checkOptions(options, PPO_OPTIONS, 'PPO');
    if (!(policy instanceof Model) || policy.task !== 'causal-lm') throw new TunekitError('E_CONFIG', 'PPO trains a causal-lm policy');
    checkNumber(o.responseLength, 'responseLength', { integer: true, min: 1 });
    for (const [k, rule] of [
      ['lr', { min: 0, minExclusive: true }],
      ['klCoef', { min: 0 }],
      ['cliprange', { min: 0, minExclusive: true }],
      ['clipRangeValue', { min: 0, minExclusive: true }],
      ['vfCoef', { min: 0 }],
      ['gamma', { min: 0, max: 1 }],
      ['lam', { min: 0, max: 1 }],
      ['ppoEpochs', { integer: true, min: 1 }],
      ['numMiniBatches', { integer: true, min: 1 }],
      ['temperature', { min: 0, minExclusive: true }],
      ['missingEosPenalty', { min: 0 }],
      ['seed', { integer: true, min: 0 }],
      ['stopTokenId', { integer: true, min: 0, max: policy.vocabSize, maxExclusive: true }],
    ] as const)
      if (o[k] !== undefined) checkNumber(o[k], k, rule);
    if (o.maxGradNorm !== undefined && o.maxGradNorm !== null) checkNumber(o.maxGradNorm, 'maxGradNorm', { min: 0 });
    if (o.whitenRewards !== undefined) checkBoolean(o.whitenRewards, 'whitenRewards', false);
    if (o.adaptiveKl !== undefined) {
      checkOptions(o.adaptiveKl, ['target', 'horizon'], 'adaptiveKl');
      checkNumber(o.adaptiveKl.target, 'adaptiveKl.target', { min: 0, minExclusive: true });
      checkNumber(o.adaptiveKl.horizon, 'adaptiveKl.horizon', { min: 0, minExclusive: true });
    }
    checkScoring(o);
    checkDistributed(o.distributed);
    await policy.addValueHead();
    await applyPrecision(policy, o.precision, 'PPO');
    const reference = await Reference.of(policy, o.reference);
    const optimizer = new AdamW(policy, {
      lr: o.lr ?? 3e-6,
      weightDecay: 0,
      betas: [0.9, 0.999],
      eps: 1e-8,
      maxGradNorm: o.maxGradNorm === null ? 0 : (o.maxGradNorm ?? 1),
    });
    // Attached after the value head exists, so that its gradients are averaged too.
    const dist = await resolveDistributed(o.distributed);
    if (dist) await policy.attachDistributed(dist.group, dist);
    return new PPO(policy, { ...o }, reference, optimizer, dist?.group);
  }

  /** The KL coefficient now (adaptiveKl moves it after every step). */
  get currentKlCoef(): number {
    return this.klCoef;
  }

  /** Samples one response per query with the KV cache at `temperature`, cut after stopTokenId, and scores it. */
  async rollout(queries: number[][]): Promise<Rollout> {
    checkQueries(queries, this.policy);
    const o = this.options;
    await this.policy.eval();
    const responses: number[][] = [];
    // One query length per generate call keeps every response right after its own query (no left padding inside).
    const byLength = new Map<number, number[]>();
    queries.forEach((q, i) => byLength.set(q.length, [...(byLength.get(q.length) ?? []), i]));
    for (const [, rows] of byLength) {
      const out = await this.policy.generate(
        { inputIds: rows.map((i) => queries[i]) },
        {
          maxNewTokens: o.responseLength,
          temperature: o.temperature ?? 0.7,
          seed: (o.seed ?? 0) + this.steps * 7919 + rows[0] + (this.group?.rank ?? 0) * 1000003,
          eosTokenId: -1,
        },
      );
      rows.forEach((i, k) => (responses[i] = truncateAtStop(out[k].slice(queries[i].length), o.stopTokenId)));
    }
    return { queries, responses, scores: await scoreResponses(this.options, queries, responses) };
  }

  /**
   * One PPO iteration on scored rollouts: old log-probabilities, reference log-probabilities and values with dropout
   * off; KL-penalised rewards, GAE and whitened advantages in the core; then ppoEpochs passes of numMiniBatches
   * updates. A non-finite loss is E_NAN with the weights of that minibatch untouched.
   */
  async step(batch: Rollout): Promise<PPOStats> {
    const o = this.options;
    const { queries, responses } = batch;
    checkQueries(queries, this.policy);
    if (!Array.isArray(responses) || responses.length !== queries.length)
      throw new TunekitError('E_ARG', `responses must hold one response per query (${queries.length})`);
    responses.forEach((r, i) => {
      if (!Array.isArray(r) || r.length === 0 || r.some((v) => !Number.isInteger(v) || v < 0 || v >= this.policy.vocabSize))
        throw new TunekitError('E_ARG', `response ${i} must be a non-empty array of token ids`);
    });
    if (
      !Array.isArray(batch.scores) ||
      batch.scores.length !== queries.length ||
      batch.scores.some((s) => typeof s !== 'number' || !Number.isFinite(s))
    )
      throw new TunekitError('E_ARG', `scores must be ${queries.length} finite numbers`);
    const scores = batch.scores.map((s, i) =>
      o.missingEosPenalty !== undefined && o.stopTokenId !== undefined && !responses[i].includes(o.stopTokenId)
        ? s - o.missingEosPenalty
        : s,
    );
    const B = queries.length;
    const R = Math.max(...responses.map((r) => r.length));
    const { inputIds, attentionMask, seq } = padRows(
      queries.map((q, i) => [...q, ...responses[i]]),
      this.policy.padTokenId ?? 0,
    );
    if (seq > this.policy.dims.maxPositions)
      throw new TunekitError(
        'E_RANGE',
        `a query plus its response has ${seq} tokens, more than the model's context of ${this.policy.dims.maxPositions}`,
      );
    const mask = new Float32Array(B * R);
    responses.forEach((r, i) => r.forEach((_, t) => (mask[i * R + t] = 1)));
    // Response token t of row i is predicted at shifted position query length - 1 + t.
    const align = (perPosition: Float32Array) => {
      const out = new Float32Array(B * R);
      for (let i = 0; i < B; i++)
        for (let t = 0; t < responses[i].length; t++) out[i * R + t] = perPosition[i * (seq - 1) + queries[i].length - 1 + t];
      return out;
    };
    const temperature = o.temperature ?? 0.7;
    const rows = { inputIds, attentionMask };
    await this.policy.eval();
    const old = await this.policy.tokenLogprobsAndValues(rows, temperature);
    const oldLogprobs = align(old.logprobs.data);
    const oldValues = align(old.values.data);
    const refLogprobs = align((await this.reference.logprobs(rows, temperature)).data);
    const gae = await addon.ppoAdvantages({
      rows: B,
      length: R,
      logprobs: oldLogprobs,
      refLogprobs,
      values: oldValues,
      mask,
      scores: Float32Array.from(scores),
      klCoef: this.klCoef,
      gamma: o.gamma ?? 1,
      lam: o.lam ?? 0.95,
      whitenRewards: o.whitenRewards ?? false,
    });

    await this.policy.train(!(o.disableDropout ?? true));
    const perMinibatch: Record<string, number>[] = [];
    const miniBatches = Math.min(o.numMiniBatches ?? 1, B);
    const size = Math.ceil(B / miniBatches);
    const slice = (a: Float32Array, idx: number[]) => Float32Array.from(idx.flatMap((i) => Array.from(a.subarray(i * R, (i + 1) * R))));
    for (let epoch = 0; epoch < (o.ppoEpochs ?? 4); epoch++) {
      const order = miniBatches === 1 ? [...Array(B).keys()] : shuffled(B, (o.seed ?? 0) + this.steps * 1000 + epoch);
      for (let m = 0; m < miniBatches; m++) {
        const idx = order.slice(m * size, (m + 1) * size);
        if (idx.length === 0) continue;
        const stats = await this.policy.objective(
          { inputIds: idx.map((i) => inputIds[i]), attentionMask: idx.map((i) => attentionMask[i]) },
          {
            name: 'ppo',
            numbers: {
              cliprange: o.cliprange ?? 0.2,
              cliprange_value: o.clipRangeValue ?? 0.2,
              vf_coef: o.vfCoef ?? 0.1,
              temperature,
            },
            arrays: {
              query_lengths: Float32Array.from(idx.map((i) => queries[i].length)),
              mask: slice(mask, idx),
              old_logprobs: slice(oldLogprobs, idx),
              old_values: slice(oldValues, idx),
              advantages: slice(gae.advantages, idx),
              returns: slice(gae.returns, idx),
            },
          },
          { backward: true },
        );
        await this.optimizer.step();
        await this.optimizer.zeroGrad();
        perMinibatch.push(stats);
      }
    }
    await this.policy.eval();
    this.steps++;

    const avg = (k: string) => perMinibatch.reduce((a, s) => a + s[k], 0) / perMinibatch.length;
    const meanScore = scores.reduce((a, b) => a + b, 0) / B;
    let entropy = 0;
    for (let i = 0; i < B * R; i++) entropy -= oldLogprobs[i] * mask[i];
    let stats: PPOStats = {
      'objective/kl': gae.kl,
      'objective/entropy': entropy / B,
      'objective/non_score_reward': gae.nonScoreReward,
      'objective/rlhf_reward': gae.nonScoreReward + meanScore,
      'objective/scores': meanScore,
      'policy/approxkl_avg': avg('policy/approxkl'),
      'policy/clipfrac_avg': avg('policy/clipfrac'),
      'loss/policy_avg': avg('loss/policy'),
      'loss/value_avg': avg('loss/value'),
      'val/clipfrac_avg': avg('val/clipfrac'),
      'policy/entropy_avg': avg('policy/entropy'),
      'val/ratio': avg('val/ratio'),
      'val/num_eos_tokens': o.stopTokenId === undefined ? 0 : responses.filter((r) => r.includes(o.stopTokenId!)).length,
      'objective/kl_coef': this.klCoef,
      'response/length': responses.reduce((a, r) => a + r.length, 0) / B,
    };
    if (this.group) stats = await this.group.average(stats);
    // A negative KL estimate means the sampling and the scoring disagree (e.g. another temperature): TRL's users ask.
    const kl = stats['objective/kl'];
    if (kl < -0.05)
      process.emitWarning(
        `PPO: the KL to the reference is negative (${kl.toFixed(4)}); are the rollouts sampled at this temperature?`,
        'TunekitWarning',
      );
    if (o.adaptiveKl) {
      // TRL's controller sees the whole batch: every rank's mean KL, and the samples of all ranks.
      const error = Math.max(-0.2, Math.min(0.2, kl / o.adaptiveKl.target - 1));
      this.klCoef *= 1 + (error * B * (this.group?.worldSize ?? 1)) / o.adaptiveKl.horizon;
    }
    return stats;
  }

  /**
   * Writes everything a resumed run needs into `dir`, atomically (saveCheckpoint): the policy with its adapters and
   * value head, the optimizer's moments, the step count and the KL coefficient. Rollouts are seeded by the step count
   * and updates run without dropout, so a resumed run repeats an unbroken one.
   */
  async save(dir: string): Promise<void> {
    await saveCheckpoint(dir, this.policy, this.optimizer, { kind: 'ppo', step: this.steps, klCoef: this.klCoef });
  }

  /** Restores what save() wrote, into a PPO made by create() on the same policy and options. */
  async load(dir: string): Promise<void> {
    const state = await loadCheckpoint<LoopState & { klCoef: number }>(dir, this.policy, this.optimizer, 'ppo', (s, file) =>
      checkNumber(s.klCoef, `${file}: klCoef`, { min: 0, code: 'E_FORMAT' }),
    );
    this.klCoef = state.klCoef;
    this.steps = state.step;
  }

  /** PPO steps taken (and restored by load). */
  get stepCount(): number {
    return this.steps;
  }

  /**
   * Frees the optimizer's state and the reference copy (if PPO made one), and detaches the policy from its process
   * group; the policy keeps its value head.
   */
  dispose(): void {
    this.optimizer.dispose();
    this.reference.dispose();
    if (this.group) void this.policy.detachDistributed().catch(() => undefined);
  }
}

function checkQueries(queries: unknown, policy: Model): asserts queries is number[][] {
  if (!Array.isArray(queries) || queries.length === 0)
    throw new TunekitError('E_ARG', 'queries must be a non-empty array of token-id arrays');
  queries.forEach((q, i) => {
    if (!Array.isArray(q) || q.length === 0 || q.some((v) => !Number.isInteger(v) || v < 0 || v >= policy.vocabSize))
      throw new TunekitError('E_ARG', `query ${i} must be a non-empty array of token ids in [0, ${policy.vocabSize})`);
    if (q.length >= policy.dims.maxPositions)
      throw new TunekitError(
        'E_RANGE',
        `query ${i} has ${q.length} tokens, leaving no room in the model's context of ${policy.dims.maxPositions}`,
      );
  });
}
