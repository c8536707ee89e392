/** A Hugging Face model (gpt2, distilbert, llama) whose weights live in the native core. */
import fs from 'node:fs';
import path from 'node:path';
import { BatchInput, packBatch } from './batch';
import { ARCHITECTURES, HFConfig, ModelType, Task, defaultTask, firstId, modelType, numLabelsOf, toSpec } from './config';
import { TunekitError } from './errors';
import { FloatArray, Handle, RawParam, RawSpec, addon, serial, sync } from './native';
import { atomicWrite, entry, readCheckpoint, writeJsonAtomic } from './safetensors';

export type Device = 'cpu' | 'cuda';
export type DType = 'float32' | 'bfloat16';

export interface FromPretrainedOptions {
  task?: Task;
  numLabels?: number;
  device?: Device;
  dtype?: DType;
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

export interface GenerateOptions {
  maxNewTokens?: number;
  /** 0 or absent: greedy decoding. Above 0: sampling at this temperature. */
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
  eosTokenId?: number;
  attentionMask?: number[][];
}

export type Pooling = 'cls' | 'mean' | 'last';

const BASE_PREFIX: Record<ModelType, string> = { gpt2: 'transformer.', llama: 'model.', distilbert: 'distilbert.' };

export class Model {
  readonly modelType: ModelType;
  readonly task: Task;
  readonly config: HFConfig;
  readonly device: Device;
  readonly dtype: DType;
  /** Parameters the checkpoint did not provide and that were freshly initialised (as transformers warns). */
  readonly newlyInitialized: string[] = [];
  private handle: Handle | null;
  private params: RawParam[];
  private spec: RawSpec;
  private givenLabels?: string[];

  private constructor(handle: Handle, spec: RawSpec, config: HFConfig, params: RawParam[]) {
    this.handle = handle;
    this.spec = spec;
    this.config = config;
    this.params = params;
    this.modelType = spec.family as ModelType;
    this.task = spec.task as Task;
    this.device = spec.device as Device;
    this.dtype = spec.dtype as DType;
  }

