/** A Hugging Face model (any family of lib/families.ts) whose weights live in the native core. */
import fs from 'node:fs';
import path from 'node:path';
import { BatchInput, packBatch, tokenRows } from './batch';
import { TunekitError } from './errors';
import type { ProcessGroup } from './distributed';
import { defaultTask, Dims, Family, familyOf, firstId, HFConfig, ModelType, numLabelsOf, Pooling, Task, toSpec } from './families';
import { FloatArray, Handle, RawObjective, RawParam, RawSpec, addon, serial, sync } from './native';
import { AdapterConfig, AdapterFile, AdapterRecord, methodForPeftType, PeftMethod, Resolved } from './peft/method';
import { checkMemory, checkWeights, Job } from './memory';
import { atomicWrite, entry, readCheckpoint, readHeader, readJsonFile, writeJsonAtomic } from './safetensors';
import { checkBoolean, checkChoice, checkNumber, checkOptions, show } from './validate';

export type Device = 'cpu' | 'cuda';
export type DType = 'float32' | 'bfloat16';

/**
 * How a model computes, named as Lightning names it. '32-true': everything in float32. 'bf16-mixed': float32 weights,
 * gradients and optimizer state; each forward runs under libtorch's autocast (torch.autocast's op lists: products
 * and attention in bfloat16, losses in float32). 'bf16-true': weights in bfloat16 (PEFT adapters stay float32), under
 * the same autocast. '16-mixed': float16 autocast, CUDA only.
 */
export type Precision = '32-true' | 'bf16-mixed' | 'bf16-true' | '16-mixed';
export const PRECISIONS: readonly Precision[] = ['32-true', 'bf16-mixed', 'bf16-true', '16-mixed'];

export interface FromPretrainedOptions {
  task?: Task;
  numLabels?: number;
  device?: Device;
  /** The weights' dtype; 'bfloat16' is precision 'bf16-true'. */
  dtype?: DType;
  /** Default '32-true' (or 'bf16-true' with dtype 'bfloat16'). */
  precision?: Precision;
  /** Seeds the initialisation of weights the checkpoint lacks (e.g. a new classification head). */
  seed?: number;
  /** Entries that override config.json's (as transformers' from_pretrained keyword arguments), e.g. { dropout: 0 }. */
  config?: HFConfig;
  /** Class names of a classification head, saved as config.json's id2label (default: the config's, or LABEL_i). */
  labelNames?: string[];
}

export interface ForwardOutput {
  /** Per-token logits for language models, per-sequence for classification; for feature extraction, the last hidden state. */
  logits: FloatArray;
  loss?: number;
}

const FROM_PRETRAINED_OPTIONS = ['task', 'numLabels', 'device', 'dtype', 'precision', 'seed', 'config', 'labelNames'];
const GENERATE_OPTIONS = ['maxNewTokens', 'temperature', 'topK', 'topP', 'seed', 'eosTokenId', 'attentionMask', 'useCache'];

export interface GenerateOptions {
  maxNewTokens?: number;
  /** 0 or absent: greedy decoding. Above 0: sampling at this temperature. */
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
  eosTokenId?: number;
  attentionMask?: number[][];
  /** Keep keys/values between steps (default true); false recomputes the whole sequence each step. */
  useCache?: boolean;
}

export type { Pooling };

export class Model {
  readonly family: Family;
  readonly modelType: ModelType;
  readonly task: Task;
  readonly config: HFConfig;
  readonly device: Device;
  readonly dtype: DType;
  /** Parameters the checkpoint did not provide and that were freshly initialised (as transformers warns). */
  readonly newlyInitialized: string[] = [];
  /** Head tensors of the checkpoint this task does not use (e.g. a classifier's, loaded as a base model; transformers warns). */
  readonly unusedWeights: string[] = [];
  private handle: Handle | null;
  private params: RawParam[];
  private spec: RawSpec;
  private givenLabels?: string[];
  private adapterInfo = new Map<string, AdapterRecord>();
  private active: string | null = null;
  private merged = false;
  private training = false;
  private computePrecision: Precision = '32-true';
  /** Native handles that hold this model's tensors (optimizers): disposed with it. */
  private dependents = new Set<{ dispose(): void }>();

  private constructor(handle: Handle, spec: RawSpec, config: HFConfig, params: RawParam[]) {
    this.handle = handle;
    this.spec = spec;
    this.config = config;
    this.params = params;
    this.family = familyOf(config, 'config');
    this.modelType = this.family.modelType;
    this.task = spec.task as Task;
    this.device = spec.device as Device;
    this.dtype = spec.dtype as DType;
  }

  static async fromPretrained(dir: string, options: FromPretrainedOptions = {}): Promise<Model> {
    checkOptions(options, FROM_PRETRAINED_OPTIONS, 'Model.fromPretrained');
    const config = { ...readConfig(dir), ...(options.config ?? {}) };
    const spec = resolveSpec(config, options, path.join(dir, 'config.json'));
    const headers = readCheckpoint(dir);
    if (spec.device === 'cpu') checkWeights(spec);
    const handle = await serial(() => addon.createModel(spec));
    const model = new Model(handle, spec, config, []);
    model.givenLabels = options.labelNames;
    try {
      model.params = await serial(() => addon.parameters(handle));
      model.newlyInitialized.push(...(await model.loadFrom(headers, dir)));
      await model.setPrecision(precisionOf(options));
    } catch (e) {
      model.dispose();
      throw e;
    }
    return model;
  }

