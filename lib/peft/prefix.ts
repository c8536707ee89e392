/** Prefix tuning as PEFT 0.21's PREFIX_TUNING: options and PEFT's files. */
import { TunekitError } from '../errors';
import type { Model } from '../model';
import { commonConfig, DEFAULT_VIRTUAL_TOKENS, PeftMethod, positiveInt, registerMethod, Resolved, resolveModulesToSave } from './method';
import { checkOptions } from '../validate';

export interface PrefixTuningOptions {
  numVirtualTokens?: number;
  /** PEFT's prefix_projection: train the prefix through an MLP (Linear, Tanh, Linear); saved files hold its output. */
  prefixProjection?: boolean;
  encoderHiddenSize?: number;
  modulesToSave?: string[];
  seed?: number;
}

export interface ResolvedPrefix extends Resolved {
  numVirtualTokens: number;
  projection: boolean;
  encoderHiddenSize: number;
  seed: number;
}

const OPTIONS = ['numVirtualTokens', 'prefixProjection', 'encoderHiddenSize', 'modulesToSave', 'seed'];

/** Keys/values are stored per key-value head (PEFT does the same for grouped-query attention). */
function kvWidth(model: Model): number {
  return model.dims.numKvHeads * model.dims.headDim;
}

export const prefixMethod: PeftMethod<PrefixTuningOptions, ResolvedPrefix> = registerMethod<PrefixTuningOptions, ResolvedPrefix>({
  name: 'prefix',
  peftType: 'PREFIX_TUNING',
  promptLearning: true,

  resolve(model, o) {
    checkOptions(o, OPTIONS, 'PrefixTuning');
    const n = positiveInt(o.numVirtualTokens, DEFAULT_VIRTUAL_TOKENS, 'numVirtualTokens');
    const encoderHiddenSize = positiveInt(o.encoderHiddenSize, kvWidth(model), 'encoderHiddenSize');
    return {
      numVirtualTokens: n,
      projection: Boolean(o.prefixProjection),
      encoderHiddenSize,
      seed: o.seed ?? 0,
      ...resolveModulesToSave(model, o.modulesToSave),
    };
  },

  nativeSpec: (_, p) => ({
    numVirtualTokens: p.numVirtualTokens,
    projection: p.projection,
    encoderHiddenSize: p.encoderHiddenSize,
    seed: p.seed,
  }),

  // Saved prefixes are the final keys and values (PEFT saves a projection's output), which the core computes.
  fileKey: () => undefined,
  exports: [['prompt_embeddings', 'prompt_embeddings']],

  configJson: (model, p, basePath) => ({
    ...commonConfig(model, 'PREFIX_TUNING', p, basePath),
    num_virtual_tokens: p.numVirtualTokens,
    token_dim: kvWidth(model),
    num_transformer_submodules: 1,
    num_attention_heads: model.dims.numKvHeads,
    num_layers: model.dims.numLayers,
    encoder_hidden_size: p.encoderHiddenSize,
    prefix_projection: p.projection,
    auto_mapping: null,
    peft_version: '0.21.0',
  }),

  fromFile(model, adapter, f) {
    const table = f.header.tensors.get('prompt_embeddings');
    if (!table) throw new TunekitError('E_FORMAT', `${f.file}: no prompt_embeddings tensor`);
    const n = f.config.num('num_virtual_tokens', { integer: true, min: 1 });
    const { numLayers: layers, numKvHeads: kvHeads, headDim } = model.dims;
    if (table.shape.length !== 2 || table.shape[0] !== n || table.shape[1] !== layers * 2 * kvHeads * headDim) {
      throw new TunekitError(
        'E_SHAPE',
        `${f.file}: prompt_embeddings is [${table.shape}] but this model needs [${n}, ${layers * 2 * kvHeads * headDim}] (${layers} layers x 2 x ${kvHeads} heads x ${headDim})`,
      );
    }
    // The saved keys/values load as a plain table, without the projection that made them.
    return {
      settings: {
        numVirtualTokens: n,
        projection: false,
        encoderHiddenSize: kvHeads * headDim,
        modulesToSave: f.config.modulesToSave(),
        seed: 0,
      },
      own: (key) => (key === 'prompt_embeddings' ? `prefix_encoder.${adapter}.embedding.weight` : undefined),
    };
  },
});

/** Prefix tuning (Li & Liang 2021): trainable key/value prefixes in every layer; the model is frozen. */
export class PrefixTuning {
  readonly name = 'prefix';
  constructor(readonly options: PrefixTuningOptions = {}) {}

  async apply(model: Model, opts: { adapterName?: string } = {}): Promise<void> {
    await model.addAdapter(prefixMethod, opts.adapterName ?? 'default', this.options);
  }
}
