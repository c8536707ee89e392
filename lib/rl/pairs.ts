/**
 * Preference pairs (TRL's format: `{ prompt?, chosen, rejected }`), their tokenization for reward models and DPO, and
 * the training loop both share: seeded shuffling, AdamW with a linear schedule, clipping, progress.
 */
import fs from 'node:fs';
import { padRows } from '../batch';
import { builtinSplits } from '../data/builtin';
import { TunekitError } from '../errors';
import type { Model, Precision } from '../model';
import { AdamW } from '../optim';
import { shuffled } from '../random';
import type { Tokenizer } from '../tokenizer';
import { CheckpointDir, checkFolder, loadCheckpoint, LoopState, saveCheckpoint } from '../checkpoint';
import { addon, serial } from '../native';
import { DistributedOptions, ProcessGroup, resolveDistributed, shardOf } from '../distributed';
import { batchesPerEpoch } from '../trainer';
import { checkBoolean, checkNumber, show } from '../validate';

export interface PreferencePair {
  prompt?: string;
  chosen: string;
  rejected: string;
  /** Reward models only: how much the chosen response should outscore the rejected one (TRL's margin column). */
  margin?: number;
}

/** One pair as token ids: a shared prompt and the two completions. */
export interface TokenizedPair {
  promptIds: number[];
  chosenIds: number[];
  rejectedIds: number[];
  margin?: number;
}

/** The statistics of one step, by TRL's names, plus the loss. */
export type PairStats = Record<string, number>;

export interface PairTrainingOptions {
  lr?: number;
  epochs?: number;
  batchSize?: number;
  weightDecay?: number;
  warmupRatio?: number;
  /** Clip the global gradient norm to this (default 1, as TRL); 0 = no clipping. */
  maxGradNorm?: number;
  seed?: number;
  /** Truncate each row (prompt + completion) to this many tokens, keeping the start (TRL's default mode). */
  maxLength?: number;
  /** Turns string pairs into tokens; not needed when the pairs are given as token ids. */
  tokenizer?: Tokenizer;
  /** Train with dropout off (default true, as TRL's RewardTrainer and DPOTrainer). */
  disableDropout?: boolean;
  /** Sets the model's precision for training and evaluation (Model.setPrecision); default: the precision it has. */
  precision?: Precision;
  /** Save a checkpoint every this many steps into checkpointDir (as the Trainer: checkpoint-<step>, latest.json). */
  checkpointEvery?: number;
  checkpointDir?: string;
  /** How many checkpoints to keep (default 2). */
  keepCheckpoints?: number;
  /** Resume from checkpointDir's latest checkpoint when there is one (default true; false refuses a used folder). */
  resume?: boolean;
  onProgress?: (p: { step: number; totalSteps: number; epoch: number; lr: number; gradNorm: number } & PairStats) => void;
  /**
   * Data-parallel across the processes of a group, as the Trainer's `distributed`: each rank takes its share of every
   * epoch's pairs (batchSize is per rank), gradients and statistics are averaged, rank 0 writes the checkpoints.
   */
  distributed?: boolean | ProcessGroup | DistributedOptions;
}

export const PAIR_TRAINING_OPTIONS = [
  'lr',
  'epochs',
  'batchSize',
  'weightDecay',
  'warmupRatio',
  'maxGradNorm',
  'seed',
  'maxLength',
  'tokenizer',
  'disableDropout',
  'precision',
  'checkpointEvery',
  'checkpointDir',
  'keepCheckpoints',
  'resume',
  'onProgress',
  'distributed',
];

/**
 * Token ids of each pair, checked: non-empty, different completions, a prompt that leaves room for them. String pairs
 * are tokenized as TRL does: the prompt with the tokenizer's special tokens, each completion without, then EOS.
 */
