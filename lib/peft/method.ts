/**
 * What a PEFT method is to the TS layer: its options resolved against a model, the spec the core reads, and PEFT's
 * files both ways (adapter_config.json, adapter_model.safetensors keys). Each method file (lora.ts, prompt.ts, ...)
 * implements PeftMethod and registers it; Model only talks to this interface.
 */
import { TunekitError } from '../errors';
import type { Task } from '../families';
import { matchesSuffix } from '../families';
import type { Model } from '../model';
import type { RawAdapterSpec } from '../native';
import type { Header, HeaderEntry } from '../safetensors';
import { checkNumber, NumberRule, show } from '../validate';

/** Settings every method resolves: the user's modules_to_save and the base parameters they cover. */
export interface Resolved {
  modulesToSave: string[];
  saveParams: string[];
}

/** Typed reads of an adapter_config.json: a field of the wrong type or range is E_FORMAT naming the file and the field. */
export class AdapterConfig {
  constructor(
    readonly json: Record<string, unknown>,
    readonly file: string,
  ) {}
  /** PEFT writes null for an unset field. */
  private get(key: string): unknown {
    return this.json[key] === null ? undefined : this.json[key];
  }
  num(key: string, rule: NumberRule, fallback?: number): number {
    return checkNumber(this.get(key), `${this.file}: ${key}`, { ...rule, code: 'E_FORMAT' }, fallback);
  }
  /** A number when present, else undefined. */
  optionalNum(key: string, rule: NumberRule): number | undefined {
    return this.get(key) === undefined ? undefined : this.num(key, rule);
  }
  bool(key: string, fallback: boolean): boolean {
    const v = this.get(key) ?? fallback;
    if (typeof v !== 'boolean') throw new TunekitError('E_FORMAT', `${this.file}: ${key} must be true or false, got ${show(v)}`);
    return v;
  }
  str(key: string): string | undefined {
    const v = this.get(key);
    if (v !== undefined && typeof v !== 'string')
      throw new TunekitError('E_FORMAT', `${this.file}: ${key} must be a string, got ${show(v)}`);
    return v as string | undefined;
  }
  /** A module list as PEFT writes one: a list of names, or one regular expression as a string. */
  modules(key: string): string[] | string | undefined {
    const v = this.get(key);
    if (v === undefined || typeof v === 'string') return v;
    if (Array.isArray(v) && v.every((m) => typeof m === 'string')) return v as string[];
    throw new TunekitError('E_FORMAT', `${this.file}: ${key} must be a list of module names or a string, got ${show(v)}`);
  }
  /** modules_to_save: a list of names or nothing. */
  modulesToSave(): string[] {
    const v = this.modules('modules_to_save');
    if (typeof v === 'string') throw new TunekitError('E_FORMAT', `${this.file}: modules_to_save must be a list of module names`);
    return v ?? [];
  }
}

/** One of PEFT's adapter files, seen through the model it is being loaded into. */
export interface AdapterFile {
  file: string;
  config: AdapterConfig;
  header: Header;
  /** Every tensor: its key as stored, and `rest`, the key without "base_model.model." / "base_model.". */
  tensors: { key: string; rest: string; entry: HeaderEntry }[];
  /** Our name of a base parameter the file names (with or without the backbone prefix), or undefined. */
  baseParam(name: string): string | undefined;
}

/** What a method reads from a file: its settings, and our parameter name for each of its own tensors. */
export interface FromFile<R extends Resolved> {
  settings: Omit<R, 'saveParams'>;
  /** Our parameter for one of the method's own tensors (key and rest as in AdapterFile.tensors); undefined: a
   * modules_to_save tensor. */
  own(key: string, rest: string): string | undefined;
}

