/**
 * GRPO (Shao et al. 2024), as TRL's GRPOTrainer: G completions per prompt, advantages normalised within each group,
 * the clipped per-token surrogate, and optionally beta times a KL estimate to the reference. No value model.
 */
import { TunekitError } from '../errors';
import { Model, Precision } from '../model';
import { AdamW } from '../optim';
import { shuffled } from '../random';
import { CheckpointDir, checkFolder, loadCheckpoint, LoopState, saveCheckpoint } from '../checkpoint';
import { addon, serial } from '../native';
import { checkDistributed, DistributedOptions, ProcessGroup, resolveDistributed, shardOf } from '../distributed';
import { checkBoolean, checkChoice, checkNumber, checkOptions } from '../validate';
import { applyPrecision, completionRows } from './pairs';
import { Reference } from './reference';
import { checkScoring, scoreResponses, Scoring, truncateAtStop } from './score';

export type GRPOLossType = 'dapo' | 'grpo' | 'bnpo';

export interface GRPOOptions extends Scoring {
  /** Needed only with beta > 0; default as DPO's (adapter off, or a frozen copy). */
  reference?: Model;
  /** Completions per prompt (G; TRL default 8). */
  numGenerations?: number;
  /** Tokens sampled per completion at most (TRL's max_completion_length). */
  maxCompletionLength: number;
  /** Weight of the KL to the reference (TRL default 0: no reference is needed). */
  beta?: number;
  epsilon?: number;
  /** Upper clip (DAPO's clip-higher); default epsilon. */
  epsilonHigh?: number;
  /** TRL default 'dapo' (token mean over the batch), 'grpo' (per-sequence mean), 'bnpo' (token mean). */
  lossType?: GRPOLossType;
  /** 'group' (TRL default): (r - mean) / (std + 1e-4) within each group; 'batch': the batch's std; 'none': no scaling. */
  scaleRewards?: 'group' | 'batch' | 'none';
  temperature?: number;
  /** Multiply the KL term by the importance ratio (TRL's default, DeepSeek-V3.2: the unbiased reverse-KL gradient). */
  biasCorrectionKl?: boolean;
  /** Updates per generated batch (TRL's num_iterations, mu). */
  numIterations?: number;
  lr?: number;
  maxGradNorm?: number;
  /** Update with dropout off (default false, as TRL's GRPOConfig). */
  disableDropout?: boolean;
  stopTokenId?: number;
  seed?: number;
  /** Sets the policy's precision (Model.setPrecision) for rollouts and updates; default: the precision it has. */
  precision?: Precision;
  /**
   * Data-parallel across the processes of a group (as the Trainer's): each round's prompts are split over the ranks
   * (train's batchSize is per rank), every group of completions stays on one rank, 'batch' reward scaling uses the
   * whole batch's spread, gradients are averaged across ranks, and rank 0 writes the checkpoints.
   */
  distributed?: boolean | ProcessGroup | DistributedOptions;
}

const GRPO_OPTIONS = [
  'reference',
  'rewardModel',
  'rewardFn',
  'tokenizer',
  'rewardTokenizer',
  'numGenerations',
  'maxCompletionLength',
  'beta',
  'epsilon',
  'epsilonHigh',
  'lossType',
  'scaleRewards',
  'temperature',
  'numIterations',
  'biasCorrectionKl',
  'lr',
  'maxGradNorm',
  'disableDropout',
  'stopTokenId',
  'seed',
  'precision',
  'distributed',
];

export interface GRPOTrainOptions {
  /** Rounds this call runs (a resumed call: the rounds its run had left). */
  steps: number;
  /** Prompts per round (default 4). */
  batchSize?: number;
  onStep?: (stats: Record<string, number>) => void;
  checkpointDir?: string;
  checkpointEvery?: number;
  /** How many checkpoints to keep (default 2). */
  keepCheckpoints?: number;
  /** Resume from checkpointDir's latest checkpoint when there is one (default true; false refuses a used folder). */
  resume?: boolean;
}

type GRPOState = LoopState & { runStart: number; history: Record<string, number>[] };

