/** LoRA as PEFT 0.21 defines it: options, module matching, and adapter_config.json. */
import { TunekitError } from '../errors';
import type { Model } from '../model';

export interface LoRAOptions {
  r?: number;
  /** lora_alpha: the update is scaled by alpha / r (alpha / sqrt(r) with useRslora). Default 8, as PEFT. */
  alpha?: number;
  dropout?: number;
  /**
   * Which linear layers get an adapter. A list matches a module whose name equals an entry or ends with "." + entry;
   * a string or RegExp must match the whole module name (PEFT's rules). Default: PEFT's per-architecture default
   * (gpt2: c_attn; llama: q_proj, v_proj; distilbert: q_lin, v_lin).
   */
  targetModules?: string[] | string | RegExp;
  /** Modules that train a full copy of their own (e.g. the classification head). Default for classification: PEFT's ["classifier", "score"]. */
  modulesToSave?: string[];
  useRslora?: boolean;
  /** Seeds the Kaiming-uniform initialisation of lora_A. */
  seed?: number;
}

export const DEFAULT_TARGETS: Record<string, string[]> = { gpt2: ['c_attn'], llama: ['q_proj', 'v_proj'], distilbert: ['q_lin', 'v_lin'] };

export const TASK_TYPES: Record<string, string> = {
  'causal-lm': 'CAUSAL_LM', 'sequence-classification': 'SEQ_CLS', 'feature-extraction': 'FEATURE_EXTRACTION', 'masked-lm': 'MASKED_LM',
};

const EMBEDDING = /(^|\.)(wte|wpe|word_embeddings|position_embeddings|embed_tokens)$/;
const ADDED = /\.(lora_[AB]|modules_to_save|adapter)\./;

/** Names of the model's linear layers (2-D weights that are not embeddings or added adapter weights). */
export function linearModules(model: Model): string[] {
  return model.parameters()
    .filter((p) => p.name.endsWith('.weight') && p.shape.length === 2 && !ADDED.test(p.name))
    .map((p) => p.name.slice(0, -'.weight'.length))
    .filter((m) => !EMBEDDING.test(m));
}

export function matchesTarget(module: string, target: string[] | string | RegExp): boolean {
  if (target instanceof RegExp) return new RegExp(`^(?:${target.source})$`, target.flags.replace('g', '')).test(module);
  if (typeof target === 'string') return new RegExp(`^(?:${target})$`).test(module);
  return target.some((t) => module === t || module.endsWith(`.${t}`));
}

/** The base parameters a modules_to_save entry covers: every parameter of a module whose name ends with it (PEFT's rule). */
export function modulesToSaveParams(model: Model, modules: string[]): string[] {
  return model.parameters()
    .filter((p) => !ADDED.test(p.name))
    .filter((p) => {
      const mod = p.name.slice(0, p.name.lastIndexOf('.'));
      return modules.some((m) => mod === m || mod.endsWith(m));
    })
    .map((p) => p.name);
}

export interface ResolvedLoRA {
  r: number; alpha: number; dropout: number; rslora: boolean; seed: number;
  modules: string[]; modulesToSave: string[]; saveParams: string[]; targetModules: string[] | string;
}

export function resolveLoRA(model: Model, o: LoRAOptions): ResolvedLoRA {
  const r = o.r ?? 8;
  if (!Number.isInteger(r) || r < 1) throw new TunekitError('E_ARG', `LoRA r must be a positive integer, got ${o.r}`);
  const alpha = o.alpha ?? 8;
  if (!(alpha > 0)) throw new TunekitError('E_ARG', `LoRA alpha must be positive, got ${o.alpha}`);
  const dropout = o.dropout ?? 0;
  if (!(dropout >= 0 && dropout < 1)) throw new TunekitError('E_ARG', `LoRA dropout must be in [0, 1), got ${o.dropout}`);
  const target = o.targetModules ?? DEFAULT_TARGETS[model.modelType];
  const modules = linearModules(model).filter((m) => matchesTarget(m, target));
  if (modules.length === 0) throw new TunekitError('E_ARG', `LoRA targetModules ${String(target)} match no linear layer of this ${model.modelType} model`);
  const modulesToSave = o.modulesToSave ?? (model.task === 'sequence-classification' ? ['classifier', 'score'] : []);
  const saveParams = modulesToSaveParams(model, modulesToSave);
  const targetModules = target instanceof RegExp ? target.source : target;
  return { r, alpha, dropout, rslora: o.useRslora ?? false, seed: o.seed ?? 0, modules, modulesToSave, saveParams, targetModules };
}

/** adapter_config.json as PEFT 0.21 writes it for LoRA. */
export function loraConfigJson(model: Model, l: ResolvedLoRA, basePath: string | null): Record<string, unknown> {
  return {
    peft_type: 'LORA', task_type: TASK_TYPES[model.task] ?? null, base_model_name_or_path: basePath, revision: null, inference_mode: true,
    r: l.r, lora_alpha: l.alpha, lora_dropout: l.dropout, target_modules: l.targetModules, exclude_modules: null,
    fan_in_fan_out: model.modelType === 'gpt2', bias: 'none', use_rslora: l.rslora, modules_to_save: l.modulesToSave.length ? l.modulesToSave : null,
    init_lora_weights: true, layers_to_transform: null, layers_pattern: null, rank_pattern: {}, alpha_pattern: {}, use_dora: false,
    lora_bias: false, layer_replication: null, megatron_config: null, megatron_core: 'megatron.core', loftq_config: {}, eva_config: null,
    corda_config: null, trainable_token_indices: null, target_parameters: null, auto_mapping: null, peft_version: '0.21.0',
  };
}

/** LoRA (Hu et al. 2021): trainable low-rank updates beside frozen linear layers. */
export class LoRA {
  readonly name = 'lora';
  constructor(readonly options: LoRAOptions = {}) {}

  /** Freezes the base model and adds this adapter under `adapterName` (default "default"), active. */
  async apply(model: Model, opts: { adapterName?: string } = {}): Promise<void> {
    await model.addLoRA(opts.adapterName ?? 'default', this.options);
  }
}