export interface PeftMethod<O = unknown, R extends Resolved = Resolved> {
  /** The core's name for it (native/core/peft/<name>.cpp). */
  readonly name: string;
  /** adapter_config.json's peft_type. */
  readonly peftType: string;
  /** PEFT keys a prompt-learning method's modules_to_save under "base_model.", the others under "base_model.model.". */
  readonly promptLearning: boolean;
  resolve(model: Model, options: O): R;
  /** The method's own fields of the core's spec (the adapter name, modulesToSave and seed are added by Model). */
  nativeSpec(model: Model, settings: R): Omit<RawAdapterSpec, 'adapter'>;
  /** The file key of one of the adapter's own parameters; undefined: not saved as itself. */
  fileKey(param: string, adapter: string): string | undefined;
  /** Tensors the core computes for the file instead of a parameter: [what the core exports, file key]. */
  readonly exports?: [string, string][];
  configJson(model: Model, settings: R, basePath: string | null): Record<string, unknown>;
  fromFile(model: Model, adapter: string, f: AdapterFile): FromFile<R>;
}

const REGISTRY = new Map<string, PeftMethod<any, any>>();

export function registerMethod<O, R extends Resolved>(m: PeftMethod<O, R>): PeftMethod<O, R> {
  REGISTRY.set(m.peftType, m);
  return m;
}

export function methodForPeftType(peftType: unknown, where: string): PeftMethod<any, any> {
  const m = REGISTRY.get(String(peftType));
  if (!m)
    throw new TunekitError(
      'E_FORMAT',
      `${where}: peft_type ${JSON.stringify(peftType)} is not supported (supported: ${[...REGISTRY.keys()].join(', ')})`,
    );
  return m;
}

/** An adapter on a model: its method and settings, and every parameter the core created for it. */
export interface AdapterRecord<R extends Resolved = Resolved> {
  method: PeftMethod<any, R>;
  settings: R;
  params: string[];
}

export const TASK_TYPES: Record<Task, string> = {
  'causal-lm': 'CAUSAL_LM',
  'sequence-classification': 'SEQ_CLS',
  'feature-extraction': 'FEATURE_EXTRACTION',
  'masked-lm': 'MASKED_LM',
  pretraining: 'MASKED_LM',
};

/** The base model's linear layers: 2-D weights of modules no adapter added and that are not embedding tables. */
export function linearModules(model: Model): string[] {
  return model
    .baseParameters()
    .filter((p) => p.name.endsWith('.weight') && p.shape.length === 2)
    .map((p) => p.name.slice(0, -'.weight'.length))
    .filter((m) => !/(^|\.)(wte|wpe|embed_tokens|[a-z_]*embeddings)$/.test(m));
}

/** PEFT's target_modules rule: a list matches by suffix, a string or RegExp must match the whole module name. */
export function matchesTarget(module: string, target: string[] | string | RegExp): boolean {
  if (target instanceof RegExp) return new RegExp(`^(?:${target.source})$`, target.flags.replace('g', '')).test(module);
  if (typeof target === 'string') return new RegExp(`^(?:${target})$`).test(module);
  return matchesSuffix(module, target);
}

/** The base parameters a modules_to_save entry covers: every parameter of a module whose name ends with it (PEFT's rule). */
export function modulesToSaveParams(model: Model, modules: string[]): string[] {
  return model
    .baseParameters()
    .filter((p) => {
      const mod = p.name.slice(0, p.name.lastIndexOf('.'));
      return modules.some((m) => mod === m || mod.endsWith(m));
    })
    .map((p) => p.name);
}

/** modules_to_save as given, else PEFT's default for classification (the heads "classifier" and "score"). */
export function resolveModulesToSave(model: Model, given: string[] | undefined): Resolved {
  const modulesToSave = given ?? (model.task === 'sequence-classification' ? ['classifier', 'score'] : []);
  return { modulesToSave, saveParams: modulesToSaveParams(model, modulesToSave) };
}

/** The fields every adapter_config.json carries. */
export function commonConfig(model: Model, peftType: string, r: Resolved, basePath: string | null): Record<string, unknown> {
  return {
    peft_type: peftType,
    task_type: TASK_TYPES[model.task] ?? null,
    base_model_name_or_path: basePath,
    revision: null,
    inference_mode: true,
    modules_to_save: r.modulesToSave.length ? r.modulesToSave : null,
  };
}

/** How many virtual tokens prompt and prefix tuning add unless told (PEFT requires a number; 8 is tunekit's). */
export const DEFAULT_VIRTUAL_TOKENS = 8;

export function positiveInt(value: number | undefined, fallback: number, what: string): number {
  return checkNumber(value, what, { integer: true, min: 1 }, fallback);
}