export function tokenizePairs(
  pairs: (PreferencePair | TokenizedPair)[],
  tokenizer: Tokenizer | undefined,
  maxLength: number,
  what: string,
): TokenizedPair[] {
  if (!Array.isArray(pairs) || pairs.length === 0) throw new TunekitError('E_ARG', `${what}: pairs must be a non-empty array`);
  return pairs.map((p, i) => {
    const where = `${what}: pair ${i}`;
    if (!p || typeof p !== 'object') throw new TunekitError('E_TYPE', `${where} must be { prompt?, chosen, rejected }, got ${show(p)}`);
    let t: TokenizedPair;
    if ('chosenIds' in p) {
      t = { promptIds: p.promptIds ?? [], chosenIds: p.chosenIds, rejectedIds: p.rejectedIds, margin: p.margin };
      for (const k of ['promptIds', 'chosenIds', 'rejectedIds'] as const) {
        const ids: unknown = t[k];
        if (!Array.isArray(ids) || ids.some((v) => !Number.isInteger(v) || v < 0))
          throw new TunekitError('E_TYPE', `${where}: ${k} must be an array of token ids, got ${show(ids)}`);
      }
    } else {
      if (!tokenizer) throw new TunekitError('E_ARG', `${what}: string pairs need the tokenizer option`);
      for (const k of ['chosen', 'rejected'] as const)
        if (typeof p[k] !== 'string') throw new TunekitError('E_TYPE', `${where}: ${k} must be a string, got ${show(p[k])}`);
      if (p.prompt !== undefined && typeof p.prompt !== 'string')
        throw new TunekitError('E_TYPE', `${where}: prompt must be a string, got ${show(p.prompt)}`);
      const eos = tokenizer.eosTokenId;
      const completion = (text: string) => [...tokenizer.encode(text, { addSpecialTokens: false }), ...(eos !== undefined ? [eos] : [])];
      t = {
        promptIds: p.prompt ? tokenizer.encode(p.prompt) : [],
        chosenIds: p.chosen.trim() === '' ? [] : completion(p.chosen),
        rejectedIds: p.rejected.trim() === '' ? [] : completion(p.rejected),
        margin: p.margin,
      };
    }
    if (t.chosenIds.length === 0 || t.rejectedIds.length === 0)
      throw new TunekitError('E_ARG', `${where}: chosen and rejected must not be empty`);
    if (t.chosenIds.length === t.rejectedIds.length && t.chosenIds.every((v, j) => v === t.rejectedIds[j]))
      throw new TunekitError('E_ARG', `${where}: chosen and rejected are the same, so the pair prefers nothing`);
    if (t.promptIds.length >= maxLength)
      throw new TunekitError(
        'E_RANGE',
        `${where}: the prompt has ${t.promptIds.length} tokens, leaving no room for a completion in ${maxLength}`,
      );
    if (t.margin !== undefined) checkNumber(t.margin, `${where}: margin`);
    return t;
  });
}

/** Rows [chosen...; rejected...] of prompt + completion, right-padded, with a mask of the completion tokens. */
export function collatePairs(model: Model, pairs: TokenizedPair[], maxLength: number) {
  return completionRows(
    model,
    [
      ...pairs.map((p): [number[], number[]] => [p.promptIds, p.chosenIds]),
      ...pairs.map((p): [number[], number[]] => [p.promptIds, p.rejectedIds]),
    ],
    maxLength,
  );
}

/**
 * Rows of prompt + completion (cut to maxLength, keeping the start), right-padded, with a [rows x seq] mask of the
 * completion tokens: what DPO, reward models and GRPO score.
 */
export function completionRows(model: Model, rows: [prompt: number[], completion: number[]][], maxLength?: number) {
  const ids = rows.map(([prompt, completion]) => [...prompt, ...completion].slice(0, maxLength));
  const { inputIds, attentionMask, pad } = padRows(ids, model.padTokenId ?? 0);
  return {
    inputIds,
    attentionMask,
    completionMask: Float32Array.from(
      rows.flatMap(([prompt], i) =>
        pad(
          ids[i].map((_, j) => (j >= prompt.length ? 1 : 0)),
          0,
        ),
      ),
    ),
  };
}

/** The context a model leaves for a row: its position table (rotary families included, as transformers caps them). */
export function contextOf(model: Model, maxLength: number | undefined): number {
  const context = model.dims.maxPositions;
  return maxLength === undefined ? context : Math.min(context, checkNumber(maxLength, 'maxLength', { integer: true, min: 2 }));
}

/**
 * Sets a preference or RLHF trainer's precision on its model. '16-mixed' is refused: these trainers do not scale their
 * losses (the Trainer's GradScaler), and float16 gradients without scaling underflow.
 */
