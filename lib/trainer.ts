/** The managed training loop: batching, accumulation, clipping, schedules, evaluation, checkpoints and resume. */
import fs from 'node:fs';
import path from 'node:path';
import { padRows } from './batch';
import { TunekitError } from './errors';
import type { Model } from './model';
import { addon, serial } from './native';
import { shuffled } from './random';
import type { Optimizer } from './optim';
import { writeJsonAtomic } from './safetensors';

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
  /** Resume from checkpointDir's latest checkpoint when there is one (default true). */
  resume?: boolean;
  /**
   * Rewrites each training batch before it is padded (dynamic masking for a masked LM, augmentation). It gets a seed
   * derived from the run's seed, the epoch and the batch index, so a resumed run sees the same batches.
   */
  transform?: (examples: Example[], seed: number) => Example[];
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
}

interface TrainerState {
  step: number;
  epoch: number;
  batchInEpoch: number;
  seed: number;
  rng: string;
  tokens: number;
  history: Progress[];
}

function batchSeed(seed: number, epoch: number, batch: number): number {
  return (Math.imul(seed ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(epoch + 1, 0xc2b2ae35) ^ Math.imul(batch + 1, 0x27d4eb2f)) >>> 0;
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
      if (typeof e.label !== 'number') throw new TunekitError('E_ARG', `example ${i} has no numeric label`);
      return e.label;
    });
  } else {
    labels = examples.map((e, i) => padTo(cut(e.labels ?? e.inputIds), -100).map((v, j) => (attentionMask[i][j] ? v : -100)));
  }
  return { inputIds, attentionMask, labels };
}