  static async fromPretrained(dir: string, options: FromPretrainedOptions = {}): Promise<Model> {
    const config = { ...readConfig(dir), ...(options.config ?? {}) };
    const spec = resolveSpec(config, options, path.join(dir, 'config.json'));
    const headers = readCheckpoint(dir);
    const handle = await serial(() => addon.createModel(spec));
    const model = new Model(handle, spec, config, []);
    model.givenLabels = options.labelNames;
    try {
      model.params = await serial(() => addon.parameters(handle));
      model.newlyInitialized.push(...await model.loadFrom(headers, dir));
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
    config = { ...config, ...(options.config ?? {}) };
    const spec = resolveSpec(config, options, 'config');
    const handle = await serial(() => addon.createModel(spec));
    const model = new Model(handle, spec, { ...config }, await serial(() => addon.parameters(handle)));
    model.givenLabels = options.labelNames;
    return model;
  }

  /** Maps checkpoint names to ours as transformers does: with or without the backbone's prefix. Returns the head
   * parameters the checkpoint lacks; a missing backbone tensor is an error. */
  private async loadFrom(headers: ReturnType<typeof readCheckpoint>, dir: string): Promise<string[]> {
    const missing: string[] = [];
    const prefix = BASE_PREFIX[this.modelType];
    const byFile = new Map<string, ReturnType<typeof entry>[]>();
    for (const p of this.params) {
      const candidates = [p.name, p.name.startsWith(prefix) ? p.name.slice(prefix.length) : prefix + p.name];
      let found = false;
      for (const h of headers) {
        const key = candidates.find((c) => h.tensors.has(c));
        if (key === undefined) continue;
        const list = byFile.get(h.file) ?? [];
        list.push(entry(p.name, h.tensors.get(key)!));
        byFile.set(h.file, list);
        found = true;
        break;
      }
      if (found) continue;
      const isHead = this.task !== 'feature-extraction' && !p.name.startsWith(prefix);
      if (!isHead) throw new TunekitError('E_FORMAT', `${dir}: checkpoint lacks tensor '${p.name}' that config.json implies`);
      missing.push(p.name);
    }
    for (const [file, entries] of byFile) {
      await serial(() => addon.loadSafetensors(this.h, file, entries));
    }
    return missing;
  }

  private get h(): Handle {
    if (!this.handle) throw new TunekitError('E_DISPOSED', 'this model was disposed');
    return this.handle;
  }

  get vocabSize(): number { return this.spec.vocabSize; }
  get numLabels(): number { return this.spec.numLabels; }
  /** Class names, index = label id (from the options, the config's id2label, or LABEL_i). */
  get labelNames(): string[] {
    const given = this.givenLabels;
    if (given && given.length === this.numLabels) return given.slice();
    const id2label = this.config.id2label as Record<string, string> | undefined;
    const names = Array.from({ length: this.numLabels }, (_, i) => id2label?.[String(i)]);
    return names.every((n) => typeof n === 'string') ? (names as string[]) : names.map((_, i) => `LABEL_${i}`);
  }
  get padTokenId(): number | undefined { return this.spec.padTokenId >= 0 ? this.spec.padTokenId : undefined; }
  /** @internal the native handle, for optimizers. */
  get nativeHandle(): Handle { return this.h; }

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

  /** Dropout on (train) or off (eval); models load in eval mode, as in transformers. */
  async train(on = true): Promise<void> { await serial(() => addon.setTraining(this.h, on)); }
  async eval(): Promise<void> { await this.train(false); }

  async forward(batch: BatchInput): Promise<ForwardOutput> {
    const raw = packBatch(batch, { vocabSize: this.vocabSize });
    const r = await serial(() => addon.forward(this.h, raw, true));
    return { logits: r.logits!, ...(r.loss !== undefined ? { loss: r.loss } : {}) };
  }

  /** Forward and backward; gradients accumulate until zeroGrad. `lossScale` scales the gradient (e.g. 1/accumulation). */
  async backward(batch: BatchInput, options: { lossScale?: number } = {}): Promise<{ loss: number }> {
    const raw = packBatch(batch, { vocabSize: this.vocabSize, requireLabels: true });
    const loss = await serial(() => addon.backward(this.h, raw, options.lossScale ?? 1));
    return { loss };
  }

  async zeroGrad(): Promise<void> { await serial(() => addon.zeroGrad(this.h)); }
  async gradNorm(): Promise<number> { return serial(() => addon.gradNorm(this.h)); }

  async embed(batch: BatchInput, options: { pooling?: Pooling } = {}): Promise<FloatArray> {
    const raw = packBatch({ inputIds: batch.inputIds, attentionMask: batch.attentionMask }, { vocabSize: this.vocabSize });
    return serial(() => addon.embed(this.h, raw, options.pooling ?? (this.modelType === 'distilbert' ? 'cls' : 'last')));
  }

  async generate(batch: { inputIds: number[][]; attentionMask?: number[][] }, options: GenerateOptions = {}): Promise<number[][]> {
    const raw = packBatch({ inputIds: batch.inputIds, attentionMask: batch.attentionMask ?? options.attentionMask }, { vocabSize: this.vocabSize });
    const temperature = options.temperature ?? 0;
    if (!(temperature >= 0)) throw new TunekitError('E_ARG', 'temperature must be >= 0');
    const eos = options.eosTokenId ?? firstId(this.config.eos_token_id);
    return serial(() => addon.generate(this.h, raw, {
      maxNewTokens: options.maxNewTokens ?? 20, temperature: temperature || 1, topK: options.topK ?? 0, topP: options.topP ?? 1,
      doSample: temperature > 0, eosTokenId: eos, seed: options.seed ?? 0,
    }));
  }

  /** config.json + model.safetensors, loadable by transformers' from_pretrained. Each file lands atomically. */
  async savePretrained(dir: string): Promise<void> {
    fs.mkdirSync(dir, { recursive: true });
    const config: HFConfig = { ...this.config, architectures: [ARCHITECTURES[this.modelType][this.task]], dtype: this.dtype };
    if (this.task === 'sequence-classification') {
      config.num_labels = this.numLabels;
      const labels = this.labelNames;
      config.id2label = Object.fromEntries(labels.map((l, i) => [String(i), l]));
      config.label2id = Object.fromEntries(labels.map((l, i) => [l, i]));
    }
    await atomicWrite(path.join(dir, 'model.safetensors'), (tmp) => serial(() => addon.saveSafetensors(this.h, tmp, [])));
    // A stale index from an earlier sharded save would shadow the new single file for readers that prefer it.
    fs.rmSync(path.join(dir, 'model.safetensors.index.json'), { force: true });
    await writeJsonAtomic(path.join(dir, 'config.json'), config);
  }

  /** Frees the native weights now instead of at garbage collection. */
  dispose(): void {
    if (this.handle) sync(() => addon.dispose(this.handle!));
    this.handle = null;
  }
}

/** Checks the options against the config and builds the core's spec. */
function resolveSpec(config: HFConfig, options: FromPretrainedOptions, where: string): RawSpec {
  const type = modelType(config, where);
  const task = options.task ?? defaultTask(type, config);
  if (!ARCHITECTURES[type][task]) throw new TunekitError('E_CONFIG', `${type} does not support task '${task}'`);
  const device = options.device ?? 'cpu';
  if (device !== 'cpu' && device !== 'cuda') throw new TunekitError('E_ARG', `device must be 'cpu' or 'cuda', got ${JSON.stringify(device)}`);
  const dtype = options.dtype ?? 'float32';
  if (dtype !== 'float32' && dtype !== 'bfloat16') throw new TunekitError('E_ARG', `dtype must be 'float32' or 'bfloat16', got ${JSON.stringify(dtype)}`);
  const numLabels = options.numLabels ?? options.labelNames?.length ?? numLabelsOf(config);
  if (options.labelNames !== undefined && (!Array.isArray(options.labelNames) || options.labelNames.length !== numLabels || options.labelNames.some((n) => typeof n !== 'string'))) {
    throw new TunekitError('E_ARG', `labelNames must be ${numLabels} strings, got ${JSON.stringify(options.labelNames)}`);
  }
  if (!Number.isInteger(numLabels) || numLabels < 1) throw new TunekitError('E_ARG', `numLabels must be a positive integer, got ${numLabels}`);
  return toSpec(type, task, config, { numLabels, device, dtype, initSeed: options.seed ?? 0 });
}

function readConfig(dir: string): HFConfig {
  if (typeof dir !== 'string') throw new TunekitError('E_TYPE', 'model folder must be a string path');
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new TunekitError('E_FILE', `model folder ${dir} does not exist`);
  const file = path.join(dir, 'config.json');
  if (!fs.existsSync(file)) throw new TunekitError('E_FILE', `${file} does not exist`);
  try {
    const c = JSON.parse(fs.readFileSync(file, 'utf8'));
    if (!c || typeof c !== 'object' || Array.isArray(c)) throw new Error('not a JSON object');
    return c;
  } catch (e) {
    throw new TunekitError('E_FORMAT', `${file}: ${(e as Error).message}`);
  }
}