export async function applyPrecision(model: Model, precision: Precision | undefined, who: string): Promise<void> {
  if (precision !== undefined) await model.setPrecision(precision);
  if (model.precision === '16-mixed')
    throw new TunekitError('E_ARG', `${who} trains without loss scaling, which '16-mixed' needs: use 'bf16-mixed'`);
}

/**
 * Trains on pairs: epochs of seeded shuffles, `step(batch)` accumulating one batch's gradients, then AdamW with a
 * linear schedule. The options' defaults are TRL's (no weight decay or warm-up, clipping at 1, dropout off); `lr` is
 * the method's own default learning rate. With checkpointDir, `kind` names the checkpoints (a DPO run does not
 * resume a reward model's). Returns every step's statistics, those before a resume included.
 */
export async function trainOnPairs<T = TokenizedPair>(
  model: Model,
  pairs: T[],
  options: PairTrainingOptions,
  lr: number,
  kind: string,
  step: (batch: T[]) => Promise<PairStats>,
): Promise<{ steps: number; history: PairStats[]; resumedFrom?: number }> {
  const o = {
    lr: options.lr ?? lr,
    epochs: options.epochs ?? 1,
    batchSize: options.batchSize ?? 8,
    weightDecay: options.weightDecay ?? 0,
    warmupRatio: options.warmupRatio ?? 0,
    maxGradNorm: options.maxGradNorm ?? 1,
    seed: options.seed ?? 42,
    disableDropout: options.disableDropout ?? true,
    keepCheckpoints: options.keepCheckpoints ?? 2,
    onProgress: options.onProgress,
  };
  if (model.countParameters({ trainableOnly: true }) === 0) throw new TunekitError('E_STATE', 'the model has no trainable parameters');
  for (const k of ['epochs', 'batchSize', 'seed', 'keepCheckpoints'] as const)
    checkNumber(o[k], k, { integer: true, min: k === 'seed' ? 0 : 1 });
  checkNumber(o.warmupRatio, 'warmupRatio', { min: 0, max: 1 });
  const every =
    options.checkpointEvery === undefined ? Infinity : checkNumber(options.checkpointEvery, 'checkpointEvery', { integer: true, min: 1 });
  const checkpoints =
    options.checkpointDir === undefined ? undefined : new CheckpointDir(checkFolder(options.checkpointDir), o.keepCheckpoints);
  const dist = await resolveDistributed(options.distributed);
  const group = dist?.group;
  const perEpoch = batchesPerEpoch(pairs.length, o.batchSize, group?.worldSize);
  const totalSteps = perEpoch * o.epochs;
  const optimizer = new AdamW(model, {
    lr: o.lr,
    weightDecay: o.weightDecay,
    maxGradNorm: o.maxGradNorm,
    schedule: { type: 'linear', warmupSteps: Math.round(o.warmupRatio * totalSteps), totalSteps },
  });
  let history: PairStats[] = [];
  let resumedFrom: number | undefined;
  await applyPrecision(model, options.precision, kind);
  try {
    const latest = await checkpoints?.resumeFrom(checkBoolean(options.resume, 'resume', true), group);
    if (latest) {
      const state = await loadCheckpoint<LoopState & { history: PairStats[] }>(latest, model, optimizer, kind, (s, file) => {
        if (!Array.isArray(s.history) || s.history.length !== s.step || s.step > totalSteps)
          throw new TunekitError('E_FORMAT', `${file}: step ${s.step} does not fit this run (${totalSteps} steps) or its history`);
      });
      history = state.history;
      resumedFrom = state.step;
    } else {
      await serial(() => addon.manualSeed(o.seed));
    }
    if (dist) await model.attachDistributed(dist.group, dist);
    await model.train(!o.disableDropout);
    await optimizer.zeroGrad();
    for (let at = history.length; at < totalSteps; at++) {
      const epoch = Math.floor(at / perEpoch);
      const b = at % perEpoch;
      const all = shuffled(pairs.length, o.seed + epoch);
      const order = group ? shardOf(all, group.rank, group.worldSize) : all;
      let stats = await step(order.slice(b * o.batchSize, (b + 1) * o.batchSize).map((i) => pairs[i]));
      if (group) stats = await group.average(stats);
      const { gradNorm, lr } = await optimizer.step();
      await optimizer.zeroGrad();
      history.push(stats);
      o.onProgress?.({ ...stats, step: history.length, totalSteps, epoch, lr, gradNorm });
      if (checkpoints && history.length % every === 0)
        await checkpoints.write(
          history.length,
          (dir) => saveCheckpoint(dir, model, optimizer, { kind, step: history.length, history }),
          group,
        );
    }
  } finally {
    if (dist) await model.detachDistributed();
    optimizer.dispose();
    await model.eval();
  }
  return { steps: history.length, history, ...(resumedFrom !== undefined ? { resumedFrom } : {}) };
}