  /** Loads the weights of a checkpoint folder (e.g. a Trainer checkpoint) into this model. */
  async loadWeights(dir: string): Promise<void> {
    const missing = await this.loadFrom(readCheckpoint(dir), dir);
    if (missing.length) throw new TunekitError('E_FORMAT', `${dir}: checkpoint lacks ${missing.join(', ')}`);
  }

  /**
   * A model with fresh weights from a Hugging Face config (normal(0, 0.02) matrices, unit norms, zero biases),
   * seeded by `options.seed`: the starting point for pretraining.
   */
  static async fromConfig(config: HFConfig, options: FromPretrainedOptions = {}): Promise<Model> {
    checkOptions(options, FROM_PRETRAINED_OPTIONS, 'Model.fromConfig');
    if (!config || typeof config !== 'object' || Array.isArray(config))
      throw new TunekitError('E_CONFIG', 'Model.fromConfig needs a config object (as config.json holds)');
    config = { ...config, ...(options.config ?? {}) };
    const spec = resolveSpec(config, options, 'config');
    if (spec.device === 'cpu') checkWeights(spec);
    const handle = await serial(() => addon.createModel(spec));
    const model = new Model(handle, spec, { ...config }, await serial(() => addon.parameters(handle)));
    model.givenLabels = options.labelNames;
    await model.setPrecision(precisionOf(options));
    return model;
  }

  /** Maps checkpoint names to ours as transformers does: with or without the backbone's prefix. Returns the head
   * parameters the checkpoint lacks; a missing backbone tensor is an error. */
  private async loadFrom(headers: ReturnType<typeof readCheckpoint>, dir: string): Promise<string[]> {
    const missing: string[] = [];
    const used = new Set<string>();
    const byFile = new Map<string, ReturnType<typeof entry>[]>();
    for (const p of this.params) {
      const candidates = this.withAndWithoutBackbone(p.name);
      let found = false;
      for (const h of headers) {
        const key = candidates.find((c) => h.tensors.has(c));
        if (key === undefined) continue;
        const list = byFile.get(h.file) ?? [];
        list.push(entry(p.name, h.tensors.get(key)!));
        byFile.set(h.file, list);
        used.add(key);
        found = true;
        break;
      }
      if (found) continue;
      const isHead =
        (this.task !== 'feature-extraction' && !p.name.startsWith(this.family.backbone)) || Boolean(this.family.optional?.test(p.name));
      if (!isHead) throw new TunekitError('E_FORMAT', `${dir}: checkpoint lacks tensor '${p.name}' that config.json implies`);
      missing.push(p.name);
    }
    this.checkUnused(headers, used, dir);
    for (const [file, entries] of byFile) {
      await serial(() => addon.loadSafetensors(this.h, file, entries));
    }
    return missing;
  }

  /**
   * A checkpoint tensor no parameter takes is an error when it belongs to the backbone (config.json disagrees with
   * the weights, e.g. fewer layers); an unused head (a classifier loaded as a base model) is listed in unusedWeights.
   */
  private checkUnused(headers: ReturnType<typeof readCheckpoint>, used: Set<string>, dir: string): void {
    const prefix = this.family.backbone;
    const keys = headers.flatMap((h) => [...h.tensors.keys()]);
    const prefixed = keys.some((k) => k.startsWith(prefix));
    const unused = keys.filter((k) => !used.has(k) && !this.family.ignoreUnexpected?.test(k));
    const backbone = unused.filter((k) => !prefixed || k.startsWith(prefix));
    if (backbone.length)
      throw new TunekitError(
        'E_FORMAT',
        `${dir}: the checkpoint holds ${backbone.length} backbone tensors config.json does not account for (${backbone.slice(0, 3).join(', ')}${backbone.length > 3 ? ', ...' : ''}); does config.json (e.g. its layer count) match the weights?`,
      );
    this.unusedWeights.splice(0, this.unusedWeights.length, ...unused);
  }

  private get h(): Handle {
    if (!this.handle) throw new TunekitError('E_DISPOSED', 'this model was disposed');
    return this.handle;
  }

