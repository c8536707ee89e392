/** A Hugging Face model (gpt2, distilbert, llama) whose weights live in the native core. */
import fs from 'node:fs';
import path from 'node:path';
import { BatchInput, packBatch } from './batch';
import { ARCHITECTURES, HFConfig, ModelType, Task, defaultTask, firstId, modelType, numLabelsOf, toSpec } from './config';
import { TunekitError } from './errors';
import { FloatArray, Handle, RawParam, RawSpec, addon, serial, sync } from './native';
import { LoRAOptions, loraConfigJson, ResolvedLoRA, resolveLoRA } from './peft/lora';
import { PromptTuningOptions, promptConfigJson, ResolvedPrompt, resolvePrompt } from './peft/prompt';
import { AdapterOptions, adapterConfigJson, ResolvedAdapter, resolveAdapter } from './peft/adapter';
import { kvShape, PrefixTuningOptions, prefixConfigJson, ResolvedPrefix, resolvePrefix } from './peft/prefix';
import { atomicWrite, entry, readCheckpoint, readHeader, writeJsonAtomic } from './safetensors';

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
  /** Keep keys/values between steps (default true); false recomputes the whole sequence each step. */
  useCache?: boolean;
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
  private adapterInfo = new Map<string, AdapterInfo>();
  private active: string | null = null;
  private merged = false;

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
      doSample: temperature > 0, eosTokenId: eos, seed: options.seed ?? 0, useCache: options.useCache ?? true,
    }));
  }

  // ---- adapters (PEFT) ------------------------------------------------------------------------------------------

  /** Names of the adapters on this model. */
  get adapters(): string[] { return [...this.adapterInfo.keys()]; }
  /** The adapter forward/backward use, or null for the bare base model. */
  get activeAdapter(): string | null { return this.active; }

  /** @internal Used by LoRA.apply: freezes everything else and adds a trainable LoRA adapter, made active. */
  async addLoRA(name: string, options: LoRAOptions): Promise<void> {
    this.checkNewAdapter(name);
    const l = resolveLoRA(this, options);
    await this.addNative(name, l, () => addon.addLora(this.h, { adapter: name, modules: l.modules, modulesToSave: l.saveParams, r: l.r, alpha: l.alpha, dropout: l.dropout, rslora: l.rslora, seed: l.seed }), true, true);
  }

  /** @internal Used by PromptTuning.apply: freezes everything else and adds trainable virtual tokens, made active. */
  async addPromptTuning(name: string, options: PromptTuningOptions): Promise<void> {
    this.checkNewAdapter(name);
    const p = resolvePrompt(this, options);
    await this.addNative(name, { ...p, kind: 'prompt' }, () => addon.addPrompt(this.h, { adapter: name, numVirtualTokens: p.numVirtualTokens, initIds: p.initIds, modulesToSave: p.saveParams, seed: p.seed }), true, true);
  }

  /** @internal Used by Adapter.apply: freezes everything else and adds trainable bottleneck adapters, made active. */
  async addBottleneckAdapter(name: string, options: AdapterOptions): Promise<void> {
    this.checkNewAdapter(name);
    const a = resolveAdapter(this, options);
    await this.addNative(name, a, () => addon.addBottleneck(this.h, { adapter: name, modules: a.modules, bottleneckSize: a.bottleneckSize, nonlinearity: a.nonlinearity, modulesToSave: a.saveParams, seed: a.seed }), true, true);
  }

  /** @internal Used by PrefixTuning.apply: freezes everything else and adds trainable key/value prefixes, made active. */
  async addPrefixTuning(name: string, options: PrefixTuningOptions): Promise<void> {
    this.checkNewAdapter(name);
    const p = resolvePrefix(this, options);
    await this.addNative(name, p, () => addon.addPrefix(this.h, { adapter: name, numVirtualTokens: p.numVirtualTokens, projection: p.projection, encoderHiddenSize: p.encoderHiddenSize, modulesToSave: p.saveParams, seed: p.seed }), true, true);
  }

  private checkNewAdapter(name: string): void {
    if (typeof name !== 'string' || !/^[A-Za-z0-9_-]+$/.test(name)) throw new TunekitError('E_ARG', `adapter name must be letters, digits, _ or -, got ${JSON.stringify(name)}`);
    this.checkFreeName(name);
    if (this.active && this.merged) throw new TunekitError('E_STATE', `adapter '${this.active}' is merged; unmerge it before adding another`);
  }

  private checkFreeName(name: string): void {
    if (this.adapterInfo.has(name)) throw new TunekitError('E_STATE', `the model already has an adapter named '${name}'`);
  }

  /**
   * Creates an adapter in the core (and loads its weights from a file, removing it again if that fails), freezes
   * everything else (as PEFT) and sets the adapter's own trainability; one serial job. Then records it.
   */
  private async addNative(name: string, info: AdapterInfo, create: () => Promise<void>, trainable: boolean, activate: boolean,
    load?: { file: string; entries: ReturnType<typeof entry>[] }): Promise<void> {
    await serial(async () => {
      await create();
      if (load) {
        try {
          await addon.loadSafetensors(this.h, load.file, load.entries);
        } catch (e) {
          await addon.deleteAdapter(this.h, name);
          this.params = await addon.parameters(this.h);
          throw e;
        }
      }
      const all = await addon.parameters(this.h);
      await addon.setTrainable(this.h, all.filter((q) => !ownedBy(q.name, name)).map((q) => q.name), false);
      await addon.setTrainable(this.h, all.filter((q) => ownedBy(q.name, name)).map((q) => q.name), trainable);
      if (activate) await addon.setAdapter(this.h, name);
      this.params = await addon.parameters(this.h);
    });
    this.adapterInfo.set(name, info);
    if (activate) this.active = name;
  }

  /**
   * Maps an adapter file's tensors onto this model. `own(key, rest)` names the parameter for one of the method's own
   * tensors (undefined: not one of them); every other tensor is a modules_to_save copy of a base parameter.
   */
  private mapAdapterFile(header: ReturnType<typeof readHeader>, file: string, name: string, strip: RegExp,
    own: (key: string, rest: string) => string | undefined) {
    const entries: ReturnType<typeof entry>[] = [];
    const saveParams: string[] = [];
    for (const key of header.tensors.keys()) {
      const rest = key.replace(strip, '');
      const mine = own(key, rest);
      if (mine !== undefined) {
        entries.push(entry(mine, header.tensors.get(key)!));
        continue;
      }
      const base = this.baseParamOf(rest);
      if (!base) throw new TunekitError('E_FORMAT', `${file}: '${key}' names no parameter of this ${this.modelType} ${this.task} model`);
      saveParams.push(base);
      entries.push(entry(copyName(base, name), header.tensors.get(key)!));
    }
    return { entries, saveParams };
  }

  /** A checkpoint's name for one of our parameters, with or without the backbone prefix, as transformers maps them. */
  private baseParamOf(n: string): string | undefined {
    const prefix = BASE_PREFIX[this.modelType];
    const known = new Set(this.params.map((q) => q.name));
    return [n, n.startsWith(prefix) ? n.slice(prefix.length) : prefix + n].find((c) => known.has(c));
  }

  /** Runs calls through the named adapter, or through the bare base model with null. */
  async setAdapter(name: string | null): Promise<void> {
    if (name !== null && !this.adapterInfo.has(name)) throw new TunekitError('E_ARG', `the model has no adapter named '${name}' (it has: ${this.adapters.join(', ') || 'none'})`);
    await serial(() => addon.setAdapter(this.h, name ?? ''));
    this.active = name;
  }

  /** Folds the active LoRA adapter into the base weights (W += scaling * B A): same outputs, base-model cost. */
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
    const name = options.name ?? this.active ?? (this.adapterInfo.size === 1 ? this.adapters[0] : undefined);
    if (!name || !this.adapterInfo.has(name)) throw new TunekitError('E_STATE', name ? `the model has no adapter named '${name}'` : 'the model has no adapter to save');
    const l = this.adapterInfo.get(name)!;
    const names: string[] = [];
    const keys: string[] = [];
    for (const p of this.params) {
      if (p.name === `prompt_encoder.${name}.embedding.weight`) { names.push(p.name); keys.push('prompt_embeddings'); continue; }
      if (p.name.startsWith(`prefix_encoder.${name}.`)) continue;
      const b: RegExpMatchArray | null = p.name.match(/^(.*)\.adapter\.([^.]+)\.(down|up)\.(weight|bias)$/);
      if (b && b[2] === name) { names.push(p.name); keys.push(`base_model.model.${b[1]}.adapter.${b[3]}.${b[4]}`); continue; }
      const m: RegExpMatchArray | null = p.name.match(/^(.*)\.(lora_[AB])\.([^.]+)\.weight$/);
      if (m && m[3] === name) { names.push(p.name); keys.push(`base_model.model.${m[1]}.${m[2]}.weight`); continue; }
      const s: RegExpMatchArray | null = p.name.match(/^(.*)\.modules_to_save\.([^.]+)\.([^.]+)$/);
      // PEFT keys a prompt-learning adapter's modules_to_save under base_model., a LoRA's under base_model.model.
      if (s && s[2] === name) { names.push(p.name); keys.push(`${'kind' in l && (l.kind === 'prompt' || l.kind === 'prefix') ? 'base_model' : 'base_model.model'}.${s[1]}.${s[3]}`); }
    }
    if ('kind' in l && l.kind === 'prefix') { names.unshift(`@prefix:${name}`); keys.unshift('prompt_embeddings'); }
    fs.mkdirSync(dir, { recursive: true });
    await atomicWrite(path.join(dir, 'adapter_model.safetensors'), (tmp) => serial(() => addon.saveSafetensors(this.h, tmp, names, keys)));
    const base = options.baseModelNameOrPath ?? null;
    const config = !('kind' in l) ? loraConfigJson(this, l, base) : l.kind === 'prompt' ? promptConfigJson(this, l, base)
      : l.kind === 'prefix' ? prefixConfigJson(this, l, base) : adapterConfigJson(this, l, base);
    await writeJsonAtomic(path.join(dir, 'adapter_config.json'), config);
  }

  /**
   * Loads a PEFT LoRA adapter folder under `name` (default "default"), made active unless `activate: false`.
   * Its weights are frozen unless `trainable: true` (as PEFT's is_trainable).
   */
  async loadAdapter(dir: string, options: { name?: string; trainable?: boolean; activate?: boolean } = {}): Promise<void> {
    const name = options.name ?? 'default';
    const { config, header, file } = readAdapterFolder(dir);
    if (config.peft_type === 'PROMPT_TUNING') return this.loadPromptAdapter(name, config, header, file, options);
    if (config.peft_type === 'PREFIX_TUNING') return this.loadPrefixAdapter(name, config, header, file, options);
    if (config.peft_type === 'TUNEKIT_HOULSBY_ADAPTER') return this.loadBottleneckAdapter(name, config, header, file, options);
    if (config.peft_type !== 'LORA') throw new TunekitError('E_FORMAT', `${dir}/adapter_config.json: peft_type ${JSON.stringify(config.peft_type)} is not LORA`);
    for (const k of ['rank_pattern', 'alpha_pattern'] as const) {
      if (config[k] && Object.keys(config[k] as object).length) throw new TunekitError('E_FORMAT', `${dir}: per-module ${k} is not supported`);
    }
    if (config.use_dora) throw new TunekitError('E_FORMAT', `${dir}: DoRA adapters are not supported`);
    this.checkFreeName(name);
    const modules = new Set<string>();
    let r = Number(config.r);
    const { entries, saveParams } = this.mapAdapterFile(header, file, name, /^base_model\.model\./, (key, rest) => {
      if (!key.startsWith('base_model.model.')) throw new TunekitError('E_FORMAT', `${file}: tensor '${key}' is not under base_model.model.`);
      const m = rest.match(/^(.*)\.(lora_[AB])\.weight$/);
      if (!m) return undefined;
      const mod = this.baseParamOf(`${m[1]}.weight`)?.slice(0, -'.weight'.length);
      if (!mod) throw new TunekitError('E_FORMAT', `${file}: '${key}' adapts a module this ${this.modelType} ${this.task} model does not have`);
      modules.add(mod);
      if (m[2] === 'lora_A') r = header.tensors.get(key)!.shape[0];
      return `${mod}.${m[2]}.${name}.weight`;
    });
    if (modules.size === 0) throw new TunekitError('E_FORMAT', `${file}: no lora_A/lora_B tensors`);
    const l: ResolvedLoRA = {
      r, alpha: Number(config.lora_alpha ?? 8), dropout: Number(config.lora_dropout ?? 0), rslora: Boolean(config.use_rslora), seed: 0,
      modules: [...modules], modulesToSave: (config.modules_to_save as string[] | null) ?? [], saveParams,
      targetModules: (config.target_modules as string[] | string) ?? [...modules],
    };
    // As PEFT: the base is frozen under an adapter; the adapter itself trains only when asked to.
    await this.addNative(name, l, () => addon.addLora(this.h, { adapter: name, modules: l.modules, modulesToSave: l.saveParams, r: l.r, alpha: l.alpha, dropout: l.dropout, rslora: l.rslora, seed: 0 }),
      Boolean(options.trainable), options.activate ?? true, { file, entries });
  }

  private async loadPrefixAdapter(name: string, config: Record<string, unknown>, header: ReturnType<typeof readHeader>, file: string,
    options: { trainable?: boolean; activate?: boolean }): Promise<void> {
    this.checkFreeName(name);
    const table = header.tensors.get('prompt_embeddings');
    if (!table) throw new TunekitError('E_FORMAT', `${file}: no prompt_embeddings tensor`);
    const n = Number(config.num_virtual_tokens);
    const { layers, kvHeads, headDim } = kvShape(this);
    if (table.shape.length !== 2 || table.shape[0] !== n || table.shape[1] !== layers * 2 * kvHeads * headDim) {
      throw new TunekitError('E_SHAPE', `${file}: prompt_embeddings is [${table.shape}] but this model needs [${n}, ${layers * 2 * kvHeads * headDim}] (${layers} layers x 2 x ${kvHeads} heads x ${headDim})`);
    }
    // Saved prefixes are final keys/values (PEFT saves a projection's output), so they load as a plain table.
    const { entries, saveParams } = this.mapAdapterFile(header, file, name, /^base_model\.(model\.)?/,
      (key) => (key === 'prompt_embeddings' ? `prefix_encoder.${name}.embedding.weight` : undefined));
    const p: ResolvedPrefix = { kind: 'prefix', numVirtualTokens: n, projection: false, encoderHiddenSize: kvHeads * headDim, modulesToSave: (config.modules_to_save as string[] | null) ?? [], saveParams, seed: 0 };
    await this.addNative(name, p, () => addon.addPrefix(this.h, { adapter: name, numVirtualTokens: n, projection: false, encoderHiddenSize: 0, modulesToSave: saveParams, seed: 0 }),
      Boolean(options.trainable), options.activate ?? true, { file, entries });
  }

  private async loadBottleneckAdapter(name: string, config: Record<string, unknown>, header: ReturnType<typeof readHeader>, file: string,
    options: { trainable?: boolean; activate?: boolean }): Promise<void> {
    this.checkFreeName(name);
    const modules = new Set<string>();
    const { entries, saveParams } = this.mapAdapterFile(header, file, name, /^base_model\.model\./, (key, rest) => {
      const m = rest.match(/^(.*)\.adapter\.(down|up)\.(weight|bias)$/);
      if (!m) return undefined;
      const mod = this.baseParamOf(`${m[1]}.weight`)?.slice(0, -'.weight'.length);
      if (!mod) throw new TunekitError('E_FORMAT', `${file}: '${key}' follows a module this ${this.modelType} ${this.task} model does not have`);
      modules.add(mod);
      return `${mod}.adapter.${name}.${m[2]}.${m[3]}`;
    });
    if (modules.size === 0) throw new TunekitError('E_FORMAT', `${file}: no adapter tensors`);
    const a: ResolvedAdapter = {
      kind: 'bottleneck', bottleneckSize: Number(config.bottleneck_size), reductionFactor: (config.reduction_factor as number | null) ?? undefined,
      nonlinearity: String(config.non_linearity ?? 'relu'), modules: [...modules], modulesToSave: (config.modules_to_save as string[] | null) ?? [], saveParams, seed: 0,
    };
    await this.addNative(name, a, () => addon.addBottleneck(this.h, { adapter: name, modules: a.modules, bottleneckSize: a.bottleneckSize, nonlinearity: a.nonlinearity, modulesToSave: saveParams, seed: 0 }),
      Boolean(options.trainable), options.activate ?? true, { file, entries });
  }

  private async loadPromptAdapter(name: string, config: Record<string, unknown>, header: ReturnType<typeof readHeader>, file: string,
    options: { trainable?: boolean; activate?: boolean }): Promise<void> {
    this.checkFreeName(name);
    const prompt = header.tensors.get('prompt_embeddings');
    if (!prompt) throw new TunekitError('E_FORMAT', `${file}: no prompt_embeddings tensor`);
    const n = Number(config.num_virtual_tokens);
    const hidden = this.parameters().find((q) => /(wte|embed_tokens|word_embeddings)\.weight$/.test(q.name))!.shape[1];
    if (prompt.shape.length !== 2 || prompt.shape[0] !== n || prompt.shape[1] !== hidden) {
      throw new TunekitError('E_SHAPE', `${file}: prompt_embeddings is [${prompt.shape}] but this model needs [${n}, ${hidden}]`);
    }
    if (Number(config.num_transformer_submodules ?? 1) !== 1) throw new TunekitError('E_FORMAT', `${file}: prompts for encoder-decoder models are not supported`);
    const { entries, saveParams } = this.mapAdapterFile(header, file, name, /^base_model\.(model\.)?/,
      (key) => (key === 'prompt_embeddings' ? `prompt_encoder.${name}.embedding.weight` : undefined));
    const p: ResolvedPrompt = {
      numVirtualTokens: n, initText: (config.prompt_tuning_init_text as string | null) ?? undefined, tokenizerNameOrPath: (config.tokenizer_name_or_path as string | null) ?? undefined,
      modulesToSave: (config.modules_to_save as string[] | null) ?? [], saveParams, seed: 0,
    };
    await this.addNative(name, { ...p, kind: 'prompt' }, () => addon.addPrompt(this.h, { adapter: name, numVirtualTokens: n, modulesToSave: saveParams, seed: 0 }),
      Boolean(options.trainable), options.activate ?? true, { file, entries });
  }

  /** config.json + model.safetensors, loadable by transformers' from_pretrained. Each file lands atomically. */
  async savePretrained(dir: string, options: { includeAdapters?: boolean } = {}): Promise<void> {
    fs.mkdirSync(dir, { recursive: true });
    const config: HFConfig = { ...this.config, architectures: [ARCHITECTURES[this.modelType][this.task]], dtype: this.dtype };
    if (this.task === 'sequence-classification') {
      config.num_labels = this.numLabels;
      const labels = this.labelNames;
      config.id2label = Object.fromEntries(labels.map((l, i) => [String(i), l]));
      config.label2id = Object.fromEntries(labels.map((l, i) => [l, i]));
    }
    // Adapter weights stay out of the base checkpoint (saveAdapter writes them), except for a trainer checkpoint.
    // A merged adapter's trained copies of its modules_to_save are the model's head from now on.
    let names: string[] = [];
    let keys: string[] | undefined;
    if (!options.includeAdapters && this.adapterInfo.size > 0) {
      const over = new Map<string, string>();
      if (this.active && this.merged) {
        for (const base of this.adapterInfo.get(this.active)!.saveParams) over.set(base, copyName(base, this.active));
      }
      const base = this.params.filter((p) => !/\.(lora_[AB]|modules_to_save|adapter)\./.test(p.name) && !/^(prompt|prefix)_encoder\./.test(p.name)).map((p) => p.name);
      names = base.map((n) => over.get(n) ?? n);
      keys = base;
    }
    await atomicWrite(path.join(dir, 'model.safetensors'), (tmp) => serial(() => addon.saveSafetensors(this.h, tmp, names, keys)));
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

type AdapterInfo = ResolvedLoRA | (ResolvedPrompt & { kind: 'prompt' }) | ResolvedAdapter | ResolvedPrefix;

/** The name of an adapter's own trainable copy of a base parameter (PEFT's modules_to_save). */
function copyName(base: string, adapter: string): string {
  const dot = base.lastIndexOf('.');
  return `${base.slice(0, dot)}.modules_to_save.${adapter}${base.slice(dot)}`;
}

/** Whether a parameter belongs to the named adapter (its LoRA matrices or its modules_to_save copies). */
function ownedBy(param: string, adapter: string): boolean {
  return param.includes(`.lora_A.${adapter}.`) || param.includes(`.lora_B.${adapter}.`) || param.includes(`.modules_to_save.${adapter}.`)
    || param === `prompt_encoder.${adapter}.embedding.weight` || param.includes(`.adapter.${adapter}.`) || param.startsWith(`prefix_encoder.${adapter}.`);
}

function readAdapterFolder(dir: string) {
  if (typeof dir !== 'string' || !fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new TunekitError('E_FILE', `adapter folder ${dir} does not exist`);
  const cfgFile = path.join(dir, 'adapter_config.json');
  if (!fs.existsSync(cfgFile)) throw new TunekitError('E_FILE', `${cfgFile} does not exist`);
  let config: Record<string, unknown>;
  try {
    config = JSON.parse(fs.readFileSync(cfgFile, 'utf8'));
  } catch (e) {
    throw new TunekitError('E_FORMAT', `${cfgFile}: ${(e as Error).message}`);
  }
  const file = path.join(dir, 'adapter_model.safetensors');
  if (!fs.existsSync(file)) throw new TunekitError('E_FILE', `${file} does not exist (adapter_model.bin is not read: use safetensors)`);
  return { config, header: readHeader(file), file };
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