/** Completions of prompts (each prompt repeated G times in a row) with their rewards and advantages. */
export interface Generation {
  prompts: number[][];
  completions: number[][];
  rewards: number[];
  advantages: number[];
  /** The policy's per-token log-probabilities when the completions were sampled (needed when numIterations > 1). */
  oldLogps?: Float32Array;
}

export class GRPO {
  private steps = 0;
  private constructor(
    readonly policy: Model,
    readonly options: Readonly<GRPOOptions>,
    private readonly reference: Reference | undefined,
    private readonly optimizer: AdamW,
    private readonly group: ProcessGroup | undefined,
  ) {}

  static async create(policy: Model, options: GRPOOptions): Promise<GRPO> {
    const o = checkOptions(options, GRPO_OPTIONS, 'GRPO');
    if (!(policy instanceof Model) || policy.task !== 'causal-lm') throw new TunekitError('E_CONFIG', 'GRPO trains a causal-lm policy');
    checkScoring(o);
    checkNumber(o.maxCompletionLength, 'maxCompletionLength', { integer: true, min: 1 });
    checkNumber(o.numGenerations, 'numGenerations', { integer: true, min: 2 }, 8);
    checkNumber(o.beta, 'beta', { min: 0 }, 0);
    checkNumber(o.epsilon, 'epsilon', { min: 0, minExclusive: true, max: 1, maxExclusive: true }, 0.2);
    if (o.epsilonHigh !== undefined) checkNumber(o.epsilonHigh, 'epsilonHigh', { min: 0, minExclusive: true });
    checkChoice<GRPOLossType>(o.lossType, ['dapo', 'grpo', 'bnpo'], 'lossType', 'dapo');
    checkChoice(o.scaleRewards, ['group', 'batch', 'none'], 'scaleRewards', 'group');
    checkNumber(o.temperature, 'temperature', { min: 0, minExclusive: true }, 1);
    checkNumber(o.numIterations, 'numIterations', { integer: true, min: 1 }, 1);
    checkBoolean(o.biasCorrectionKl, 'biasCorrectionKl', true);
    if (o.stopTokenId !== undefined)
      checkNumber(o.stopTokenId, 'stopTokenId', { integer: true, min: 0, max: policy.vocabSize, maxExclusive: true });
    checkDistributed(o.distributed);
    await applyPrecision(policy, o.precision, 'GRPO');
    const reference = (o.beta ?? 0) > 0 ? await Reference.of(policy, o.reference) : undefined;
    const optimizer = new AdamW(policy, { lr: o.lr ?? 1e-6, weightDecay: 0, maxGradNorm: o.maxGradNorm ?? 1 });
    const dist = await resolveDistributed(o.distributed);
    if (dist) await policy.attachDistributed(dist.group, dist);
    return new GRPO(policy, { ...o }, reference, optimizer, dist?.group);
  }

  /**
   * Group-normalised advantages of rewards laid out as consecutive groups of numGenerations (TRL's formula).
   * `batchStd` ('batch' scaling): the spread of the whole batch when it spans ranks; default these rewards' own.
   */
  advantages(rewards: number[], batchStd?: number): number[] {
    const G = this.options.numGenerations ?? 8;
    if (rewards.length % G !== 0) throw new TunekitError('E_ARG', `rewards must come in groups of ${G}`);
    const std = (xs: number[]) => {
      const m = xs.reduce((a, b) => a + b, 0) / xs.length;
      return Math.sqrt(xs.reduce((a, b) => a + (b - m) ** 2, 0) / Math.max(1, xs.length - 1));
    };
    const scale = this.options.scaleRewards ?? 'group';
    batchStd ??= std(rewards);
    return rewards.map((r, i) => {
      const group = rewards.slice(i - (i % G), i - (i % G) + G);
      const mean = group.reduce((a, b) => a + b, 0) / G;
      const s = scale === 'group' ? std(group) : batchStd;
      return scale === 'none' ? r - mean : (r - mean) / (s + 1e-4);
    });
  }

