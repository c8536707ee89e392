/** What every training strategy shares: options, the result it reports, and the supervised loop over the Trainer. */
import { TunekitError } from '../errors';
import type { Model, Precision } from '../model';
import { AdamW } from '../optim';
import { DistributedOptions, ProcessGroup, resolveDistributed } from '../distributed';
import { EvalResult, Example, Progress, stepsPerEpoch as stepsPerEpochOf, Trainer, TrainResult } from '../trainer';
import { checkNumber } from '../validate';

export interface StrategyData {
  train: Example[];
  validation?: Example[];
  test?: Example[];
}

export interface TrainOptions {
  lr?: number;
  epochs?: number;
  batchSize?: number;
  maxSteps?: number;
  weightDecay?: number;
  /** Fraction of the steps spent warming the learning rate up (linear decay after). */
  warmupRatio?: number;
  gradAccumulation?: number;
  maxGradNorm?: number;
  seed?: number;
  /** Evaluate on the validation set this often (default: once per epoch). */
  evalEvery?: number;
  checkpointDir?: string;
  /** Steps between checkpoints (default: once per epoch when checkpointDir is set). */
  checkpointEvery?: number;
  /** Continue from checkpointDir's latest checkpoint (default true; false refuses a folder holding checkpoints). */
  resume?: boolean;
  /** '32-true' (default), 'bf16-mixed', ...: see Model.setPrecision. */
  precision?: Precision;
  onProgress?: (p: Progress) => void;
  /** Called when training ends, before the final evaluations: save the model here and no evaluation can lose it. */
  onTrained?: () => Promise<void> | void;
  /** Data-parallel across the processes of a group (Trainer's `distributed`): batchSize is then per process. */
  distributed?: boolean | ProcessGroup | DistributedOptions;
}

/** The names of TrainOptions' fields; each strategy adds its own. */
export const TRAIN_OPTIONS = [
  'lr',
  'epochs',
  'batchSize',
  'maxSteps',
  'weightDecay',
  'warmupRatio',
  'gradAccumulation',
  'maxGradNorm',
  'seed',
  'evalEvery',
  'checkpointDir',
  'checkpointEvery',
  'resume',
  'precision',
  'onProgress',
  'onTrained',
  'distributed',
];

export interface StrategyResult {
  strategy: string;
  trainableParameters: number;
  totalParameters: number;
  wallTimeMs: number;
  tokensPerSecond?: number;
  /** The process's peak resident set size so far (from the OS), in MiB. */
  peakRssMiB: number;
  /** In-context learning: the mean number of demonstrations that fitted the context with each query. */
  shotsUsed?: number;
  train?: TrainResult;
  validation?: EvalResult;
  test?: EvalResult;
}

export function peakRssMiB(): number {
  return process.resourceUsage().maxRSS / 1024;
}

export const TRAIN_DEFAULTS = {
  lr: 5e-5,
  epochs: 3,
  batchSize: 16,
  weightDecay: 0.01,
  warmupRatio: 0.1,
  gradAccumulation: 1,
  maxGradNorm: 1.0,
  seed: 42,
};

/** Trains the model's currently trainable parameters with AdamW and a linear schedule, then scores the test set. */
export async function trainSupervised(name: string, model: Model, data: StrategyData, options: TrainOptions): Promise<StrategyResult> {
  if (!data || !Array.isArray(data.train) || data.train.length === 0)
    throw new TunekitError('E_ARG', `${name}: data.train must be a non-empty array of examples`);
  const o = { ...TRAIN_DEFAULTS, ...options };
  checkNumber(o.warmupRatio, 'warmupRatio', { min: 0, max: 1 });
  for (const k of ['batchSize', 'epochs', 'gradAccumulation'] as const) checkNumber(o[k], k, { integer: true, min: 1 });
  const trainable = model.countParameters({ trainableOnly: true });
  if (trainable === 0) throw new TunekitError('E_STATE', `${name}: the model has no trainable parameters`);
  const dist = await resolveDistributed(o.distributed);
  const stepsPerEpoch = stepsPerEpochOf(data.train.length, o.batchSize, o.gradAccumulation, dist?.group.worldSize);
  const totalSteps = Math.min(o.maxSteps ?? Infinity, o.epochs * stepsPerEpoch);
  const optimizer = new AdamW(model, {
    lr: o.lr,
    weightDecay: o.weightDecay,
    schedule: { type: 'linear', warmupSteps: Math.round(o.warmupRatio * totalSteps), totalSteps },
  });
  const trainer = new Trainer(model, {
    optimizer,
    batchSize: o.batchSize,
    epochs: o.epochs,
    maxSteps: o.maxSteps,
    gradAccumulation: o.gradAccumulation,
    maxGradNorm: o.maxGradNorm,
    seed: o.seed,
    evalEvery: o.evalEvery ?? stepsPerEpoch,
    onProgress: o.onProgress,
    checkpointDir: o.checkpointDir,
    checkpointEvery: o.checkpointDir ? (o.checkpointEvery ?? stepsPerEpoch) : undefined,
    resume: o.resume,
    precision: o.precision,
    onTrained: o.onTrained,
    ...(dist ? { distributed: dist } : {}),
  });
  const start = Date.now();
  const train = await trainer.train(data.train, data.validation?.length ? { evalSet: data.validation } : {});
  const result: StrategyResult = {
    strategy: name,
    trainableParameters: trainable,
    totalParameters: model.countParameters(),
    wallTimeMs: Date.now() - start,
    tokensPerSecond: train.tokensPerSecond,
    peakRssMiB: peakRssMiB(),
    train,
  };
  if (train.eval) result.validation = train.eval;
  if (data.test?.length) result.test = await trainer.evaluate(data.test);
  return result;
}
