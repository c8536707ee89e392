/** The managed training loop: batching, accumulation, clipping, schedules, evaluation, checkpoints and resume. */
import { padRows } from './batch';
import { TunekitError } from './errors';
import type { Model, Precision } from './model';
import { CheckpointDir, checkFolder, loadCheckpoint, LoopState, saveCheckpoint } from './checkpoint';
import { checkDistributed, DistributedOptions, ProcessGroup, resolveDistributed, shardOf } from './distributed';
import { addon, serial } from './native';
import { shuffled } from './random';
import { GradScaler, type Optimizer } from './optim';
import { checkBoolean, checkNumber, checkOptions, show } from './validate';

/** One training example: token ids plus a class label (classification) or token labels (language modelling). */
export interface Example {
  inputIds: number[];
  label?: number;
  /** Token labels for a language model; default: the input ids themselves, padding ignored. */
  labels?: number[];
}

export interface Progress {
  step: number;
  totalSteps: number;
  epoch: number;
  loss: number;
  lr: number;
  gradNorm: number;
  tokensPerSecond: number;
  elapsedMs: number;
  evalLoss?: number;
  evalAccuracy?: number;
  /** With a GradScaler: the scale after this step, and whether an overflow skipped its update. */
  lossScale?: number;
  skipped?: boolean;
}

export interface TrainerOptions {
  optimizer: Optimizer;
  batchSize?: number;
  epochs?: number;
  /** Stop after this many optimizer steps (overrides epochs when smaller). */
  maxSteps?: number;
  gradAccumulation?: number;
  maxGradNorm?: number;
  evalEvery?: number;
  checkpointEvery?: number;
  checkpointDir?: string;
  /** How many checkpoints to keep in checkpointDir (oldest are removed). */
  keepCheckpoints?: number;
  onProgress?: (p: Progress) => void;
  seed?: number;
  maxLength?: number;
  /**
   * Resume from checkpointDir's latest checkpoint when there is one (default true). With false, a checkpointDir that
   * already holds checkpoints is refused: a fresh run must not mix its checkpoints with an earlier run's.
   */
  resume?: boolean;
  /** Sets the model's precision for the run (Model.setPrecision); default: the precision it has. */
  precision?: Precision;
  /** Dynamic loss scaling (GradScaler semantics); '16-mixed' gets a default one. */
  gradScaler?: GradScaler;
  /** Called once training ends, before the final evaluation: where a caller saves the model, so no evaluation can lose it. */
  onTrained?: () => Promise<void> | void;
  /**
   * Rewrites each training batch before it is padded (dynamic masking for a masked LM, augmentation). It gets a seed
   * derived from the run's seed, the epoch and the batch index, so a resumed run sees the same batches.
   */
  transform?: (examples: Example[], seed: number) => Example[];
  /**
   * Data-parallel training (DistributedDataParallel's semantics) across the processes of a group: `true` joins the
   * group torchrun's variables describe (`tunekit launch` sets them). Each rank trains on its shard of every epoch's
   * order (DistributedSampler's), gradients are averaged across ranks during backward, metrics and evaluations are
   * averaged over all ranks, and rank 0 alone writes checkpoints, which every rank resumes from. batchSize is per rank.
   */
  distributed?: boolean | ProcessGroup | DistributedOptions;
}

export interface EvalResult {
  loss: number;
  accuracy?: number;
  perplexity?: number;
  examples: number;
}
export interface TrainResult {
  steps: number;
  epochs: number;
  trainLoss: number;
  wallTimeMs: number;
  tokensPerSecond: number;
  history: Progress[];
  eval?: EvalResult;
  resumedFrom?: number;
  /** Language-model batches with no token to predict (empty or one-token texts), skipped rather than trained on. */
  skippedBatches: number;
}

const TRAINER_OPTIONS = [
  'optimizer',
  'batchSize',
  'epochs',
  'maxSteps',
  'gradAccumulation',
  'maxGradNorm',
  'evalEvery',
  'checkpointEvery',
  'checkpointDir',
  'keepCheckpoints',
  'onProgress',
  'seed',
  'maxLength',
  'resume',
  'precision',
  'gradScaler',
  'transform',
  'onTrained',
  'distributed',
];

interface TrainerState {
  step: number;
  epoch: number;
  batchInEpoch: number;
  seed: number;
  tokens: number;
  history: Progress[];
  scaler?: { scale: number; growthTracker: number };
}