  /** Samples numGenerations completions per prompt at `temperature`, scores them and computes the advantages. */
  async generate(prompts: number[][]): Promise<Generation> {
    const o = this.options;
    const G = o.numGenerations ?? 8;
    if (!Array.isArray(prompts) || prompts.length === 0)
      throw new TunekitError('E_ARG', 'prompts must be a non-empty array of token-id arrays');
    const repeated = prompts.flatMap((p) => new Array(G).fill(p) as number[][]);
    await this.policy.eval();
    const completions: number[][] = [];
    for (let i = 0; i < repeated.length; i += G) {
      const out = await this.policy.generate(
        { inputIds: repeated.slice(i, i + G) },
        {
          maxNewTokens: o.maxCompletionLength,
          temperature: o.temperature ?? 1,
          seed: (o.seed ?? 0) + this.steps * 7919 + i + (this.group?.rank ?? 0) * 1000003,
          eosTokenId: o.stopTokenId ?? -1,
        },
      );
      out.forEach((row, k) => completions.push(truncateAtStop(row.slice(repeated[i + k].length), o.stopTokenId)));
    }
    const rewards = await scoreResponses(o, repeated, completions);
    let batchStd: number | undefined;
    if (this.group && (o.scaleRewards ?? 'group') === 'batch') {
      const [n, sum, sumSq] = await this.group.allReduce([
        rewards.length,
        rewards.reduce((a, b) => a + b, 0),
        rewards.reduce((a, b) => a + b * b, 0),
      ]);
      batchStd = Math.sqrt(Math.max(0, sumSq - (sum * sum) / n) / Math.max(1, n - 1));
    }
    const gen: Generation = { prompts: repeated, completions, rewards, advantages: this.advantages(rewards, batchStd) };
    if ((o.numIterations ?? 1) > 1)
      gen.oldLogps = (await this.policy.tokenLogprobs(this.rows(gen), { temperature: o.temperature ?? 1 })).data;
    return gen;
  }

  private rows(g: Generation) {
    return completionRows(
      this.policy,
      g.prompts.map((p, i) => [p, g.completions[i]]),
    );
  }

  /** The GRPO loss and statistics of a generation, and with `backward` one optimizer step on it. */
  async step(g: Generation, options: { backward?: boolean } = {}): Promise<Record<string, number>> {
    const o = this.options;
    if (!Array.isArray(g?.completions) || g.completions.length !== g.prompts?.length || g.advantages?.length !== g.prompts.length)
      throw new TunekitError('E_ARG', 'a generation needs one completion and one advantage per prompt');
    g.completions.forEach((c, i) => {
      if (!Array.isArray(c) || c.length === 0) throw new TunekitError('E_ARG', `completion ${i} is empty`);
    });
    const rows = this.rows(g);
    const temperature = o.temperature ?? 1;
    const arrays: Record<string, Float32Array> = { completion_mask: rows.completionMask, advantages: Float32Array.from(g.advantages) };
    if (g.oldLogps) arrays.old_logps = g.oldLogps;
    if (this.reference) arrays.ref_logps = (await this.reference.logprobs(rows, temperature)).data;
    const backward = options.backward ?? true;
    if (backward) await this.policy.train(!(o.disableDropout ?? false));
    const stats = await this.policy.objective(
      { inputIds: rows.inputIds, attentionMask: rows.attentionMask },
      {
        name: 'grpo',
        numbers: {
          beta: o.beta ?? 0,
          epsilon_low: o.epsilon ?? 0.2,
          epsilon_high: o.epsilonHigh ?? o.epsilon ?? 0.2,
          temperature,
          bias_correction_kl: (o.biasCorrectionKl ?? true) ? 1 : 0,
        },
        strings: { loss_type: o.lossType ?? 'dapo' },
        arrays,
      },
      { backward },
    );
    if (backward) {
      await this.optimizer.step();
      await this.optimizer.zeroGrad();
      await this.policy.eval();
    }
    return stats;
  }

