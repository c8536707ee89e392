/**
 * The one place that loads the addon and declares its raw signatures. Every compute call goes through `serial`,
 * so one heavy job runs at a time per process: two cores are never oversubscribed, and calls on one model that a
 * caller forgot to await run one after another instead of racing on the same tensors.
 */
import path from 'node:path';
import { fromNative } from './errors';

export type Handle = { readonly __brand: 'tunekit-handle' };

/** The core's ModelSpec, field for field (native/addon/bind_model.cc reads exactly these; lib/families.ts fills them). */
export interface RawSpec {
  family: string;
  task: string;
  device: string;
  dtype: string;
  vocabSize: number;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  intermediateSize: number;
  maxPositions: number;
  typeVocabSize: number;
  numLabels: number;
  padTokenId: number;
  normEps: number;
  ropeTheta: number;
  embdDropout: number;
  attnDropout: number;
  residDropout: number;
  classifierDropout: number;
  activation: string;
  tieWordEmbeddings: boolean;
  attentionBias: boolean;
  attentionOutBias: boolean;
  mlpBias: boolean;
  scaleAttnByInverseLayerIdx: boolean;
  initSeed: number;
}

/** A PEFT method's settings for the core: plain values only; the method (native/core/peft/<method>.cpp) reads them. */
export type RawAdapterSpec = { adapter: string; modulesToSave?: string[]; seed?: number } & Record<
  string,
  number | boolean | string | string[] | number[] | undefined
>;

/** A preference/RLHF objective for the core (native/core/rl/objectives.cpp reads the fields of the one named). */
export interface RawObjective {
  name: string;
  numbers?: Record<string, number>;
  strings?: Record<string, string>;
  arrays?: Record<string, Float32Array>;
}

export interface RawParam {
  name: string;
  dtype: string;
  shape: number[];
  numel: number;
  trainable: boolean;
  hasGrad?: boolean;
}
export interface RawBatch {
  batch: number;
  seq: number;
  inputIds: Int32Array;
  attentionMask?: Int32Array;
  labels?: Float32Array;
  labelsShape?: number[];
}
export interface RawEntry {
  name: string;
  dtype: string;
  shape: number[];
  begin: number;
  end: number;
}
export interface FloatArray {
  data: Float32Array;
  shape: number[];
}
export interface RawOptimizerSpec {
  kind: 'adamw' | 'sgd';
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  momentum: number;
  dampening: number;
  nesterov: boolean;
  noDecay: string[];
}
export interface RawGenerate {
  maxNewTokens: number;
  temperature: number;
  topK: number;
  topP: number;
  doSample: boolean;
  eosTokenId: number;
  seed: number;
  useCache?: boolean;
}