  get vocabSize(): number {
    return this.spec.vocabSize;
  }
  /** The model's shape, normalised across the families' config spellings. */
  get dims(): Dims {
    const { vocabSize, hiddenSize, numLayers, numHeads, numKvHeads, headDim, intermediateSize, maxPositions, typeVocabSize } = this.spec;
    return { vocabSize, hiddenSize, numLayers, numHeads, numKvHeads, headDim, intermediateSize, maxPositions, typeVocabSize };
  }
  get numLabels(): number {
    return this.spec.numLabels;
  }
  /** Class names, index = label id (from the options, the config's id2label, or LABEL_i). */
  get labelNames(): string[] {
    const given = this.givenLabels;
    if (given && given.length === this.numLabels) return given.slice();
    const id2label = this.config.id2label as Record<string, string> | undefined;
    const names = Array.from({ length: this.numLabels }, (_, i) => id2label?.[String(i)]);
    return names.every((n) => typeof n === 'string') ? (names as string[]) : names.map((_, i) => `LABEL_${i}`);
  }
  /** A classifier's class count (undefined for other tasks): labels are checked against it. */
  private get classes(): number | undefined {
    return this.task === 'sequence-classification' ? this.numLabels : undefined;
  }
  get padTokenId(): number | undefined {
    return this.spec.padTokenId >= 0 ? this.spec.padTokenId : undefined;
  }
  /** @internal the native handle, for optimizers. */
  get nativeHandle(): Handle {
    return this.h;
  }

  parameters(): RawParam[] {
    return this.params.map((p) => ({ ...p, shape: [...p.shape] }));
  }

  /** Names of the parameters that hold a gradient right now (after backward, before zeroGrad). */
  async parametersWithGradients(): Promise<string[]> {
    const ps = await serial(() => addon.parameters(this.h));
    return ps.filter((p) => p.hasGrad).map((p) => p.name);
  }

  countParameters(options: { trainableOnly?: boolean } = {}): number {
    return this.params.filter((p) => !options.trainableOnly || p.trainable).reduce((a, p) => a + p.numel, 0);
  }

  /** Freezes or unfreezes parameters by exact name or RegExp. A frozen parameter gets no gradient and no optimizer state. */
  async setTrainable(which: (string | RegExp)[] | 'all', trainable: boolean): Promise<void> {
    const names = this.params
      .filter((p) => which === 'all' || which.some((w) => (typeof w === 'string' ? w === p.name : w.test(p.name))))
      .map((p) => p.name);
    await serial(async () => {
      await addon.setTrainable(this.h, names, trainable);
      this.params = await addon.parameters(this.h);
    });
  }

  /**
   * Switches between '32-true', 'bf16-mixed' and (on CUDA) '16-mixed' on float32 weights; 'bf16-true' is chosen when
   * the model is loaded, since it changes the weights' dtype. Training, evaluation, generation and embeddings all
   * run at the model's precision.
   */
  async setPrecision(precision: Precision): Promise<void> {
    checkChoice(precision, PRECISIONS, 'precision');
    const bf16Weights = this.dtype === 'bfloat16';
    if (bf16Weights !== (precision === 'bf16-true'))
      throw new TunekitError(
        'E_STATE',
        bf16Weights
          ? `the weights are bfloat16, so the precision is 'bf16-true', not '${precision}' (load the model again in float32)`
          : "'bf16-true' keeps the weights in bfloat16: load the model with { precision: 'bf16-true' }",
      );
    if (precision === '16-mixed' && this.device !== 'cuda')
      throw new TunekitError('E_DEVICE', "'16-mixed' (float16 with loss scaling) runs on CUDA only; on the CPU use 'bf16-mixed'");
    const autocast = precision === '32-true' ? 'float32' : precision === '16-mixed' ? 'float16' : 'bfloat16';
    await serial(() => addon.setAutocast(this.h, autocast));
    this.computePrecision = precision;
  }
  get precision(): Precision {
    return this.computePrecision;
  }

  /** Dropout on (train) or off (eval); models load in eval mode, as in transformers. */
  async train(on = true): Promise<void> {
    await serial(() => addon.setTraining(this.h, on));
    this.training = on;
  }
  /** Whether dropout is on (train) or off (eval, the state a model loads in). */
  get isTraining(): boolean {
    return this.training;
  }
  async eval(): Promise<void> {
    await this.train(false);
  }

  /**
   * @internal Data parallelism (lib/distributed.ts): checks that every rank holds the same parameter shapes, copies
   * rank 0's weights to all, and averages the gradients of the parameters trainable now across ranks in each backward
   * (DDP's Reducer). `syncGradients(false)` lets backward accumulate locally, as DDP's no_sync.
   */
  async attachDistributed(group: ProcessGroup, options: { bucketMb: number; findUnusedParameters?: boolean }): Promise<void> {
    await serial(() => addon.ddpAttach(this.h, group.h, options));
  }
  /** @internal */
  async detachDistributed(): Promise<void> {
    await serial(() => addon.ddpDetach(this.h));
  }
  /** @internal */
  async syncGradients(on: boolean): Promise<void> {
    await serial(() => addon.ddpSetSync(this.h, on));
  }

  /** `logits: false` returns only the loss: evaluating a language model then copies no [batch, seq, vocab] array. */
  async forward(batch: BatchInput, options: { logits: false }): Promise<{ loss?: number }>;
  async forward(batch: BatchInput, options?: { logits?: true }): Promise<ForwardOutput>;
  async forward(batch: BatchInput, options: { logits?: boolean } = {}): Promise<Partial<ForwardOutput>> {
    checkOptions(options, ['logits'], 'forward');
    const want = checkBoolean(options.logits, 'logits', true);
    const raw = packBatch(batch, { vocabSize: this.vocabSize, numLabels: this.classes });
    this.checkMemory('forward', raw.batch, raw.seq);
    const r = await serial(() => addon.forward(this.h, raw, want));
    return { ...(want ? { logits: r.logits! } : {}), ...(r.loss !== undefined ? { loss: r.loss } : {}) };
  }