  /**
   * `steps` rounds of: a seeded batch of prompts, numGenerations completions each, numIterations updates. With
   * checkpointDir, a checkpoint every checkpointEvery rounds; a call that finds one there resumes that run (the same
   * prompts and options), ending where the unbroken call would have.
   */
  async train(prompts: number[][], opts: GRPOTrainOptions) {
    checkOptions(opts, ['steps', 'batchSize', 'onStep', 'checkpointDir', 'checkpointEvery', 'keepCheckpoints', 'resume'], 'GRPO.train');
    const steps = checkNumber(opts.steps, 'steps', { integer: true, min: 1 });
    const bs = Math.min(prompts.length, checkNumber(opts.batchSize, 'batchSize', { integer: true, min: 1 }, 4));
    const every =
      opts.checkpointEvery === undefined ? Infinity : checkNumber(opts.checkpointEvery, 'checkpointEvery', { integer: true, min: 1 });
    const keep = checkNumber(opts.keepCheckpoints, 'keepCheckpoints', { integer: true, min: 1 }, 2);
    const checkpoints = opts.checkpointDir === undefined ? undefined : new CheckpointDir(checkFolder(opts.checkpointDir), keep);
    let runStart = this.steps;
    let history: Record<string, number>[] = [];
    const group = this.group;
    const latest = await checkpoints?.resumeFrom(checkBoolean(opts.resume, 'resume', true), group);
    if (latest) {
      const state = await this.load(latest);
      runStart = state.runStart;
      history = state.history;
    } else {
      // Dropout draws from the global generator: seeded here, so that a run is repeatable and a resumed one can be.
      await serial(() => addon.manualSeed((this.options.seed ?? 0) + this.steps));
    }
    while (this.steps < runStart + steps) {
      const order = shuffled(prompts.length, (this.options.seed ?? 0) + this.steps);
      const world = group?.worldSize ?? 1;
      const round = order.slice(0, Math.min(prompts.length, bs * world));
      const gen = await this.generate((group ? shardOf(round, group.rank, world) : round).map((i) => prompts[i]));
      let stats: Record<string, number> = {};
      for (let it = 0; it < (this.options.numIterations ?? 1); it++) stats = await this.step(gen);
      const meanReward = gen.rewards.reduce((a, b) => a + b, 0) / gen.rewards.length;
      let row: Record<string, number> = {
        ...stats,
        reward: meanReward,
        'completions/mean_length': gen.completions.reduce((a, c) => a + c.length, 0) / gen.completions.length,
      };
      if (group) row = await group.average(row);
      history.push(row);
      this.steps++;
      opts.onStep?.(row);
      if (checkpoints && history.length % every === 0)
        await checkpoints.write(history.length, (dir) => this.save(dir, { runStart, history }), group);
    }
    return { steps, history };
  }

  /**
   * Writes the policy (with its adapters), the optimizer's moments, the step count and the RNG into `dir`, atomically
   * (saveCheckpoint); `train` adds where its run started and its history. Generation is seeded by the step count.
   */
  async save(dir: string, run: { runStart: number; history: Record<string, number>[] } = { runStart: 0, history: [] }): Promise<void> {
    await saveCheckpoint(dir, this.policy, this.optimizer, { kind: 'grpo', step: this.steps, ...run });
  }

  /** Restores what save() wrote, into a GRPO made by create() on the same policy and options. */
  async load(dir: string): Promise<GRPOState> {
    const state = await loadCheckpoint<GRPOState>(dir, this.policy, this.optimizer, 'grpo', (s, file) => {
      checkNumber(s.runStart, `${file}: runStart`, { integer: true, min: 0, max: s.step, code: 'E_FORMAT' });
      if (!Array.isArray(s.history)) throw new TunekitError('E_FORMAT', `${file}: history must be an array`);
    });
    this.steps = state.step;
    return state;
  }

  /** GRPO rounds taken (and restored by load). */
  get stepCount(): number {
    return this.steps;
  }

  /** Frees the optimizer's state and the reference copy (if GRPO made one), and detaches the policy from its group. */
  dispose(): void {
    this.optimizer.dispose();
    this.reference?.dispose();
    if (this.group) void this.policy.detachDistributed().catch(() => undefined);
  }
}