export interface Addon {
  createModel(spec: RawSpec): Promise<Handle>;
  parameters(m: Handle): Promise<RawParam[]>;
  setTrainable(m: Handle, names: string[], trainable: boolean): Promise<void>;
  setTraining(m: Handle, training: boolean): Promise<void>;
  setAutocast(m: Handle, dtype: 'float32' | 'bfloat16' | 'float16'): Promise<void>;
  readSafetensorsHeader(path: string): {
    tensors: { name: string; dtype: string; shape: number[]; begin: number; end: number }[];
    metadata: Record<string, string>;
  };
  loadSafetensors(m: Handle, path: string, entries: RawEntry[]): Promise<void>;
  /** dtype: floating tensors cast to it; absent: each as stored. */
  saveSafetensors(m: Handle, path: string, names: string[], keys?: string[], dtype?: 'float32' | 'bfloat16'): Promise<void>;
  forward(m: Handle, b: RawBatch, wantLogits: boolean): Promise<{ logits?: FloatArray; loss?: number }>;
  backward(m: Handle, b: RawBatch, lossScale: number): Promise<number>;
  embed(m: Handle, b: RawBatch, pooling: string): Promise<FloatArray>;
  generate(m: Handle, b: RawBatch, g: RawGenerate): Promise<number[][]>;
  logLikelihood(m: Handle, prompt: Int32Array, continuations: Int32Array, lengths: number[]): Promise<number[]>;
  decodeOpen(m: Handle, adapter: string): Promise<Handle>;
  decodeStep(m: Handle, sessions: Handle[], tokens: Int32Array, lengths: number[]): Promise<FloatArray>;
  zeroGrad(m: Handle): Promise<void>;
  gradNorm(m: Handle): Promise<number>;
  dispose(h: Handle): void;
  manualSeed(seed: number): Promise<void>;
  rngState(): Promise<Buffer>;
  setRngState(state: Buffer): Promise<void>;
  cudaAvailable(): boolean;
  createOptimizer(m: Handle, spec: RawOptimizerSpec): Promise<Handle>;
  /** Returns the gradient norm; with skipNonFinite a non-finite norm skips the update instead of throwing E_NAN. */
  optimizerStep(o: Handle, lr: number, maxNorm: number, gradScale: number, skipNonFinite: boolean): Promise<number>;
  optimizerSave(o: Handle, path: string): Promise<void>;
  optimizerLoad(o: Handle, path: string, entries: RawEntry[], step: number): Promise<void>;
  benchMatmul(n: number, iters: number, dtype: 'float32' | 'bfloat16'): Promise<number>;
  torchInfo(): string;
  emptyCpuCache(): Promise<void>;
  /** Adds an adapter of `method` (not active yet); resolves to the names of the parameters it created. */
  addAdapter(m: Handle, method: string, spec: RawAdapterSpec): Promise<string[]>;
  setAdapter(m: Handle, name: string): Promise<void>;
  mergeAdapter(m: Handle, merge: boolean): Promise<void>;
  deleteAdapter(m: Handle, name: string): Promise<void>;
  objectiveStep(m: Handle, b: RawBatch, objective: RawObjective, lossScale: number, backward: boolean): Promise<Record<string, number>>;
  tokenLogprobs(m: Handle, b: RawBatch, temperature: number): Promise<FloatArray>;
  addValueHead(m: Handle): Promise<void>;
  tokenLogprobsAndValues(m: Handle, b: RawBatch, temperature: number): Promise<{ logprobs: FloatArray; values: FloatArray }>;
  ppoAdvantages(spec: {
    rows: number;
    length: number;
    logprobs: Float32Array;
    refLogprobs: Float32Array;
    values: Float32Array;
    mask: Float32Array;
    scores: Float32Array;
    klCoef: number;
    gamma: number;
    lam: number;
    whitenRewards: boolean;
  }): Promise<{ rewards: Float32Array; advantages: Float32Array; returns: Float32Array; kl: number; nonScoreReward: number }>;
  initProcessGroup(spec: {
    masterAddr: string;
    masterPort: number;
    rank: number;
    worldSize: number;
    timeoutSeconds: number;
    backend: string;
    runId: string;
    agentStore: boolean;
  }): Promise<Handle>;
  allReduce(g: Handle, values: Float64Array, op: 'sum' | 'max' | 'min'): Promise<Float64Array>;
  broadcastBytes(g: Handle, bytes: Uint8Array): Promise<Uint8Array>;
  barrier(g: Handle): Promise<void>;
  ddpAttach(m: Handle, g: Handle, spec: { bucketMb: number; findUnusedParameters?: boolean }): Promise<void>;
  ddpDetach(m: Handle): Promise<void>;
  ddpSetSync(m: Handle, sync: boolean): Promise<void>;
  logRegFit(
    x: Float32Array,
    n: number,
    dim: number,
    y: Int32Array,
    classes: number,
    spec: { C?: number; maxIter?: number; tol?: number },
  ): Promise<{ weights: Float64Array; bias: Float64Array; rows: number; iterations: number; loss: number; converged: boolean }>;
}

function load(): Addon {
  const root = path.resolve(__dirname, '..');
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return require('node-gyp-build')(root) as Addon;
  } catch (e) {
    // The addon loaded but refused its environment (TUNEKIT_CPU_CACHE_MB): say that, not "not built".
    if ((e as { code?: string }).code === 'E_ARG') throw fromNative(e);
    throw fromNative(
      Object.assign(
        new Error(
          `tunekit: the native addon is not built (${(e as Error).message.split('\n')[0]}). Run \`npm install\` or \`npm run build\`.`,
        ),
        { code: 'E_NATIVE' },
      ),
    );
  }
}

export const addon: Addon = load();

let tail: Promise<unknown> = Promise.resolve();

/** Runs `job` after every job queued before it; errors from the addon become TunekitErrors. */
export function serial<T>(job: () => Promise<T>): Promise<T> {
  const run = tail
    .then(() => job())
    .catch((e) => {
      throw fromNative(e);
    });
  tail = run.catch(() => undefined);
  return run;
}

/** Synchronous addon calls still map their errors. */
export function sync<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw fromNative(e);
  }
}