  /** Forward and backward; gradients accumulate until zeroGrad. `lossScale` scales the gradient (e.g. 1/accumulation). */
  async backward(batch: BatchInput, options: { lossScale?: number } = {}): Promise<{ loss: number }> {
    checkOptions(options, ['lossScale'], 'backward');
    const lossScale = checkNumber(options.lossScale, 'lossScale', {}, 1);
    if (this.merged)
      throw new TunekitError('E_STATE', `adapter '${this.active}' is merged into the base weights; unmergeAdapter() before training`);
    const raw = packBatch(batch, { vocabSize: this.vocabSize, requireLabels: true, numLabels: this.classes });
    this.checkMemory('backward', raw.batch, raw.seq);
    const loss = await serial(() => addon.backward(this.h, raw, lossScale));
    return { loss };
  }

  /**
   * log p(token t | tokens before t) of every row for t = 1 .. seq-1, at `temperature` (logits / temperature), through
   * the active adapter: [batch, seq - 1]. The start of every preference and RLHF method. A causal LM only.
   */
  async tokenLogprobs(batch: BatchInput, options: { temperature?: number } = {}): Promise<FloatArray> {
    checkOptions(options, ['temperature'], 'tokenLogprobs');
    const temperature = checkNumber(options.temperature, 'temperature', { min: 0, minExclusive: true }, 1);
    const raw = packBatch({ inputIds: batch?.inputIds, attentionMask: batch?.attentionMask }, { vocabSize: this.vocabSize });
    this.checkMemory('forward', raw.batch, raw.seq);
    return serial(() => addon.tokenLogprobs(this.h, raw, temperature));
  }

  /**
   * @internal One step of a preference or RLHF objective (lib/rl/): its loss and statistics, and with `backward`
   * its gradients accumulated (scaled by `lossScale`). The core refuses a non-finite loss before any gradient.
   */
  async objective(
    batch: BatchInput,
    objective: RawObjective,
    options: { backward: boolean; lossScale?: number },
  ): Promise<Record<string, number>> {
    if (options.backward && this.merged)
      throw new TunekitError('E_STATE', `adapter '${this.active}' is merged into the base weights; unmergeAdapter() before training`);
    const raw = packBatch({ inputIds: batch?.inputIds, attentionMask: batch?.attentionMask }, { vocabSize: this.vocabSize });
    this.checkMemory(options.backward ? 'backward' : 'forward', raw.batch, raw.seq);
    return serial(() => addon.objectiveStep(this.h, raw, objective, options.lossScale ?? 1, options.backward));
  }

  /**
   * @internal PPO's value head (TRL's v_head.summary.{weight,bias}, zero at the start), trainable, on a causal LM; once.
   */
  async addValueHead(): Promise<void> {
    if (this.params.some((p) => p.name.startsWith('v_head.'))) return;
    await serial(async () => {
      await addon.addValueHead(this.h);
      this.params = await addon.parameters(this.h);
    });
  }

  /** @internal tokenLogprobs and the value head's estimates, [batch, seq - 1] each, from one forward. */
  async tokenLogprobsAndValues(batch: BatchInput, temperature: number): Promise<{ logprobs: FloatArray; values: FloatArray }> {
    const raw = packBatch({ inputIds: batch?.inputIds, attentionMask: batch?.attentionMask }, { vocabSize: this.vocabSize });
    this.checkMemory('forward', raw.batch, raw.seq);
    return serial(() => addon.tokenLogprobsAndValues(this.h, raw, temperature));
  }

  async zeroGrad(): Promise<void> {
    await serial(() => addon.zeroGrad(this.h));
  }
  async gradNorm(): Promise<number> {
    return serial(() => addon.gradNorm(this.h));
  }

  async embed(batch: BatchInput, options: { pooling?: Pooling } = {}): Promise<FloatArray> {
    checkOptions(options, ['pooling'], 'embed');
    const pooling = checkChoice<Pooling>(options.pooling, ['cls', 'mean', 'last'], 'pooling', this.family.pooling);
    const raw = packBatch({ inputIds: batch?.inputIds, attentionMask: batch?.attentionMask }, { vocabSize: this.vocabSize });
    this.checkMemory('forward', raw.batch, raw.seq);
    return serial(() => addon.embed(this.h, raw, pooling));
  }

