/** LoRA (Hu et al. 2021) as PEFT 0.21 defines it: options, module matching, and PEFT's files. */
import { TunekitError } from '../errors';
import type { Model } from '../model';
import { commonConfig, linearModules, matchesTarget, PeftMethod, registerMethod, Resolved, resolveModulesToSave } from './method';
import { checkOptions } from '../validate';

export interface LoRAOptions {
  r?: number;
  /** lora_alpha: the update is scaled by alpha / r (alpha / sqrt(r) with useRslora). Default 8, as PEFT. */
  alpha?: number;
  dropout?: number;
  /**
   * Which linear layers get an adapter. A list matches a module whose name equals an entry or ends with "." + entry;
   * a string or RegExp must match the whole module name (PEFT's rules). Default: PEFT's per-architecture default
   * (lib/families.ts: gpt2 c_attn; llama and qwen2 q_proj, v_proj; distilbert q_lin, v_lin; bert query, value).
   */
  targetModules?: string[] | string | RegExp;
  /** Modules that train a full copy of their own (e.g. the classification head). Default for classification: PEFT's ["classifier", "score"]. */
  modulesToSave?: string[];
  useRslora?: boolean;
  /** Seeds the Kaiming-uniform initialisation of lora_A. */
  seed?: number;
}

export interface ResolvedLoRA extends Resolved {
  r: number;
  alpha: number;
  dropout: number;
  rslora: boolean;
  seed: number;
  modules: string[];
  targetModules: string[] | string;
}

const OPTIONS = ['r', 'alpha', 'dropout', 'targetModules', 'modulesToSave', 'useRslora', 'seed'];

export const loraMethod: PeftMethod<LoRAOptions, ResolvedLoRA> = registerMethod<LoRAOptions, ResolvedLoRA>({
  name: 'lora',
  peftType: 'LORA',
  promptLearning: false,

  resolve(model, o) {
    checkOptions(o, OPTIONS, 'LoRA');
    const r = o.r ?? 8;
    if (!Number.isInteger(r) || r < 1) throw new TunekitError('E_ARG', `LoRA r must be a positive integer, got ${o.r}`);
    const alpha = o.alpha ?? 8;
    if (!(alpha > 0)) throw new TunekitError('E_ARG', `LoRA alpha must be positive, got ${o.alpha}`);
    const dropout = o.dropout ?? 0;
    if (!(dropout >= 0 && dropout < 1)) throw new TunekitError('E_ARG', `LoRA dropout must be in [0, 1), got ${o.dropout}`);
    const target = o.targetModules ?? model.family.lora;
    const modules = linearModules(model).filter((m) => matchesTarget(m, target));
    if (modules.length === 0)
      throw new TunekitError('E_ARG', `LoRA targetModules ${String(target)} match no linear layer of this ${model.modelType} model`);
    const targetModules = target instanceof RegExp ? target.source : target;
    return {
      r,
      alpha,
      dropout,
      rslora: o.useRslora ?? false,
      seed: o.seed ?? 0,
      modules,
      targetModules,
      ...resolveModulesToSave(model, o.modulesToSave),
    };
  },

  nativeSpec: (_, l) => ({ modules: l.modules, r: l.r, alpha: l.alpha, dropout: l.dropout, rslora: l.rslora, seed: l.seed }),

  fileKey(param, adapter) {
    const m = param.match(/^(.*)\.(lora_[AB])\.([^.]+)\.weight$/);
    return m && m[3] === adapter ? `base_model.model.${m[1]}.${m[2]}.weight` : undefined;
  },

  /** adapter_config.json as PEFT 0.21 writes it for LoRA. */
  configJson: (model, l, basePath) => ({
    ...commonConfig(model, 'LORA', l, basePath),
    r: l.r,
    lora_alpha: l.alpha,
    lora_dropout: l.dropout,
    target_modules: l.targetModules,
    exclude_modules: null,
    fan_in_fan_out: model.family.conv1d,
    bias: 'none',
    use_rslora: l.rslora,
    init_lora_weights: true,
    layers_to_transform: null,
    layers_pattern: null,
    rank_pattern: {},
    alpha_pattern: {},
    use_dora: false,
    lora_bias: false,
    layer_replication: null,
    megatron_config: null,
    megatron_core: 'megatron.core',
    loftq_config: {},
    eva_config: null,
    corda_config: null,
    trainable_token_indices: null,
    target_parameters: null,
    auto_mapping: null,
    peft_version: '0.21.0',
  }),

  fromFile(model, adapter, f) {
    const c = f.config;
    for (const k of ['rank_pattern', 'alpha_pattern'] as const) {
      const v = c.json[k];
      if (v !== undefined && v !== null && (typeof v !== 'object' || Object.keys(v).length))
        throw new TunekitError('E_FORMAT', `${c.file}: per-module ${k} is not supported`);
    }
    if (c.bool('use_dora', false)) throw new TunekitError('E_FORMAT', `${c.file}: DoRA adapters are not supported`);
    const modules = new Set<string>();
    let r = c.num('r', { integer: true, min: 1 }, 8);
    const module = (key: string, rest: string): [string, string] | undefined => {
      const m = rest.match(/^(.*)\.(lora_[AB])\.weight$/);
      if (!m) return undefined;
      if (!key.startsWith('base_model.model.'))
        throw new TunekitError('E_FORMAT', `${f.file}: tensor '${key}' is not under base_model.model.`);
      const mod = f.baseParam(`${m[1]}.weight`)?.slice(0, -'.weight'.length);
      if (!mod)
        throw new TunekitError('E_FORMAT', `${f.file}: '${key}' adapts a module this ${model.modelType} ${model.task} model does not have`);
      return [mod, m[2]];
    };
    for (const t of f.tensors) {
      const found = module(t.key, t.rest);
      if (!found) continue;
      modules.add(found[0]);
      if (found[1] === 'lora_A') r = t.entry.shape[0];
    }
    if (modules.size === 0) throw new TunekitError('E_FORMAT', `${f.file}: no lora_A/lora_B tensors`);
    return {
      settings: {
        r,
        alpha: c.num('lora_alpha', { min: 0, minExclusive: true }, 8),
        dropout: c.num('lora_dropout', { min: 0, max: 1, maxExclusive: true }, 0),
        rslora: c.bool('use_rslora', false),
        seed: 0,
        modules: [...modules],
        modulesToSave: c.modulesToSave(),
        targetModules: c.modules('target_modules') ?? [...modules],
      },
      own(key, rest) {
        const found = module(key, rest);
        return found ? `${found[0]}.${found[1]}.${adapter}.weight` : undefined;
      },
    };
  },
});

/** LoRA (Hu et al. 2021): trainable low-rank updates beside frozen linear layers. */
export class LoRA {
  readonly name = 'lora';
  constructor(readonly options: LoRAOptions = {}) {}

  /** Freezes the base model and adds this adapter under `adapterName` (default "default"), active. */
  async apply(model: Model, opts: { adapterName?: string } = {}): Promise<void> {
    await model.addAdapter(loraMethod, opts.adapterName ?? 'default', this.options);
  }
}
