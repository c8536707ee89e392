/** Soft prompt tuning as PEFT 0.21's PROMPT_TUNING: options, TEXT initialisation and PEFT's files. */
import { TunekitError } from '../errors';
import type { Model } from '../model';
import type { Tokenizer } from '../tokenizer';
import { commonConfig, DEFAULT_VIRTUAL_TOKENS, PeftMethod, positiveInt, registerMethod, Resolved, resolveModulesToSave } from './method';
import { checkOptions } from '../validate';

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

export interface ResolvedPrompt extends Resolved {
  numVirtualTokens: number;
  initIds?: number[];
  initText?: string;
  tokenizerNameOrPath?: string;
  seed: number;
}

const OPTIONS = ['numVirtualTokens', 'promptTuningInitText', 'tokenizer', 'tokenizerNameOrPath', 'modulesToSave', 'seed'];

export const promptMethod: PeftMethod<PromptTuningOptions, ResolvedPrompt> = registerMethod<PromptTuningOptions, ResolvedPrompt>({
  name: 'prompt',
  peftType: 'PROMPT_TUNING',
  promptLearning: true,

  resolve(model, o) {
    checkOptions(o, OPTIONS, 'PromptTuning');
    const n = positiveInt(o.numVirtualTokens, DEFAULT_VIRTUAL_TOKENS, 'numVirtualTokens');
    let initIds: number[] | undefined;
    if (o.promptTuningInitText !== undefined) {
      if (!o.tokenizer) throw new TunekitError('E_ARG', "promptTuningInitText needs the model's tokenizer (options.tokenizer)");
      // PEFT: the text's ids with special tokens, cut or repeated to the number of virtual tokens.
      const ids = o.tokenizer.encode(o.promptTuningInitText);
      if (ids.length === 0) throw new TunekitError('E_ARG', 'promptTuningInitText encodes to no tokens');
      initIds = Array.from({ length: n }, (_, i) => ids[i % ids.length]);
    }
    return {
      numVirtualTokens: n,
      initIds,
      initText: o.promptTuningInitText,
      tokenizerNameOrPath: o.tokenizerNameOrPath,
      seed: o.seed ?? 0,
      ...resolveModulesToSave(model, o.modulesToSave),
    };
  },

  nativeSpec: (_, p) => ({ numVirtualTokens: p.numVirtualTokens, ...(p.initIds ? { initIds: p.initIds } : {}), seed: p.seed }),

  fileKey: (param, adapter) => (param === `prompt_encoder.${adapter}.embedding.weight` ? 'prompt_embeddings' : undefined),

  configJson: (model, p, basePath) => ({
    ...commonConfig(model, 'PROMPT_TUNING', p, basePath),
    num_virtual_tokens: p.numVirtualTokens,
    token_dim: model.dims.hiddenSize,
    num_transformer_submodules: 1,
    num_attention_heads: model.dims.numHeads,
    num_layers: model.dims.numLayers,
    prompt_tuning_init: p.initText !== undefined ? 'TEXT' : 'RANDOM',
    prompt_tuning_init_text: p.initText ?? null,
    tokenizer_name_or_path: p.tokenizerNameOrPath ?? null,
    tokenizer_kwargs: null,
    auto_mapping: null,
    peft_version: '0.21.0',
  }),

  fromFile(model, adapter, f) {
    const prompt = f.header.tensors.get('prompt_embeddings');
    if (!prompt) throw new TunekitError('E_FORMAT', `${f.file}: no prompt_embeddings tensor`);
    const n = f.config.num('num_virtual_tokens', { integer: true, min: 1 });
    const hidden = model.dims.hiddenSize;
    if (prompt.shape.length !== 2 || prompt.shape[0] !== n || prompt.shape[1] !== hidden) {
      throw new TunekitError('E_SHAPE', `${f.file}: prompt_embeddings is [${prompt.shape}] but this model needs [${n}, ${hidden}]`);
    }
    if (f.config.num('num_transformer_submodules', { integer: true, min: 1 }, 1) !== 1)
      throw new TunekitError('E_FORMAT', `${f.file}: prompts for encoder-decoder models are not supported`);
    return {
      settings: {
        numVirtualTokens: n,
        initText: f.config.str('prompt_tuning_init_text'),
        tokenizerNameOrPath: f.config.str('tokenizer_name_or_path'),
        modulesToSave: f.config.modulesToSave(),
        seed: 0,
      },
      own: (key) => (key === 'prompt_embeddings' ? `prompt_encoder.${adapter}.embedding.weight` : undefined),
    };
  },
});

/** Soft prompt tuning (Lester et al. 2021): trainable virtual-token embeddings before every input. */
export class PromptTuning {
  readonly name = 'prompt';
  constructor(readonly options: PromptTuningOptions = {}) {}

  async apply(model: Model, opts: { adapterName?: string } = {}): Promise<void> {
    await model.addAdapter(promptMethod, opts.adapterName ?? 'default', this.options);
  }
}