  async generate(batch: { inputIds: number[][]; attentionMask?: number[][] }, options: GenerateOptions = {}): Promise<number[][]> {
    checkOptions(options, GENERATE_OPTIONS, 'generate');
    const raw = packBatch(
      { inputIds: batch?.inputIds, attentionMask: batch?.attentionMask ?? options.attentionMask },
      { vocabSize: this.vocabSize },
    );
    const context = this.spec.maxPositions;
    const maxNewTokens = checkNumber(options.maxNewTokens, 'maxNewTokens', { integer: true, min: 1 }, 20);
    if (raw.seq + maxNewTokens > context)
      throw new TunekitError(
        'E_RANGE',
        `the prompt (${raw.seq} tokens) plus maxNewTokens (${maxNewTokens}) exceeds the model's context of ${context} positions`,
      );
    const temperature = checkNumber(options.temperature, 'temperature', { min: 0 }, 0);
    const eos = options.eosTokenId ?? firstId(this.config.eos_token_id);
    const settings = {
      maxNewTokens,
      temperature: temperature || 1,
      topK: checkNumber(options.topK, 'topK', { integer: true, min: 0 }, 0),
      topP: checkNumber(options.topP, 'topP', { min: 0, max: 1, minExclusive: true }, 1),
      doSample: temperature > 0,
      eosTokenId: eos === -1 ? -1 : checkNumber(eos, 'eosTokenId', { integer: true, min: 0, max: this.vocabSize, maxExclusive: true }),
      seed: checkNumber(options.seed, 'seed', { integer: true, min: 0 }, 0),
      useCache: checkBoolean(options.useCache, 'useCache', true),
    };
    this.checkMemory('generate', raw.batch, raw.seq, maxNewTokens);
    return serial(() => addon.generate(this.h, raw, settings));
  }

  /**
   * The log-likelihood of each continuation after `prompt`: the sum of its tokens' log-probabilities (natural log),
   * as lm-evaluation-harness scores the choices of a question. The prompt runs once into a KV cache that every
   * continuation extends, all continuations in one batch.
   */
  async logLikelihood(prompt: number[], continuations: number[][]): Promise<number[]> {
    const [p] = tokenRows('prompt', [prompt], this.vocabSize);
    const rows = tokenRows('continuations', continuations, this.vocabSize);
    const longest = Math.max(...rows.map((r) => r.length));
    if (p.length + longest - 1 > this.spec.maxPositions)
      throw new TunekitError(
        'E_RANGE',
        `the prompt (${p.length} tokens) and the longest continuation (${longest}) exceed the model's context of ${this.spec.maxPositions} positions`,
      );
    this.checkMemory('generate', rows.length, p.length, longest);
    return serial(() =>
      addon.logLikelihood(
        this.h,
        Int32Array.from(p),
        Int32Array.from(rows.flat()),
        rows.map((r) => r.length),
      ),
    );
  }

  /**
   * A decoding session, for serving: its KV cache stays in the core between decodeStep calls, under `adapter` (null:
   * the base model). Dispose it when its request ends.
   */
  async openSession(options: { adapter?: string | null } = {}): Promise<DecodeSession> {
    checkOptions(options, ['adapter'], 'openSession');
    const adapter = options.adapter ?? null;
    if (adapter !== null && !this.adapterInfo.has(adapter)) throw new TunekitError('E_ARG', `the model has no adapter named '${adapter}'`);
    const h = this.h;
    return new DecodeSession(await serial(() => addon.decodeOpen(h, adapter ?? '')), adapter);
  }

  /**
   * Advances sessions by their new tokens (a session's prompt at first, then one token): sessions given one token run
   * together in one forward, each at its own position, rows under different LoRA adapters included. Returns each
   * session's next-token logits, [sessions, vocab].
   */
  async decodeStep(sessions: DecodeSession[], tokens: number[][]): Promise<FloatArray> {
    if (!Array.isArray(sessions) || sessions.length === 0 || sessions.some((x) => !(x instanceof DecodeSession)))
      throw new TunekitError('E_ARG', 'decodeStep: sessions must be a non-empty array of DecodeSession');
    if (!Array.isArray(tokens) || tokens.length !== sessions.length)
      throw new TunekitError('E_SHAPE', `decodeStep: ${sessions.length} sessions need ${sessions.length} token lists, got ${show(tokens)}`);
    const rows = tokenRows('tokens', tokens, this.vocabSize);
    const h = this.h;
    return serial(() =>
      addon.decodeStep(
        h,
        sessions.map((x) => x.handle),
        Int32Array.from(rows.flat()),
        rows.map((r) => r.length),
      ),
    );
  }

  /** Refuses (E_MEMORY) a CPU job whose activations would not fit; CUDA reports its own out-of-memory as E_MEMORY. */
  private checkMemory(job: Job, batch: number, seq: number, newTokens = 0): void {
    if (this.device === 'cpu') checkMemory(this.dims, job, batch, seq, newTokens);
  }

  // ---- adapters (PEFT) ------------------------------------------------------------------------------------------

  /** Names of the adapters on this model. */
  get adapters(): string[] {
    return [...this.adapterInfo.keys()];
  }
  /** The adapter forward/backward use, or null for the bare base model. */
  get activeAdapter(): string | null {
    return this.active;
  }

  /**
   * Adds an adapter of a PEFT method (what LoRA.apply, IA3.apply, ... call): freezes everything else, as PEFT does,
   * and makes the new adapter trainable and active.
   */
  async addAdapter<O, R extends Resolved>(method: PeftMethod<O, R>, name: string, options: O): Promise<void> {
    this.checkNewAdapter(name);
    if (this.active && this.merged)
      throw new TunekitError('E_STATE', `adapter '${this.active}' is merged; unmerge it before adding another`);
    await this.addNative(name, method, method.resolve(this, options), true, true);
  }

