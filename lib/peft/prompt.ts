/** Soft prompt tuning as PEFT 0.21's PROMPT_TUNING: options, TEXT initialisation and adapter_config.json. */
import { TunekitError } from '../errors';
import type { Model } from '../model';
import type { Tokenizer } from '../tokenizer';
import { modulesToSaveParams, TASK_TYPES } from './lora';

export interface PromptTuningOptions {
  numVirtualTokens?: number;
  /** Initialise from the embeddings of this text's tokens (PEFT's TEXT init; needs `tokenizer`); default RANDOM. */
  promptTuningInitText?: string;
  tokenizer?: Tokenizer;
  /** Recorded in adapter_config.json as tokenizer_name_or_path (PEFT needs it to re-create a TEXT init). */
  tokenizerNameOrPath?: string;
  modulesToSave?: string[];
  seed?: number;
}

export interface ResolvedPrompt {
  numVirtualTokens: number; initIds?: number[]; initText?: string; tokenizerNameOrPath?: string;
  modulesToSave: string[]; saveParams: string[]; seed: number;
}

export function resolvePrompt(model: Model, o: PromptTuningOptions): ResolvedPrompt {
  const n = o.numVirtualTokens ?? 8;
  if (!Number.isInteger(n) || n < 1) throw new TunekitError('E_ARG', `numVirtualTokens must be a positive integer, got ${o.numVirtualTokens}`);
  let initIds: number[] | undefined;
  if (o.promptTuningInitText !== undefined) {
    if (!o.tokenizer) throw new TunekitError('E_ARG', 'promptTuningInitText needs the model\'s tokenizer (options.tokenizer)');
    // PEFT: the text's ids with special tokens, cut or repeated to the number of virtual tokens.
    const ids = o.tokenizer.encode(o.promptTuningInitText);
    if (ids.length === 0) throw new TunekitError('E_ARG', 'promptTuningInitText encodes to no tokens');
    initIds = Array.from({ length: n }, (_, i) => ids[i % ids.length]);
  }
  const modulesToSave = o.modulesToSave ?? (model.task === 'sequence-classification' ? ['classifier', 'score'] : []);
  return {
    numVirtualTokens: n, initIds, initText: o.promptTuningInitText, tokenizerNameOrPath: o.tokenizerNameOrPath, modulesToSave,
    saveParams: modulesToSaveParams(model, modulesToSave), seed: o.seed ?? 0,
  };
}

export function promptConfigJson(model: Model, p: ResolvedPrompt, basePath: string | null): Record<string, unknown> {
  const c = model.config;
  return {
    peft_type: 'PROMPT_TUNING', task_type: TASK_TYPES[model.task] ?? null, base_model_name_or_path: basePath, revision: null, inference_mode: true,
    num_virtual_tokens: p.numVirtualTokens, token_dim: c.n_embd ?? c.dim ?? c.hidden_size, num_transformer_submodules: 1,
    num_attention_heads: c.n_head ?? c.n_heads ?? c.num_attention_heads, num_layers: c.n_layer ?? c.n_layers ?? c.num_hidden_layers,
    prompt_tuning_init: p.initText !== undefined ? 'TEXT' : 'RANDOM', prompt_tuning_init_text: p.initText ?? null,
    tokenizer_name_or_path: p.tokenizerNameOrPath ?? null, tokenizer_kwargs: null,
    modules_to_save: p.modulesToSave.length ? p.modulesToSave : null, auto_mapping: null, peft_version: '0.21.0',
  };
}

/** Soft prompt tuning (Lester et al. 2021): trainable virtual-token embeddings before every input. */
export class PromptTuning {
  readonly name = 'prompt';
  constructor(readonly options: PromptTuningOptions = {}) {}

  async apply(model: Model, opts: { adapterName?: string } = {}): Promise<void> {
    await model.addPromptTuning(opts.adapterName ?? 'default', this.options);
  }
}