/** Mean loss over examples, plus accuracy for a classifier or perplexity for a language model. Puts the model in eval mode. */
export async function evaluateModel(
  model: Model,
  data: Example[],
  opts: { batchSize?: number; maxLength?: number } = {},
): Promise<EvalResult> {
  if (!Array.isArray(data) || data.length === 0) throw new TunekitError('E_ARG', 'evaluation data must be a non-empty array of examples');
  const bs = opts.batchSize ?? 16;
  await model.eval();
  let lossSum = 0;
  let correct = 0;
  const classify = model.task === 'sequence-classification';
  for (let i = 0; i < data.length; i += bs) {
    const chunk = data.slice(i, i + bs);
    const batch = collateExamples(model, chunk, opts.maxLength);
    if (!classify) {
      // A language model is scored by its loss alone: no [batch, seq, vocab] logits cross into JS.
      lossSum += ((await model.forward(batch, { logits: false })).loss ?? NaN) * chunk.length;
      continue;
    }
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
  const loss = lossSum / data.length;
  const r: EvalResult = { loss, examples: data.length };
  if (classify) r.accuracy = correct / data.length;
  else r.perplexity = Math.exp(loss);
  return r;
}

export class Trainer {
  readonly model: Model;
  readonly options: Required<Pick<TrainerOptions, 'batchSize' | 'epochs' | 'gradAccumulation' | 'seed' | 'keepCheckpoints' | 'resume'>> &
    TrainerOptions;

  constructor(model: Model, options: TrainerOptions) {
    if (!options?.optimizer) throw new TunekitError('E_ARG', 'Trainer needs an optimizer');
    this.model = model;
    this.options = { batchSize: 8, epochs: 1, gradAccumulation: 1, seed: 42, keepCheckpoints: 2, resume: true, ...options };
    for (const k of ['batchSize', 'epochs', 'gradAccumulation'] as const) {
      const v = this.options[k];
      if (!Number.isInteger(v) || v < 1) throw new TunekitError('E_ARG', `${k} must be a positive integer, got ${v}`);
    }
    if (options.maxGradNorm !== undefined) this.options.optimizer.maxGradNorm = options.maxGradNorm;
  }

  /** Pads examples into one batch; language-model labels ignore (-100) the padding. */
  collate(examples: Example[]) {
    return collateExamples(this.model, examples, this.options.maxLength);
  }

  async evaluate(data: Example[]): Promise<EvalResult> {
    return evaluateModel(this.model, data, { batchSize: this.options.batchSize, maxLength: this.options.maxLength });
  }

  async train(data: Example[], extra: { evalSet?: Example[] } = {}): Promise<TrainResult> {
    if (!Array.isArray(data) || data.length === 0) throw new TunekitError('E_ARG', 'training data must be a non-empty array of examples');
    const o = this.options;
    const opt = o.optimizer;
    const batchesPerEpoch = Math.ceil(data.length / o.batchSize);
    const stepsPerEpoch = Math.ceil(batchesPerEpoch / o.gradAccumulation);
    const totalSteps = Math.min(o.maxSteps ?? Infinity, o.epochs * stepsPerEpoch);
    if (opt.schedule.type !== 'constant' && opt.schedule.totalSteps === undefined) opt.schedule = { ...opt.schedule, totalSteps };

    let state: TrainerState = { step: 0, epoch: 0, batchInEpoch: 0, seed: o.seed, rng: '', tokens: 0, history: [] };
    let resumedFrom: number | undefined;
    const latest = o.checkpointDir ? readLatest(o.checkpointDir) : undefined;
    if (latest && o.resume) {
      state = await this.restore(latest);
      resumedFrom = state.step;
    } else {
      await serial(() => addon.manualSeed(o.seed));
    }

    await this.model.train();
    await opt.zeroGrad();
    const start = Date.now();
    const tokensAtStart = state.tokens;
    let windowLoss = 0;
    let windowBatches = 0;
    let last: Progress | undefined;
    while (state.step < totalSteps && state.epoch < o.epochs) {
      const epoch = state.epoch;
      const order = shuffled(data.length, o.seed + epoch);
      while (state.epoch === epoch && state.step < totalSteps) {
        const groupEnd = Math.min(batchesPerEpoch, state.batchInEpoch + o.gradAccumulation);
        const inGroup = groupEnd - state.batchInEpoch;
        for (; state.batchInEpoch < groupEnd; state.batchInEpoch++) {
          const idx = order.slice(state.batchInEpoch * o.batchSize, (state.batchInEpoch + 1) * o.batchSize);
          let examples = idx.map((i) => data[i]);
          if (o.transform) examples = o.transform(examples, batchSeed(o.seed, epoch, state.batchInEpoch));
          const batch = this.collate(examples);
          const { loss } = await this.model.backward(batch, { lossScale: 1 / inGroup });
          windowLoss += loss;
          windowBatches++;
          state.tokens += batch.attentionMask.reduce((a, r) => a + r.reduce((x, y) => x + y, 0), 0);
        }
        const { gradNorm, lr } = await opt.step();
        await opt.zeroGrad();
        state.step++;
        if (state.batchInEpoch >= batchesPerEpoch) {
          state.epoch++;
          state.batchInEpoch = 0;
        }
        const elapsedMs = Date.now() - start;
        last = {
          step: state.step,
          totalSteps,
          epoch,
          loss: windowLoss / windowBatches,
          lr,
          gradNorm,
          tokensPerSecond: (state.tokens - tokensAtStart) / Math.max(1e-3, elapsedMs / 1000),
          elapsedMs,
        };
        windowLoss = 0;
        windowBatches = 0;
        if (extra.evalSet && o.evalEvery && state.step % o.evalEvery === 0) {
          const ev = await this.evaluate(extra.evalSet);
          last.evalLoss = ev.loss;
          if (ev.accuracy !== undefined) last.evalAccuracy = ev.accuracy;
          await this.model.train();
        }
        state.history.push(last);
        o.onProgress?.(last);
        if (o.checkpointDir && o.checkpointEvery && state.step % o.checkpointEvery === 0) await this.checkpoint(state);
      }
    }
    await this.model.eval();
    const wallTimeMs = Date.now() - start;
    const result: TrainResult = {
      steps: state.step,
      epochs: state.epoch,
      trainLoss: last?.loss ?? NaN,
      wallTimeMs,
      tokensPerSecond: (state.tokens - tokensAtStart) / Math.max(1e-3, wallTimeMs / 1000),
      history: state.history,
      ...(resumedFrom !== undefined ? { resumedFrom } : {}),
    };
    if (extra.evalSet) result.eval = await this.evaluate(extra.evalSet);
    return result;
  }

  /** Model, optimizer, RNG and loop position go into a temporary folder that is renamed into place whole. */
  private async checkpoint(state: TrainerState): Promise<void> {
    const dir = this.options.checkpointDir!;
    fs.mkdirSync(dir, { recursive: true });
    const name = `checkpoint-${state.step}`;
    const tmp = path.join(dir, `.tmp-${name}-${process.pid}`);
    fs.rmSync(tmp, { recursive: true, force: true });
    await this.model.savePretrained(tmp, { includeAdapters: true });
    await this.options.optimizer.save(path.join(tmp, 'optimizer.safetensors'));
    const saved: TrainerState = { ...state, rng: (await serial(() => addon.rngState())).toString('base64') };
    await writeJsonAtomic(path.join(tmp, 'trainer_state.json'), { ...saved, optimizerSteps: this.options.optimizer.stepCount });
    const final = path.join(dir, name);
    fs.rmSync(final, { recursive: true, force: true });
    fs.renameSync(tmp, final);
    await writeJsonAtomic(path.join(dir, 'latest.json'), { checkpoint: name, step: state.step });
    const old = fs
      .readdirSync(dir)
      .filter((f) => /^checkpoint-\d+$/.test(f))
      .sort((a, b) => Number(a.split('-')[1]) - Number(b.split('-')[1]));
    for (const f of old.slice(0, Math.max(0, old.length - this.options.keepCheckpoints))) {
      fs.rmSync(path.join(dir, f), { recursive: true, force: true });
    }
  }

  private async restore(dir: string): Promise<TrainerState> {
    let s: TrainerState & { optimizerSteps: number };
    try {
      s = JSON.parse(fs.readFileSync(path.join(dir, 'trainer_state.json'), 'utf8'));
    } catch (e) {
      throw new TunekitError('E_FORMAT', `${dir}/trainer_state.json: ${(e as Error).message}`);
    }
    await this.model.loadWeights(dir);
    await this.options.optimizer.load(path.join(dir, 'optimizer.safetensors'), s.optimizerSteps);
    await serial(() => addon.setRngState(Buffer.from(s.rng, 'base64')));
    return {
      step: s.step,
      epoch: s.epoch,
      batchInEpoch: s.batchInEpoch,
      seed: s.seed,
      rng: '',
      tokens: s.tokens,
      history: s.history ?? [],
    };
  }
}

function readLatest(dir: string): string | undefined {
  const f = path.join(dir, 'latest.json');
  if (!fs.existsSync(f)) return undefined;
  try {
    const name = JSON.parse(fs.readFileSync(f, 'utf8')).checkpoint;
    const d = path.join(dir, name);
    return fs.existsSync(d) ? d : undefined;
  } catch (e) {
    throw new TunekitError('E_FORMAT', `${f}: ${(e as Error).message}`);
  }
}