  private checkNewAdapter(name: string): void {
    if (typeof name !== 'string' || !/^[A-Za-z0-9_-]+$/.test(name))
      throw new TunekitError('E_ARG', `adapter name must be letters, digits, _ or -, got ${JSON.stringify(name)}`);
    if (this.adapterInfo.has(name)) throw new TunekitError('E_STATE', `the model already has an adapter named '${name}'`);
  }

  /**
   * Creates an adapter in the core (and loads its weights from a file, removing it again if that fails), freezes
   * everything it does not own and sets its own trainability; one serial job. Then records it.
   */
  private async addNative<R extends Resolved>(
    name: string,
    method: PeftMethod<unknown, R>,
    settings: R,
    trainable: boolean,
    activate: boolean,
    load?: { file: string; entries: ReturnType<typeof entry>[] },
  ): Promise<void> {
    const spec = { ...method.nativeSpec(this, settings), adapter: name, modulesToSave: settings.saveParams };
    let params: string[] = [];
    await serial(async () => {
      params = await addon.addAdapter(this.h, method.name, spec);
      if (load) {
        try {
          // A file lacking some of the adapter's tensors would leave them at their random initialisation.
          const loaded = new Set(load.entries.map((e) => e.name));
          const missing = params.filter((p) => !loaded.has(p));
          if (missing.length)
            throw new TunekitError(
              'E_FORMAT',
              `${load.file} lacks ${missing.length} of the adapter's tensors: ${missing.slice(0, 3).join(', ')}${missing.length > 3 ? ', ...' : ''}`,
            );
          await addon.loadSafetensors(this.h, load.file, load.entries);
        } catch (e) {
          await addon.deleteAdapter(this.h, name);
          this.params = await addon.parameters(this.h);
          throw e;
        }
      }
      const own = new Set(params);
      const all = await addon.parameters(this.h);
      await addon.setTrainable(
        this.h,
        all.filter((q) => !own.has(q.name)).map((q) => q.name),
        false,
      );
      await addon.setTrainable(this.h, params, trainable);
      if (activate) await addon.setAdapter(this.h, name);
      this.params = await addon.parameters(this.h);
    });
    this.adapterInfo.set(name, { method, settings, params });
    if (activate) this.active = name;
  }

  /** Parameters of the base model: every parameter no adapter owns. */
  baseParameters(): RawParam[] {
    const owned = new Set([...this.adapterInfo.values()].flatMap((a) => a.params));
    return this.parameters().filter((p) => !owned.has(p.name));
  }

  /** A name as it is, and with the backbone prefix added or removed: transformers maps checkpoint names both ways. */
  private withAndWithoutBackbone(n: string): [string, string] {
    const prefix = this.family.backbone;
    return [n, n.startsWith(prefix) ? n.slice(prefix.length) : prefix + n];
  }

  /** Runs calls through the named adapter, or through the bare base model with null. */
  async setAdapter(name: string | null): Promise<void> {
    if (name !== null && !this.adapterInfo.has(name))
      throw new TunekitError('E_ARG', `the model has no adapter named '${name}' (it has: ${this.adapters.join(', ') || 'none'})`);
    await serial(() => addon.setAdapter(this.h, name ?? ''));
    this.active = name;
  }

  /** Folds the active adapter into the base weights (LoRA: W += scaling * B A; IA3: W *= l): same outputs, base-model cost. */
  async mergeAdapter(): Promise<void> {
    if (!this.active) throw new TunekitError('E_STATE', 'no adapter is active');
    await serial(() => addon.mergeAdapter(this.h, true));
    this.merged = true;
  }

  /** Takes a merged adapter back out of the base weights (equal to before the merge up to float32 rounding). */
  async unmergeAdapter(): Promise<void> {
    if (!this.active) throw new TunekitError('E_STATE', 'no adapter is active');
    await serial(() => addon.mergeAdapter(this.h, false));
    this.merged = false;
  }

  async deleteAdapter(name: string): Promise<void> {
    if (!this.adapterInfo.has(name)) throw new TunekitError('E_ARG', `the model has no adapter named '${name}'`);
    await serial(async () => {
      await addon.deleteAdapter(this.h, name);
      this.params = await addon.parameters(this.h);
    });
    this.adapterInfo.delete(name);
    if (this.active === name) this.active = null;
  }

