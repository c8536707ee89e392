/**
 * Bottleneck adapters (Houlsby et al. 2019). PEFT has no such method, so the file format is tunekit's own, in PEFT's
 * shape: adapter_config.json with "peft_type": "TUNEKIT_HOULSBY_ADAPTER" and adapter_model.safetensors holding
 * base_model.model.<module>.adapter.{down,up}.{weight,bias} (plus modules_to_save as PEFT keys them).
 */
import { TunekitError } from '../errors';
import { matchesSuffix } from '../families';
import type { Model } from '../model';
import { commonConfig, linearModules, PeftMethod, registerMethod, Resolved, resolveModulesToSave } from './method';
import { checkOptions } from '../validate';

export interface AdapterOptions {
  /** Bottleneck width = hidden size / reductionFactor (default 16), unless bottleneckSize is given. */
  reductionFactor?: number;
  bottleneckSize?: number;
  /** relu (default), gelu, gelu_new, silu. */
  nonlinearity?: string;
  modulesToSave?: string[];
  seed?: number;
}

export interface ResolvedAdapter extends Resolved {
  bottleneckSize: number;
  reductionFactor?: number;
  nonlinearity: string;
  modules: string[];
  seed: number;
}

const OPTIONS = ['reductionFactor', 'bottleneckSize', 'nonlinearity', 'modulesToSave', 'seed'];

/** The modules an adapter follows: each block's attention output projection and feed-forward output projection. */
export function adapterSites(model: Model): string[] {
  return linearModules(model).filter((m) => matchesSuffix(m, model.family.adapterSites));
}

export const bottleneckMethod: PeftMethod<AdapterOptions, ResolvedAdapter> = registerMethod<AdapterOptions, ResolvedAdapter>({
  name: 'bottleneck',
  peftType: 'TUNEKIT_HOULSBY_ADAPTER',
  promptLearning: false,

  resolve(model, o) {
    checkOptions(o, OPTIONS, 'Adapter');
    const hidden = model.dims.hiddenSize;
    if (o.bottleneckSize !== undefined && (!Number.isInteger(o.bottleneckSize) || o.bottleneckSize < 1))
      throw new TunekitError('E_ARG', `bottleneckSize must be a positive integer, got ${o.bottleneckSize}`);
    if (o.reductionFactor !== undefined && !(o.reductionFactor > 0))
      throw new TunekitError('E_ARG', `reductionFactor must be positive, got ${o.reductionFactor}`);
    const bottleneckSize = o.bottleneckSize ?? Math.max(1, Math.round(hidden / (o.reductionFactor ?? 16)));
    const modules = adapterSites(model);
    if (modules.length === 0)
      throw new TunekitError('E_CONFIG', `found no attention/feed-forward output projections in this ${model.modelType} model`);
    return {
      bottleneckSize,
      reductionFactor: o.bottleneckSize === undefined ? (o.reductionFactor ?? 16) : undefined,
      nonlinearity: o.nonlinearity ?? 'relu',
      modules,
      seed: o.seed ?? 0,
      ...resolveModulesToSave(model, o.modulesToSave),
    };
  },

  nativeSpec: (_, a) => ({ modules: a.modules, bottleneckSize: a.bottleneckSize, nonlinearity: a.nonlinearity, seed: a.seed }),

  fileKey(param, adapter) {
    const b = param.match(/^(.*)\.adapter\.([^.]+)\.(down|up)\.(weight|bias)$/);
    return b && b[2] === adapter ? `base_model.model.${b[1]}.adapter.${b[3]}.${b[4]}` : undefined;
  },

  configJson: (model, a, basePath) => ({
    ...commonConfig(model, 'TUNEKIT_HOULSBY_ADAPTER', a, basePath),
    bottleneck_size: a.bottleneckSize,
    reduction_factor: a.reductionFactor ?? null,
    non_linearity: a.nonlinearity,
    placement: 'after the attention output projection and the feed-forward output projection of every block, before the residual add',
    target_modules: a.modules,
    init: 'down: U(-1/sqrt(hidden), 1/sqrt(hidden)); up: zeros',
    format_version: 1,
  }),

  fromFile(model, adapter, f) {
    const site = (key: string, rest: string) => {
      const m = rest.match(/^(.*)\.adapter\.(down|up)\.(weight|bias)$/);
      if (!m) return undefined;
      const mod = f.baseParam(`${m[1]}.weight`)?.slice(0, -'.weight'.length);
      if (!mod)
        throw new TunekitError(
          'E_FORMAT',
          `${f.file}: '${key}' follows a module this ${model.modelType} ${model.task} model does not have`,
        );
      return { mod, part: `${m[2]}.${m[3]}` };
    };
    const modules = new Set<string>();
    for (const t of f.tensors) {
      const s = site(t.key, t.rest);
      if (s) modules.add(s.mod);
    }
    if (modules.size === 0) throw new TunekitError('E_FORMAT', `${f.file}: no adapter tensors`);
    return {
      settings: {
        bottleneckSize: f.config.num('bottleneck_size', { integer: true, min: 1 }),
        reductionFactor: f.config.optionalNum('reduction_factor', { min: 0, minExclusive: true }),
        nonlinearity: f.config.str('non_linearity') ?? 'relu',
        modules: [...modules],
        modulesToSave: f.config.modulesToSave(),
        seed: 0,
      },
      own(key, rest) {
        const s = site(key, rest);
        return s ? `${s.mod}.adapter.${adapter}.${s.part}` : undefined;
      },
    };
  },
});

/** Houlsby bottleneck adapters: small trainable MLPs with a residual inside every block; the base is frozen. */
export class Adapter {
  readonly name = 'adapter';
  constructor(readonly options: AdapterOptions = {}) {}

  async apply(model: Model, opts: { adapterName?: string } = {}): Promise<void> {
    await model.addAdapter(bottleneckMethod, opts.adapterName ?? 'default', this.options);
  }
}
