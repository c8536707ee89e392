/** Prefix tuning as PEFT 0.21's PREFIX_TUNING: options and adapter_config.json. */
import { TunekitError } from '../errors';
import type { Model } from '../model';
import { modulesToSaveParams, TASK_TYPES } from './lora';

export interface PrefixTuningOptions {
  numVirtualTokens?: number;
  /** PEFT's prefix_projection: train the prefix through an MLP (Linear, Tanh, Linear); saved files hold its output. */
  prefixProjection?: boolean;
  encoderHiddenSize?: number;
  modulesToSave?: string[];
  seed?: number;
}

export interface ResolvedPrefix {
  kind: 'prefix'; numVirtualTokens: number; projection: boolean; encoderHiddenSize: number; modulesToSave: string[]; saveParams: string[]; seed: number;
}

/** Keys/values are stored per key-value head (PEFT does the same for grouped-query attention). */
export function kvShape(model: Model): { layers: number; kvHeads: number; headDim: number } {
  const c = model.config;
  const layers = Number(c.n_layer ?? c.n_layers ?? c.num_hidden_layers);
  const heads = Number(c.n_head ?? c.n_heads ?? c.num_attention_heads);
  const hidden = Number(c.n_embd ?? c.dim ?? c.hidden_size);
  const kvHeads = Number(c.num_key_value_heads ?? heads);
  const headDim = Number(c.head_dim ?? hidden / heads);
  return { layers, kvHeads, headDim };
}

export function resolvePrefix(model: Model, o: PrefixTuningOptions): ResolvedPrefix {
  const n = o.numVirtualTokens ?? 8;
  if (!Number.isInteger(n) || n < 1) throw new TunekitError('E_ARG', `numVirtualTokens must be a positive integer, got ${o.numVirtualTokens}`);
  const { kvHeads, headDim } = kvShape(model);
  const encoderHiddenSize = o.encoderHiddenSize ?? kvHeads * headDim;
  if (!Number.isInteger(encoderHiddenSize) || encoderHiddenSize < 1) throw new TunekitError('E_ARG', `encoderHiddenSize must be a positive integer, got ${o.encoderHiddenSize}`);
  const modulesToSave = o.modulesToSave ?? (model.task === 'sequence-classification' ? ['classifier', 'score'] : []);
  return { kind: 'prefix', numVirtualTokens: n, projection: Boolean(o.prefixProjection), encoderHiddenSize, modulesToSave, saveParams: modulesToSaveParams(model, modulesToSave), seed: o.seed ?? 0 };
}

export function prefixConfigJson(model: Model, p: ResolvedPrefix, basePath: string | null): Record<string, unknown> {
  const { layers, kvHeads, headDim } = kvShape(model);
  return {
    peft_type: 'PREFIX_TUNING', task_type: TASK_TYPES[model.task] ?? null, base_model_name_or_path: basePath, revision: null, inference_mode: true,
    num_virtual_tokens: p.numVirtualTokens, token_dim: kvHeads * headDim, num_transformer_submodules: 1, num_attention_heads: kvHeads,
    num_layers: layers, encoder_hidden_size: p.encoderHiddenSize, prefix_projection: p.projection,
    modules_to_save: p.modulesToSave.length ? p.modulesToSave : null, auto_mapping: null, peft_version: '0.21.0',
  };
}

/** Prefix tuning (Li & Liang 2021): trainable key/value prefixes in every layer; the model is frozen. */
export class PrefixTuning {
  readonly name = 'prefix';
  constructor(readonly options: PrefixTuningOptions = {}) {}

  async apply(model: Model, opts: { adapterName?: string } = {}): Promise<void> {
    await model.addPrefixTuning(opts.adapterName ?? 'default', this.options);
  }
}