  /** adapter_config.json + adapter_model.safetensors in PEFT's layout and key names, loadable by PeftModel.from_pretrained. */
  async saveAdapter(dir: string, options: { name?: string; baseModelNameOrPath?: string } = {}): Promise<void> {
    checkOptions(options, ['name', 'baseModelNameOrPath'], 'saveAdapter');
    const name = options.name ?? this.active ?? (this.adapterInfo.size === 1 ? this.adapters[0] : undefined);
    if (!name || !this.adapterInfo.has(name))
      throw new TunekitError('E_STATE', name ? `the model has no adapter named '${name}'` : 'the model has no adapter to save');
    const { method, settings, params } = this.adapterInfo.get(name)!;
    const names: string[] = [];
    const keys: string[] = [];
    for (const [what, key] of method.exports ?? []) {
      names.push(`@${name}:${what}`);
      keys.push(key);
    }
    const copies = new Map(settings.saveParams.map((base) => [copyName(base, name), base]));
    // PEFT keys a prompt-learning adapter's modules_to_save under base_model., the others under base_model.model.
    const copyPrefix = method.promptLearning ? 'base_model' : 'base_model.model';
    for (const p of params) {
      const key = copies.has(p) ? `${copyPrefix}.${copies.get(p)}` : method.fileKey(p, name);
      if (key !== undefined) {
        names.push(p);
        keys.push(key);
      }
    }
    fs.mkdirSync(dir, { recursive: true });
    await atomicWrite(path.join(dir, 'adapter_model.safetensors'), (tmp) => serial(() => addon.saveSafetensors(this.h, tmp, names, keys)));
    await writeJsonAtomic(path.join(dir, 'adapter_config.json'), method.configJson(this, settings, options.baseModelNameOrPath ?? null));
  }

  /**
   * Loads a PEFT adapter folder (any registered peft_type) under `name` (default "default"), made active unless
   * `activate: false`. Its weights are frozen unless `trainable: true` (as PEFT's is_trainable).
   */
  async loadAdapter(dir: string, options: { name?: string; trainable?: boolean; activate?: boolean } = {}): Promise<void> {
    checkOptions(options, ['name', 'trainable', 'activate'], 'loadAdapter');
    const name = options.name ?? 'default';
    const { config, header, file } = readAdapterFolder(dir);
    const method = methodForPeftType(config.peft_type, `${dir}/adapter_config.json`);
    const configView = new AdapterConfig(config, path.join(dir, 'adapter_config.json'));
    this.checkNewAdapter(name);
    const known = new Set(this.baseParameters().map((q) => q.name));
    const view: AdapterFile = {
      file,
      config: configView,
      header,
      tensors: [...header.tensors].map(([key, e]) => ({ key, rest: key.replace(/^base_model\.(model\.)?/, ''), entry: e })),
      baseParam: (n) => this.withAndWithoutBackbone(n).find((c) => known.has(c)),
    };
    const { settings, own } = method.fromFile(this, name, view);
    // Every tensor of the file is one of the method's own or a modules_to_save copy of a base parameter.
    const entries: ReturnType<typeof entry>[] = [];
    const saveParams: string[] = [];
    for (const t of view.tensors) {
      const mine = own(t.key, t.rest);
      if (mine !== undefined) {
        entries.push(entry(mine, t.entry));
        continue;
      }
      const base = view.baseParam(t.rest);
      if (!base) throw new TunekitError('E_FORMAT', `${file}: '${t.key}' names no parameter of this ${this.modelType} ${this.task} model`);
      saveParams.push(base);
      entries.push(entry(copyName(base, name), t.entry));
    }
    // As PEFT: the base is frozen under an adapter; the adapter itself trains only when asked to.
    await this.addNative(name, method, { ...settings, saveParams }, Boolean(options.trainable), options.activate ?? true, {
      file,
      entries,
    });
  }

  /** config.json + model.safetensors, loadable by transformers' from_pretrained. Each file lands atomically. */
  async savePretrained(dir: string, options: { includeAdapters?: boolean; dtype?: DType } = {}): Promise<void> {
    checkOptions(options, ['includeAdapters', 'dtype'], 'savePretrained');
    // float32 unless asked: a bf16-true model's checkpoint loads anywhere, and back into bfloat16 without loss.
    const dtype = checkChoice<DType>(options.dtype, ['float32', 'bfloat16'], 'dtype', 'float32');
    fs.mkdirSync(dir, { recursive: true });
    const config: HFConfig = { ...this.config, architectures: [this.family.architectures[this.task]!], dtype };
    if (this.task === 'sequence-classification') {
      config.num_labels = this.numLabels;
      const labels = this.labelNames;
      config.id2label = Object.fromEntries(labels.map((l, i) => [String(i), l]));
      config.label2id = Object.fromEntries(labels.map((l, i) => [l, i]));
    }
    // Adapter weights stay out of the base checkpoint (saveAdapter writes them), except for a trainer checkpoint, and
    // so does the pretraining task's next-sentence head. A merged adapter's trained copies of its modules_to_save are
    // the model's head from now on.
    let names: string[] = [];
    let keys: string[] | undefined;
    if (!options.includeAdapters && (this.adapterInfo.size > 0 || this.task === 'pretraining')) {
      const over = new Map<string, string>();
      if (this.active && this.merged) {
        for (const base of this.adapterInfo.get(this.active)!.settings.saveParams) over.set(base, copyName(base, this.active));
      }
      const base = this.baseParameters()
        .map((p) => p.name)
        .filter((n) => !this.family.pretrainingOnly?.test(n));
      names = base.map((n) => over.get(n) ?? n);
      keys = base;
    }
    await atomicWrite(path.join(dir, 'model.safetensors'), (tmp) => serial(() => addon.saveSafetensors(this.h, tmp, names, keys, dtype)));
    // A stale index from an earlier sharded save would shadow the new single file for readers that prefer it.
    fs.rmSync(path.join(dir, 'model.safetensors.index.json'), { force: true });
    await writeJsonAtomic(path.join(dir, 'config.json'), config);
  }