function batchSeed(seed: number, epoch: number, batch: number): number {
  return (Math.imul(seed ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(epoch + 1, 0xc2b2ae35) ^ Math.imul(batch + 1, 0x27d4eb2f)) >>> 0;
}

/** Batches per epoch when each of worldSize ranks takes its share of n examples (DistributedSampler's, padded). */
export function batchesPerEpoch(n: number, batchSize: number, worldSize = 1): number {
  return Math.ceil(Math.ceil(n / worldSize) / batchSize);
}

/** Optimizer steps per epoch: batchesPerEpoch, gradAccumulation batches to a step. */
export function stepsPerEpoch(n: number, batchSize: number, gradAccumulation: number, worldSize = 1): number {
  return Math.ceil(batchesPerEpoch(n, batchSize, worldSize) / gradAccumulation);
}

/** Pads examples into one batch for a model; language-model labels ignore (-100) the padding. */
export function collateExamples(model: Model, examples: Example[], maxLength?: number) {
  const pad = model.padTokenId ?? 0;
  const cut = (r: number[]) => (maxLength ? r.slice(0, maxLength) : r);
  const {
    inputIds,
    attentionMask,
    pad: padTo,
  } = padRows(
    examples.map((e) => cut(e.inputIds)),
    pad,
  );
  const classify = model.task === 'sequence-classification';
  let labels: number[] | number[][];
  if (classify) {
    labels = examples.map((e, i) => {
      if (typeof e.label !== 'number') throw new TunekitError('E_ARG', `example ${i} of the batch has no numeric label`);
      return e.label;
    });
  } else {
    labels = examples.map((e, i) => padTo(cut(e.labels ?? e.inputIds), -100).map((v, j) => (attentionMask[i][j] ? v : -100)));
  }
  return { inputIds, attentionMask, labels };
}

/**
 * Checks every example before any work starts, so a bad one fails the run at once (naming it) instead of after
 * hours of training: token ids in the vocabulary, a class id for a classifier, token labels that fit the ids.
 */
export function checkExamples(model: Model, data: unknown, what: string): Example[] {
  if (!Array.isArray(data) || data.length === 0) throw new TunekitError('E_ARG', `${what} must be a non-empty array of examples`);
  const vocab = model.vocabSize;
  const classes = model.task === 'sequence-classification' ? model.numLabels : undefined;
  const tokens = (ids: unknown, where: string, allowIgnore: boolean) => {
    if (!Array.isArray(ids)) throw new TunekitError('E_TYPE', `${where} must be an array of token ids, got ${show(ids)}`);
    for (let j = 0; j < ids.length; j++) {
      const v: unknown = ids[j];
      if (typeof v !== 'number' || !Number.isInteger(v))
        throw new TunekitError('E_TYPE', `${where}[${j}] must be an integer, got ${j in ids ? show(v) : 'a hole'}`);
      if ((v < 0 || v >= vocab) && !(allowIgnore && v === -100))
        throw new TunekitError('E_RANGE', `${where}[${j}] = ${v} is outside the vocabulary [0, ${vocab})`);
    }
    return ids as number[];
  };
  for (let i = 0; i < data.length; i++) {
    const e: unknown = data[i];
    const where = `${what}[${i}]`;
    if (!e || typeof e !== 'object') throw new TunekitError('E_TYPE', `${where} must be an example { inputIds, ... }, got ${show(e)}`);
    const ex = e as Example;
    const ids = tokens(ex.inputIds, `${where}.inputIds`, false);
    if (classes !== undefined) {
      if (ids.length === 0) throw new TunekitError('E_ARG', `${where} has no tokens to classify`);
      const v: unknown = ex.label;
      if (typeof v !== 'number' || !Number.isFinite(v))
        throw new TunekitError('E_ARG', `${where} has no numeric label (got ${show(v)}); a classifier needs one for every example`);
      if (classes > 1 && (!Number.isInteger(v) || v < 0 || v >= classes))
        throw new TunekitError('E_RANGE', `${where}.label = ${v} is not a class id in [0, ${classes})`);
    } else if (ex.labels !== undefined) {
      const labels = tokens(ex.labels, `${where}.labels`, true);
      if (labels.length !== ids.length)
        throw new TunekitError('E_SHAPE', `${where}.labels has ${labels.length} entries but inputIds has ${ids.length}`);
    }
  }
  return data as Example[];
}

/** Whether a collated language-model batch has a token to predict (the loss of one with none is 0/0). */
function hasTargets(model: Model, labels: number[] | number[][]): boolean {
  // A causal model predicts position j from j-1, so its first label is never a target; a masked LM's all are.
  const first = model.task === 'causal-lm' ? 1 : 0;
  return (labels as number[][]).some((r) => Array.isArray(r) && r.some((v, j) => j >= first && v !== -100));
}

/** Mean loss over examples, plus accuracy for a classifier or perplexity for a language model. Puts the model in eval mode. */
export async function evaluateModel(
  model: Model,
  data: Example[],
  opts: { batchSize?: number; maxLength?: number; group?: ProcessGroup } = {},
): Promise<EvalResult> {
  checkOptions(opts, ['batchSize', 'maxLength', 'group'], 'evaluate');
  checkExamples(model, data, 'evaluation data');
  const bs = checkNumber(opts.batchSize, 'batchSize', { integer: true, min: 1 }, 16);
  if (opts.maxLength !== undefined) checkNumber(opts.maxLength, 'maxLength', { integer: true, min: 1 });
  await model.eval();
  let lossSum = 0;
  let correct = 0;
  let scored = 0;
  const classify = model.task === 'sequence-classification';
  // With a group, each rank scores every worldSize-th example and the sums are added up over the ranks.
  const mine = opts.group ? data.filter((_, i) => i % opts.group!.worldSize === opts.group!.rank) : data;
  for (let i = 0; i < mine.length; i += bs) {
    const chunk = mine.slice(i, i + bs);
    const batch = collateExamples(model, chunk, opts.maxLength);
    if (!classify) {
      if (!hasTargets(model, batch.labels)) continue;
      // A language model is scored by its loss alone: no [batch, seq, vocab] logits cross into JS.
      lossSum += ((await model.forward(batch, { logits: false })).loss ?? NaN) * chunk.length;
      scored += chunk.length;
      continue;
    }
    scored += chunk.length;
    const out = await model.forward(batch);
    lossSum += (out.loss ?? NaN) * chunk.length;
    const k = out.logits.shape[1];
    chunk.forEach((e, r) => {
      const row = out.logits.data.subarray(r * k, (r + 1) * k);
      let best = 0;
      for (let j = 1; j < k; j++) if (row[j] > row[best]) best = j;
      if (best === e.label) correct++;
    });
  }
  if (opts.group) [lossSum, correct, scored] = await opts.group.allReduce([lossSum, correct, scored]);
  if (scored === 0) throw new TunekitError('E_ARG', 'evaluation data has no token to predict (every text is empty or one token long)');
  const loss = lossSum / scored;
  const r: EvalResult = { loss, examples: scored };
  if (classify) r.accuracy = correct / scored;
  else r.perplexity = Math.exp(loss);
  return r;
}

export class Trainer {
  readonly model: Model;
  readonly options: Required<Pick<TrainerOptions, 'batchSize' | 'epochs' | 'gradAccumulation' | 'seed' | 'keepCheckpoints' | 'resume'>> &
    TrainerOptions;

  constructor(model: Model, options: TrainerOptions) {
    checkOptions(options, TRAINER_OPTIONS, 'Trainer');
    if (!options?.optimizer) throw new TunekitError('E_ARG', 'Trainer needs an optimizer');
    if (options.optimizer.model !== model) throw new TunekitError('E_ARG', 'the optimizer was created for another model');
    this.model = model;
    this.options = { batchSize: 8, epochs: 1, gradAccumulation: 1, seed: 42, keepCheckpoints: 2, resume: true, ...options };
    const o = this.options;
    for (const k of ['batchSize', 'epochs', 'gradAccumulation', 'keepCheckpoints'] as const)
      checkNumber(o[k], k, { integer: true, min: 1 });
    for (const k of ['maxSteps', 'evalEvery', 'checkpointEvery', 'maxLength'] as const)
      if (o[k] !== undefined) checkNumber(o[k], k, { integer: true, min: 1 });
    checkNumber(o.seed, 'seed', { integer: true, min: 0 });
    checkBoolean(o.resume, 'resume', true);
    if (o.checkpointDir !== undefined) checkFolder(o.checkpointDir);
    for (const k of ['onProgress', 'transform', 'onTrained'] as const)
      if (o[k] !== undefined && typeof o[k] !== 'function') throw new TunekitError('E_ARG', `${k} must be a function, got ${show(o[k])}`);
    if (o.gradScaler !== undefined && !(o.gradScaler instanceof GradScaler))
      throw new TunekitError('E_ARG', `gradScaler must be a GradScaler, got ${show(o.gradScaler)}`);
    checkDistributed(o.distributed);
    if (options.maxGradNorm !== undefined) o.optimizer.maxGradNorm = checkNumber(options.maxGradNorm, 'maxGradNorm', { min: 0 });
  }

  /** Pads examples into one batch; language-model labels ignore (-100) the padding. */
  collate(examples: Example[]) {
    return collateExamples(this.model, examples, this.options.maxLength);
  }

  /** With distributed training, every rank scores its share and all get the totals. */
  async evaluate(data: Example[]): Promise<EvalResult> {
    const { batchSize, maxLength } = this.options;
    return evaluateModel(this.model, data, { batchSize, maxLength, ...(this.group ? { group: this.group } : {}) });
  }

  /** The process group of a distributed run, once train() has joined it. */
  private group: ProcessGroup | undefined;

  async train(data: Example[], extra: { evalSet?: Example[] } = {}): Promise<TrainResult> {
    checkOptions(extra, ['evalSet'], 'train');
    checkExamples(this.model, data, 'training data');
    if (extra.evalSet !== undefined) checkExamples(this.model, extra.evalSet, 'evaluation data');
    const o = this.options;
    const opt = o.optimizer;
    const dist = await resolveDistributed(o.distributed);
    const group = dist?.group;
    this.group = group;
    const worldSize = group?.worldSize ?? 1;
    const batches = batchesPerEpoch(data.length, o.batchSize, worldSize);
    const totalSteps = Math.min(o.maxSteps ?? Infinity, o.epochs * stepsPerEpoch(data.length, o.batchSize, o.gradAccumulation, worldSize));
    if (opt.schedule.type !== 'constant' && opt.schedule.totalSteps === undefined) opt.schedule = { ...opt.schedule, totalSteps };

    let state: TrainerState = { step: 0, epoch: 0, batchInEpoch: 0, seed: o.seed, tokens: 0, history: [] };
    if (o.precision !== undefined) await this.model.setPrecision(o.precision);
    const scaler = o.gradScaler ?? (this.model.precision === '16-mixed' ? new GradScaler() : undefined);
    let resumedFrom: number | undefined;
    const latest = o.checkpointDir ? await new CheckpointDir(o.checkpointDir).resumeFrom(o.resume, group) : undefined;
    if (latest) {
      const { kind: _kind, ...saved } = await loadCheckpoint<TrainerState & LoopState>(latest, this.model, o.optimizer, 'trainer');
      state = { ...saved, history: saved.history ?? [] };
      if (scaler && state.scaler) scaler.load(state.scaler);
      resumedFrom = state.step;
    } else {
      await serial(() => addon.manualSeed(o.seed));
    }
    if (dist) await this.model.attachDistributed(dist.group, dist);
    try {
      return await this.loop(data, extra, { state, totalSteps, batchesPerEpoch: batches, scaler, resumedFrom });
    } finally {
      if (dist) await this.model.detachDistributed();
    }
  }

  private async loop(
    data: Example[],
    extra: { evalSet?: Example[] },
    run: { state: TrainerState; totalSteps: number; batchesPerEpoch: number; scaler?: GradScaler; resumedFrom?: number },
  ): Promise<TrainResult> {
    const o = this.options;
    const opt = o.optimizer;
    const group = this.group;
    const { state, totalSteps, batchesPerEpoch, scaler, resumedFrom } = run;
    const classify = this.model.task === 'sequence-classification';
    await this.model.train();
    await opt.zeroGrad();
    const start = Date.now();
    const tokensAtStart = state.tokens;
    let skippedBatches = 0;
    let syncing = true;
    let last: Progress | undefined;
    while (state.step < totalSteps && state.epoch < o.epochs) {
      const epoch = state.epoch;
      const order = group
        ? shardOf(shuffled(data.length, o.seed + epoch), group.rank, group.worldSize)
        : shuffled(data.length, o.seed + epoch);
      while (state.epoch === epoch && state.step < totalSteps) {
        const groupEnd = Math.min(batchesPerEpoch, state.batchInEpoch + o.gradAccumulation);
        const inGroup = groupEnd - state.batchInEpoch;
        const batches = [];
        for (let b = state.batchInEpoch; b < groupEnd; b++) {
          let examples = order.slice(b * o.batchSize, (b + 1) * o.batchSize).map((i) => data[i]);
          if (o.transform) examples = o.transform(examples, batchSeed(o.seed, epoch, b));
          batches.push(this.collate(examples));
        }
        // A language-model batch with no token to predict is skipped; across ranks, a batch index any rank skips is
        // skipped by all, so that every rank runs the same backward passes.
        let usable = batches.map((b) => classify || hasTargets(this.model, b.labels));
        if (group && !classify)
          usable = (
            await group.allReduce(
              usable.map((u) => (u ? 0 : 1)),
              'max',
            )
          ).map((f) => f === 0);
        const lastUsable = usable.lastIndexOf(true);
        let lossSum = 0;
        let done = 0;
        let tokens = 0;
        for (let k = 0; k < batches.length; k++) {
          if (!usable[k]) {
            skippedBatches++;
            continue;
          }
          // DDP's no_sync: gradients are averaged across ranks only in the group's last backward.
          if (group && syncing !== (k === lastUsable)) await this.model.syncGradients((syncing = k === lastUsable));
          const { loss } = await this.model.backward(batches[k], { lossScale: (scaler?.scale ?? 1) / inGroup });
          lossSum += loss;
          done++;
          tokens += batches[k].attentionMask.reduce((a, r) => a + r.reduce((x, y) => x + y, 0), 0);
        }
        state.batchInEpoch = groupEnd;
        if (group) [lossSum, done, tokens] = await group.allReduce([lossSum, done, tokens]);
        state.tokens += tokens;
        const endOfEpoch = () => {
          if (state.batchInEpoch >= batchesPerEpoch) {
            state.epoch++;
            state.batchInEpoch = 0;
          }
        };
        if (done === 0) {
          endOfEpoch(); // every batch of the group was skipped: no step to take
          continue;
        }
        const { gradNorm, lr, skipped } = await opt.step(scaler ? { scaler } : {});
        await opt.zeroGrad();
        state.step++;
        endOfEpoch();
        const elapsedMs = Date.now() - start;
        last = {
          step: state.step,
          totalSteps,
          epoch,
          loss: lossSum / done,
          lr,
          gradNorm,
          tokensPerSecond: (state.tokens - tokensAtStart) / Math.max(1e-3, elapsedMs / 1000),
          elapsedMs,
          ...(scaler ? { lossScale: scaler.scale, skipped: Boolean(skipped) } : {}),
        };
        if (extra.evalSet && o.evalEvery && state.step % o.evalEvery === 0) {
          const ev = await this.evaluate(extra.evalSet);
          last.evalLoss = ev.loss;
          if (ev.accuracy !== undefined) last.evalAccuracy = ev.accuracy;
          await this.model.train();
        }
        state.history.push(last);
        o.onProgress?.(last);
        if (o.checkpointDir && o.checkpointEvery && state.step % o.checkpointEvery === 0) await this.checkpoint(state, scaler);
      }
    }
    if (skippedBatches > 0)
      process.emitWarning(
        `${skippedBatches} batches had no token to predict (empty or one-token texts) and were skipped`,
        'TunekitWarning',
      );
    await this.model.eval();
    if (!group || group.rank === 0) await o.onTrained?.();
    if (group) await group.barrier();
    const wallTimeMs = Date.now() - start;
    const result: TrainResult = {
      steps: state.step,
      epochs: state.epoch,
      trainLoss: last?.loss ?? NaN,
      wallTimeMs,
      tokensPerSecond: (state.tokens - tokensAtStart) / Math.max(1e-3, wallTimeMs / 1000),
      history: state.history,
      ...(resumedFrom !== undefined ? { resumedFrom } : {}),
      skippedBatches,
    };
    if (extra.evalSet) result.eval = await this.evaluate(extra.evalSet);
    return result;
  }

  /**
   * Model, optimizer, RNG and loop position, as checkpoint-<step> in checkpointDir: written by rank 0 alone in a
   * distributed run, the others waiting until it is in place.
   */
  private async checkpoint(state: TrainerState, scaler: GradScaler | undefined): Promise<void> {
    const { checkpointDir, keepCheckpoints, optimizer } = this.options;
    await new CheckpointDir(checkpointDir!, keepCheckpoints).write(
      state.step,
      (dir) => saveCheckpoint(dir, this.model, optimizer, { kind: 'trainer', ...state, ...(scaler ? { scaler: scaler.state() } : {}) }),
      this.group,
    );
  }
}
