/**
 * (IA)^3 (Liu et al. 2022) as PEFT 0.21's IA3: learned vectors that rescale the keys, values and feed-forward of a
 * frozen model (the feed-forward modules' inputs, the other targets' outputs). Options, defaults and PEFT's files.
 */
import { TunekitError } from '../errors';
import type { Model } from '../model';
import { commonConfig, linearModules, matchesTarget, PeftMethod, registerMethod, Resolved, resolveModulesToSave } from './method';
import { checkOptions } from '../validate';

export interface IA3Options {
  /** The linear layers to rescale, by PEFT's rules (see LoRAOptions.targetModules). Default: PEFT's per family. */
  targetModules?: string[] | string | RegExp;
  /** Which of the targets are feed-forward layers, whose input (not output) is rescaled. Default: PEFT's per family. */
  feedforwardModules?: string[] | string | RegExp;
  modulesToSave?: string[];
}

export interface ResolvedIA3 extends Resolved {
  modules: string[];
  feedforward: string[];
  targetModules: string[] | string;
  feedforwardModules: string[] | string;
}

const OPTIONS = ['targetModules', 'feedforwardModules', 'modulesToSave'];
const source = (t: string[] | string | RegExp) => (t instanceof RegExp ? t.source : t);

export const ia3Method: PeftMethod<IA3Options, ResolvedIA3> = registerMethod<IA3Options, ResolvedIA3>({
  name: 'ia3',
  peftType: 'IA3',
  promptLearning: false,

  resolve(model, o) {
    checkOptions(o, OPTIONS, 'IA3');
    const target = o.targetModules ?? model.family.ia3.targets;
    const ff = o.feedforwardModules ?? model.family.ia3.feedforward;
    const modules = linearModules(model).filter((m) => matchesTarget(m, target));
    if (modules.length === 0)
      throw new TunekitError('E_ARG', `IA3 targetModules ${String(target)} match no linear layer of this ${model.modelType} model`);
    const feedforward = linearModules(model).filter((m) => matchesTarget(m, ff));
    const stray = feedforward.filter((m) => !modules.includes(m));
    if (stray.length) throw new TunekitError('E_ARG', `IA3 feedforwardModules must be among targetModules; ${stray[0]} is not`);
    return {
      modules,
      feedforward,
      targetModules: source(target),
      feedforwardModules: source(ff),
      ...resolveModulesToSave(model, o.modulesToSave),
    };
  },

  nativeSpec: (_, a) => ({ modules: a.modules, feedforwardModules: a.feedforward }),

  fileKey(param, adapter) {
    const m = param.match(/^(.*)\.ia3_l\.([^.]+)$/);
    return m && m[2] === adapter ? `base_model.model.${m[1]}.ia3_l` : undefined;
  },

  configJson: (model, a, basePath) => ({
    ...commonConfig(model, 'IA3', a, basePath),
    target_modules: a.targetModules,
    exclude_modules: null,
    feedforward_modules: a.feedforwardModules,
    fan_in_fan_out: model.family.conv1d,
    init_ia3_weights: true,
    auto_mapping: null,
    peft_version: '0.21.0',
  }),

  fromFile(model, adapter, f) {
    const module = (key: string, rest: string) => {
      const m = rest.match(/^(.*)\.ia3_l$/);
      if (!m) return undefined;
      const mod = f.baseParam(`${m[1]}.weight`)?.slice(0, -'.weight'.length);
      if (!mod)
        throw new TunekitError(
          'E_FORMAT',
          `${f.file}: '${key}' rescales a module this ${model.modelType} ${model.task} model does not have`,
        );
      return mod;
    };
    const modules = f.tensors.map((t) => module(t.key, t.rest)).filter((m): m is string => m !== undefined);
    // As PEFT decides on loading: by the config's feedforward_modules (the core then checks each vector's shape).
    const feedforward = modules.filter((m) => matchesTarget(m, f.config.modules('feedforward_modules') ?? []));
    if (modules.length === 0) throw new TunekitError('E_FORMAT', `${f.file}: no ia3_l tensors`);
    return {
      settings: {
        modules,
        feedforward,
        targetModules: f.config.modules('target_modules') ?? modules,
        feedforwardModules: f.config.modules('feedforward_modules') ?? feedforward,
        modulesToSave: f.config.modulesToSave(),
      },
      own: (key, rest) => {
        const mod = module(key, rest);
        return mod ? `${mod}.ia3_l.${adapter}` : undefined;
      },
    };
  },
});

/** (IA)^3: learned rescaling vectors on keys, values and feed-forward; the base is frozen. Folds into the weights. */
export class IA3 {
  readonly name = 'ia3';
  constructor(readonly options: IA3Options = {}) {}

  async apply(model: Model, opts: { adapterName?: string } = {}): Promise<void> {
    await model.addAdapter(ia3Method, opts.adapterName ?? 'default', this.options);
  }
}