/**
 * The statistics of `run` over the pairs in batches of options.batchSize, with dropout off and at options.precision,
 * each batch weighted by its number of pairs.
 */
export async function evaluatePairs<T = TokenizedPair>(
  model: Model,
  pairs: T[],
  options: PairTrainingOptions,
  run: (batch: T[]) => Promise<PairStats>,
): Promise<PairStats> {
  if (options.precision !== undefined) await model.setPrecision(options.precision);
  await model.eval();
  const bs = options.batchSize ?? 8;
  const out: PairStats = {};
  for (let i = 0; i < pairs.length; i += bs) {
    const batch = pairs.slice(i, i + bs);
    const stats = await run(batch);
    for (const [k, v] of Object.entries(stats)) out[k] = (out[k] ?? 0) + (v * batch.length) / pairs.length;
  }
  return out;
}

/** Preference pairs from a JSONL file, one `{ prompt?, chosen, rejected, margin? }` per line (TRL's format). */
export async function readPairs(file: string): Promise<PreferencePair[]> {
  if (typeof file !== 'string' || !fs.existsSync(file) || !fs.statSync(file).isFile())
    throw new TunekitError('E_FILE', `pairs file ${show(file)} does not exist`);
  const pairs: PreferencePair[] = [];
  const lines = fs
    .readFileSync(file, 'utf8')
    .replace(/^\uFEFF/, '')
    .split('\n');
  lines.forEach((line, i) => {
    if (line.trim() === '') return;
    const where = `${file}:${i + 1}`;
    let raw: unknown;
    try {
      raw = JSON.parse(line);
    } catch (e) {
      throw new TunekitError('E_FORMAT', `${where}: not valid JSON (${(e as Error).message})`);
    }
    const r = raw as Record<string, unknown>;
    if (!r || typeof r !== 'object' || typeof r.chosen !== 'string' || typeof r.rejected !== 'string')
      throw new TunekitError('E_FORMAT', `${where}: expected { "prompt"?, "chosen": string, "rejected": string }`);
    if (r.prompt !== undefined && typeof r.prompt !== 'string') throw new TunekitError('E_FORMAT', `${where}: prompt must be a string`);
    if (r.margin !== undefined && (typeof r.margin !== 'number' || !Number.isFinite(r.margin)))
      throw new TunekitError('E_FORMAT', `${where}: margin must be a finite number`);
    pairs.push({
      chosen: r.chosen,
      rejected: r.rejected,
      ...(r.prompt !== undefined ? { prompt: r.prompt as string } : {}),
      ...(r.margin !== undefined ? { margin: r.margin as number } : {}),
    });
  });
  if (pairs.length === 0) throw new TunekitError('E_FORMAT', `${file}: no pairs`);
  return pairs;
}

/**
 * Synthetic preferences from the built-in sentiment sentences: a positive review sentence preferred over a negative
 * one, paired in a seeded order. They stand in for human rankings; they are not any.
 */
export function sentimentPairs(split: 'train' | 'validation' | 'test', seed = 0): PreferencePair[] {
  const rows = builtinSplits('sentiment-sentences')[split].rows;
  const pos = rows.filter((r) => r.label === 1).map((r) => r.text!);
  const neg = rows.filter((r) => r.label === 0).map((r) => r.text!);
  const p = shuffled(pos.length, seed).map((i) => pos[i]);
  const n = shuffled(neg.length, seed + 1).map((i) => neg[i]);
  return Array.from({ length: Math.min(p.length, n.length) }, (_, i) => ({ chosen: p[i], rejected: n[i] }));
}
