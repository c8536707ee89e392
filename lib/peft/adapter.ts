/**
 * Bottleneck adapters (Houlsby et al. 2019). PEFT has no such method, so the file format is tunekit's own, in PEFT's
 * shape: adapter_config.json with "peft_type": "TUNEKIT_HOULSBY_ADAPTER" and adapter_model.safetensors holding
 * base_model.model.<module>.adapter.{down,up}.{weight,bias} (plus modules_to_save as PEFT keys them).
 */
import { TunekitError } from '../errors';
import type { Model } from '../model';
import { modulesToSaveParams, TASK_TYPES } from './lora';

export interface AdapterOptions {
  /** Bottleneck width = hidden size / reductionFactor (default 16), unless bottleneckSize is given. */
  reductionFactor?: number;
  bottleneckSize?: number;
  /** relu (default), gelu, gelu_new, silu. */
  nonlinearity?: string;
  modulesToSave?: string[];
  seed?: number;
}

export interface ResolvedAdapter {
  kind: 'bottleneck'; bottleneckSize: number; reductionFactor?: number; nonlinearity: string;
  modules: string[]; modulesToSave: string[]; saveParams: string[]; seed: number;
}

/** The modules an adapter follows: each block's attention output projection and feed-forward output projection. */
export function adapterSites(model: Model): string[] {
  const out = /(\.|^)(attn\.c_proj|mlp\.c_proj|self_attn\.o_proj|mlp\.down_proj|attention\.out_lin|ffn\.lin2)$/;
  return model.parameters().filter((p) => p.name.endsWith('.weight')).map((p) => p.name.slice(0, -'.weight'.length))
    .filter((m) => out.test(m) && !/\.(lora_[AB]|modules_to_save|adapter)\./.test(m));
}

export function hiddenSize(model: Model): number {
  const c = model.config;
  return Number(c.n_embd ?? c.dim ?? c.hidden_size);
}

export function resolveAdapter(model: Model, o: AdapterOptions): ResolvedAdapter {
  const hidden = hiddenSize(model);
  if (o.bottleneckSize !== undefined && (!Number.isInteger(o.bottleneckSize) || o.bottleneckSize < 1)) throw new TunekitError('E_ARG', `bottleneckSize must be a positive integer, got ${o.bottleneckSize}`);
  if (o.reductionFactor !== undefined && !(o.reductionFactor > 0)) throw new TunekitError('E_ARG', `reductionFactor must be positive, got ${o.reductionFactor}`);
  const bottleneckSize = o.bottleneckSize ?? Math.max(1, Math.round(hidden / (o.reductionFactor ?? 16)));
  const modules = adapterSites(model);
  if (modules.length === 0) throw new TunekitError('E_CONFIG', `found no attention/feed-forward output projections in this ${model.modelType} model`);
  const modulesToSave = o.modulesToSave ?? (model.task === 'sequence-classification' ? ['classifier', 'score'] : []);
  return {
    kind: 'bottleneck', bottleneckSize, reductionFactor: o.bottleneckSize === undefined ? (o.reductionFactor ?? 16) : undefined,
    nonlinearity: o.nonlinearity ?? 'relu', modules, modulesToSave, saveParams: modulesToSaveParams(model, modulesToSave), seed: o.seed ?? 0,
  };
}

export function adapterConfigJson(model: Model, a: ResolvedAdapter, basePath: string | null): Record<string, unknown> {
  return {
    peft_type: 'TUNEKIT_HOULSBY_ADAPTER', task_type: TASK_TYPES[model.task] ?? null, base_model_name_or_path: basePath, inference_mode: true,
    bottleneck_size: a.bottleneckSize, reduction_factor: a.reductionFactor ?? null, non_linearity: a.nonlinearity,
    placement: 'after the attention output projection and the feed-forward output projection of every block, before the residual add',
    target_modules: a.modules, modules_to_save: a.modulesToSave.length ? a.modulesToSave : null, init: 'down: U(-1/sqrt(hidden), 1/sqrt(hidden)); up: zeros',
    format_version: 1,
  };
}

/** Houlsby bottleneck adapters: small trainable MLPs with a residual inside every block; the base is frozen. */
export class Adapter {
  readonly name = 'adapter';
  constructor(readonly options: AdapterOptions = {}) {}

  async apply(model: Model, opts: { adapterName?: string } = {}): Promise<void> {
    await model.addBottleneckAdapter(opts.adapterName ?? 'default', this.options);
  }
}
