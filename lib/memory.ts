/**
 * A job's activation memory, estimated from the model's dims before it runs, so that a batch too big for the machine
 * is refused with E_MEMORY instead of the kernel killing the process minutes later.
 */
import os from 'node:os';
import { TunekitError } from './errors';
import type { Dims } from './families';
import { checkNumber } from './validate';

export type Job = 'forward' | 'backward' | 'generate';

const FLOAT = 4;
const GiB = 1024 ** 3;

/**
 * Bytes a job holds at its peak beyond the weights: an upper bound, not a prediction. The terms, for T = batch x seq
 * tokens: logits and their log-softmax (and gradient, in backward); per layer, the hidden-width and MLP-width
 * activations autograd saves (backward) or one layer's transients (forward); attention scores as the unfused kernel
 * holds them; for generation, the key/value cache.
 */
export function activationBytes(d: Dims, job: Job, batch: number, seq: number, newTokens = 0): number {
  const tokens = batch * seq;
  const scores = batch * d.numHeads * seq * seq;
  if (job === 'generate') {
    const total = seq + newTokens;
    const cache = batch * total * d.numLayers * 2 * d.numKvHeads * d.headDim;
    return FLOAT * (cache + tokens * (4 * d.hiddenSize + 2 * d.intermediateSize) + 2 * scores + 2 * batch * d.vocabSize);
  }
  if (job === 'forward') return FLOAT * (2 * tokens * d.vocabSize + tokens * (4 * d.hiddenSize + 2 * d.intermediateSize) + 2 * scores);
  const perLayer = tokens * (12 * d.hiddenSize + 3 * d.intermediateSize) + scores;
  return FLOAT * (3 * tokens * d.vocabSize + d.numLayers * perLayer);
}

/** Bytes of a model's float32 weights, an upper bound from its dims (an untied output head counted). */
export function weightBytes(d: Dims): number {
  const h = d.hiddenSize;
  const attention = h * (d.numHeads + 2 * d.numKvHeads) * d.headDim + d.numHeads * d.headDim * h;
  const perLayer = attention + 3 * h * d.intermediateSize + 8 * h;
  return FLOAT * (2 * d.vocabSize * h + (d.maxPositions + d.typeVocabSize) * h + d.numLayers * perLayer);
}

/** Refuses to create a model whose weights alone exceed the limit (a config with a stray huge dimension). */
export function checkWeights(d: Dims): void {
  const need = weightBytes(d);
  const { bytes, source } = memoryLimit();
  if (need <= bytes) return;
  throw new TunekitError(
    'E_MEMORY',
    `a model of these dimensions needs about ${(need / GiB).toFixed(2)} GiB for its weights, more than the ${(bytes / GiB).toFixed(2)} GiB ` +
      `${source} allows (set TUNEKIT_MAX_MEMORY_MB to change the limit); check config.json's sizes`,
  );
}

/** The memory a job may use: TUNEKIT_MAX_MEMORY_MB when set, else what the OS (and a cgroup limit) says is available. */
export function memoryLimit(): { bytes: number; source: string } {
  const env = process.env.TUNEKIT_MAX_MEMORY_MB;
  if (env !== undefined && env !== '') {
    const mb = checkNumber(Number(env), `TUNEKIT_MAX_MEMORY_MB (${JSON.stringify(env)})`, { min: 0, minExclusive: true });
    return { bytes: mb * 1024 * 1024, source: 'TUNEKIT_MAX_MEMORY_MB' };
  }
  const constrained = process.constrainedMemory?.() ?? 0;
  const free = os.freemem();
  if (constrained > 0 && constrained < free + process.memoryUsage.rss())
    return { bytes: Math.max(0, constrained - process.memoryUsage.rss()), source: 'the cgroup memory limit' };
  return { bytes: free, source: "the machine's available memory" };
}

/** Refuses a job whose estimate exceeds the limit, naming both and what to lower. */
export function checkMemory(d: Dims, job: Job, batch: number, seq: number, newTokens = 0): void {
  const need = activationBytes(d, job, batch, seq, newTokens);
  const { bytes, source } = memoryLimit();
  if (need <= bytes) return;
  const gib = (b: number) => `${(b / GiB).toFixed(2)} GiB`;
  const lower =
    job === 'generate'
      ? 'generate fewer sequences at once or fewer new tokens'
      : job === 'backward'
        ? 'lower the batch size (gradAccumulation keeps the effective batch) or the sequence length (maxLength)'
        : 'lower the batch size or the sequence length';
  throw new TunekitError(
    'E_MEMORY',
    `this ${job} of ${batch} x ${seq} tokens needs about ${gib(need)} of activation memory, more than the ${gib(bytes)} ` +
      `${source} allows (set TUNEKIT_MAX_MEMORY_MB to change the limit); ${lower}`,
  );
}