  /** @internal an optimizer (or other native handle holding this model's tensors) to dispose with the model. */
  attach(dependent: { dispose(): void }): void {
    this.dependents.add(dependent);
  }

  /** Frees the native weights now instead of at garbage collection, with the optimizers created on this model. */
  dispose(): void {
    for (const d of this.dependents) d.dispose();
    this.dependents.clear();
    if (this.handle) sync(() => addon.dispose(this.handle!));
    this.handle = null;
  }
}

/** The name of an adapter's own trainable copy of a base parameter (PEFT's modules_to_save). */
function copyName(base: string, adapter: string): string {
  const dot = base.lastIndexOf('.');
  return `${base.slice(0, dot)}.modules_to_save.${adapter}${base.slice(dot)}`;
}

function readAdapterFolder(dir: string) {
  if (typeof dir !== 'string' || !fs.existsSync(dir) || !fs.statSync(dir).isDirectory())
    throw new TunekitError('E_FILE', `adapter folder ${dir} does not exist`);
  const cfgFile = path.join(dir, 'adapter_config.json');
  const config = readJsonFile<Record<string, unknown>>(cfgFile);
  const file = path.join(dir, 'adapter_model.safetensors');
  if (!fs.existsSync(file)) throw new TunekitError('E_FILE', `${file} does not exist (adapter_model.bin is not read: use safetensors)`);
  return { config, header: readHeader(file), file };
}

/** The precision load options ask for; `dtype: 'bfloat16'` is 'bf16-true', and a contradiction is refused. */
function precisionOf(options: FromPretrainedOptions): Precision {
  const precision = checkChoice(options.precision, PRECISIONS, 'precision', options.dtype === 'bfloat16' ? 'bf16-true' : '32-true');
  if (options.dtype !== undefined && (options.dtype === 'bfloat16') !== (precision === 'bf16-true'))
    throw new TunekitError('E_ARG', `dtype '${options.dtype}' contradicts precision '${precision}' (give one)`);
  return precision;
}

/** Checks the options against the config and builds the core's spec. */
function resolveSpec(config: HFConfig, options: FromPretrainedOptions, where: string): RawSpec {
  const family = familyOf(config, where);
  const task = options.task ?? defaultTask(family, config);
  if (!family.architectures[task]) throw new TunekitError('E_CONFIG', `${family.modelType} does not support task '${task}'`);
  const device = options.device ?? 'cpu';
  if (device !== 'cpu' && device !== 'cuda')
    throw new TunekitError('E_ARG', `device must be 'cpu' or 'cuda', got ${JSON.stringify(device)}`);
  const dtype = options.dtype ?? (options.precision === 'bf16-true' ? 'bfloat16' : 'float32');
  if (dtype !== 'float32' && dtype !== 'bfloat16')
    throw new TunekitError('E_ARG', `dtype must be 'float32' or 'bfloat16', got ${JSON.stringify(dtype)}`);
  const numLabels = options.numLabels ?? options.labelNames?.length ?? numLabelsOf(config);
  if (
    options.labelNames !== undefined &&
    (!Array.isArray(options.labelNames) || options.labelNames.length !== numLabels || options.labelNames.some((n) => typeof n !== 'string'))
  ) {
    throw new TunekitError('E_ARG', `labelNames must be ${numLabels} strings, got ${JSON.stringify(options.labelNames)}`);
  }
  if (!Number.isInteger(numLabels) || numLabels < 1)
    throw new TunekitError('E_ARG', `numLabels must be a positive integer, got ${numLabels}`);
  return toSpec(family, task, config, where, { numLabels, device, dtype, initSeed: options.seed ?? 0 });
}

function readConfig(dir: string): HFConfig {
  if (typeof dir !== 'string') throw new TunekitError('E_TYPE', 'model folder must be a string path');
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new TunekitError('E_FILE', `model folder ${dir} does not exist`);
  const file = path.join(dir, 'config.json');
  const c = readJsonFile(file);
  if (!c || typeof c !== 'object' || Array.isArray(c)) throw new TunekitError('E_FORMAT', `${file}: not a JSON object`);
  return c;
}

/** A request's decoding state in the core (Model.openSession): its KV cache and adapter. */
export class DecodeSession {
  private h: Handle | null;
  constructor(
    handle: Handle,
    readonly adapter: string | null,
  ) {
    this.h = handle;
  }
  get handle(): Handle {
    if (!this.h) throw new TunekitError('E_DISPOSED', 'the decode session was disposed');
    return this.h;
  }
  /** Frees the session's KV cache now rather than when it is garbage-collected. */
  dispose(): void {
    if (this.h) addon.dispose(this.h);
    this.h = null;
  }
}
