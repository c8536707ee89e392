/**
 * Every model family, described once: how its config.json becomes the core's spec, its transformers classes, and the
 * names generic code needs (backbone prefix, PEFT default targets, heads, blocks, pooling). No other file compares a
 * family name. The C++ half of each family is native/core/models/<family>.cpp.
 */
import { TunekitError } from './errors';
import type { RawSpec } from './native';

/** 'pretraining' (DistilBERT): masked LM plus a next-sentence head on [CLS], for pretraining from scratch. */
export type Task = 'causal-lm' | 'sequence-classification' | 'feature-extraction' | 'masked-lm' | 'pretraining';
export type ModelType = 'gpt2' | 'llama' | 'qwen2' | 'distilbert' | 'bert';
export type HFConfig = Record<string, unknown>;
export type Pooling = 'cls' | 'mean' | 'last';

/** The shape of a model, normalised across the families' config spellings (n_embd, dim, hidden_size, ...). */
export interface Dims {
  vocabSize: number;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  intermediateSize: number;
  maxPositions: number;
  typeVocabSize: number;
}

/** What a family's config sets beyond the shape: norms, positions, dropout, activation, biases. */
type Hyper = Omit<RawSpec, keyof Dims | 'family' | 'task' | 'device' | 'dtype' | 'numLabels' | 'padTokenId' | 'initSeed'>;

export interface Family {
  modelType: ModelType;
  /** The transformers class that holds the weights for each task (written to `architectures` on save). */
  architectures: Partial<Record<Task, string>>;
  /** The task of a checkpoint whose `architectures` names none of the above. */
  defaultTask: Task;
  /** Prefix of the backbone's parameter names under a task head; a feature-extraction model has none. */
  backbone: string;
  dims(c: ConfigReader): Dims;
  hyper(c: ConfigReader): Hyper;
  /** Whether the block projections are GPT-2 Conv1D layers ([in, out] weights: PEFT's fan_in_fan_out). */
  conv1d: boolean;
  /** PEFT's default LoRA targets; IA3's targets and feed-forward modules (PEFT's, or ours where PEFT has none). */
  lora: string[];
  ia3: { targets: string[]; feedforward: string[] };
  /** Output projections of attention and feed-forward, which bottleneck adapters follow (module-name suffixes). */
  adapterSites: string[];
  /** Output layers of each task (what finetuning I trains), as parameter-name patterns. */
  heads: Partial<Record<Task, RegExp[]>>;
  /** Backbone parameters a checkpoint may lack, initialised fresh as transformers does (BERT's pooler). */
  optional?: RegExp;
  /** The pretraining task's next-sentence head, which no transformers class holds: trainer checkpoints keep it,
   * savePretrained drops it (the folder is then the masked-LM class that `architectures` names for 'pretraining'). */
  pretrainingOnly?: RegExp;
  /** Checkpoint tensors that are no parameter and are skipped silently (transformers' _keys_to_ignore_on_load_unexpected). */
  ignoreUnexpected?: RegExp;
  /** Parameter-name pattern of block i, and of the norm after the last block (if any). */
  block(i: number): RegExp;
  finalNorm?: RegExp;
  /** How model.embed pools a sequence by default. */
  pooling: Pooling;
}

/** Reads config.json values, each checked: a wrong or missing one is E_CONFIG naming the key. */
export class ConfigReader {
  constructor(
    readonly config: HFConfig,
    readonly where: string,
  ) {}

  /** The first of `keys` present, which must be a number (> 0 and an integer when `int`). */
  num(keys: string[], fallback?: number, kind: 'int' | 'positive' | 'any' = 'any'): number {
    for (const k of keys) {
      const v = this.config[k];
      if (v === undefined || v === null) continue;
      if (typeof v !== 'number' || !Number.isFinite(v))
        throw new TunekitError('E_CONFIG', `${this.where}: ${k} must be a number, got ${JSON.stringify(v)}`);
      if (kind === 'int' && (!Number.isInteger(v) || v < 1))
        throw new TunekitError('E_CONFIG', `${this.where}: ${k} must be a positive integer, got ${v}`);
      if (kind === 'positive' && !(v > 0)) throw new TunekitError('E_CONFIG', `${this.where}: ${k} must be positive, got ${v}`);
      if (kind === 'any' && v < 0) throw new TunekitError('E_CONFIG', `${this.where}: ${k} must not be negative, got ${v}`);
      return v;
    }
    if (fallback === undefined) throw new TunekitError('E_CONFIG', `${this.where} lacks ${keys.join(' / ')}`);
    return fallback;
  }

  int(keys: string[], fallback?: number): number {
    return this.num(keys, fallback, 'int');
  }
  str(key: string, fallback: string): string {
    return typeof this.config[key] === 'string' ? (this.config[key] as string) : fallback;
  }
  flag(key: string, fallback: boolean): boolean {
    return typeof this.config[key] === 'boolean' ? (this.config[key] as boolean) : fallback;
  }

  /** Head size and count: `hidden` must divide into `heads` equal heads. */
  heads(hiddenKeys: string[], headKeys: string[]): { hiddenSize: number; numHeads: number; headDim: number } {
    const hiddenSize = this.int(hiddenKeys);
    const numHeads = this.int(headKeys);
    if (hiddenSize % numHeads !== 0)
      throw new TunekitError(
        'E_CONFIG',
        `${this.where}: ${hiddenKeys[0]} (${hiddenSize}) must be divisible by ${headKeys[0]} (${numHeads})`,
      );
    return { hiddenSize, numHeads, headDim: hiddenSize / numHeads };
  }
}

const noExtras = { typeVocabSize: 0 };

/** Llama-style decoders (llama, qwen2): one config layout, rope_parameters or the older rope_theta/rope_scaling. */
function decoderDims(c: ConfigReader): Dims {
  const hiddenSize = c.int(['hidden_size']);
  const numHeads = c.int(['num_attention_heads']);
  const numKvHeads = c.int(['num_key_value_heads'], numHeads);
  if (numHeads % numKvHeads !== 0)
    throw new TunekitError(
      'E_CONFIG',
      `${c.where}: num_attention_heads (${numHeads}) must be a multiple of num_key_value_heads (${numKvHeads})`,
    );
  if (c.config.head_dim == null && hiddenSize % numHeads !== 0)
    throw new TunekitError(
      'E_CONFIG',
      `${c.where}: hidden_size (${hiddenSize}) must be divisible by num_attention_heads (${numHeads}) unless head_dim is given`,
    );
  const headDim = c.int(['head_dim'], hiddenSize / numHeads);
  if (headDim % 2 !== 0) throw new TunekitError('E_CONFIG', `${c.where}: head_dim must be even for rotary embeddings, got ${headDim}`);
  return {
    vocabSize: c.int(['vocab_size']),
    hiddenSize,
    numLayers: c.int(['num_hidden_layers']),
    numHeads,
    numKvHeads,
    headDim,
    intermediateSize: c.int(['intermediate_size']),
    maxPositions: c.int(['max_position_embeddings'], 2048),
    ...noExtras,
  };
}

function decoderHyper(c: ConfigReader, biases: { qkv: boolean; out: boolean }): Hyper {
  const rope = (c.config.rope_parameters ?? c.config.rope_scaling ?? {}) as Record<string, unknown>;
  const ropeType = rope.rope_type ?? rope.type ?? 'default';
  if (ropeType !== 'default')
    throw new TunekitError('E_CONFIG', `${c.where}: rope_type '${String(ropeType)}' is not supported (only 'default')`);
  const ropeTheta = typeof rope.rope_theta === 'number' ? rope.rope_theta : c.num(['rope_theta'], 10000, 'positive');
  return {
    normEps: c.num(['rms_norm_eps'], 1e-6, 'positive'),
    ropeTheta,
    embdDropout: 0,
    attnDropout: c.num(['attention_dropout'], 0),
    residDropout: 0,
    classifierDropout: 0,
    activation: c.str('hidden_act', 'silu'),
    tieWordEmbeddings: c.flag('tie_word_embeddings', false),
    attentionBias: biases.qkv,
    attentionOutBias: biases.out,
    mlpBias: c.flag('mlp_bias', false),
    scaleAttnByInverseLayerIdx: false,
  };
}

const decoderLayout = {
  lora: ['q_proj', 'v_proj'],
  adapterSites: ['self_attn.o_proj', 'mlp.down_proj'],
  heads: { 'sequence-classification': [/^score\./], 'causal-lm': [/^lm_head\./] },
  block: (i: number) => new RegExp(`^(model\\.)?layers\\.${i}\\.`),
  finalNorm: /^(model\.)?norm\./,
  pooling: 'last' as Pooling,
  backbone: 'model.',
  conv1d: false,
};

/** BERT-style encoders' classification and masked-LM heads share nothing with decoders; their blocks are numbered. */
export const FAMILIES: Record<ModelType, Family> = {
  gpt2: {
    modelType: 'gpt2',
    // Older transformers saved the causal-mask buffers.
    ignoreUnexpected: /(^|\.)(attn|crossattention)\.(bias|masked_bias)$/,
    defaultTask: 'causal-lm',
    backbone: 'transformer.',
    conv1d: true,
    architectures: {
      'causal-lm': 'GPT2LMHeadModel',
      'sequence-classification': 'GPT2ForSequenceClassification',
      'feature-extraction': 'GPT2Model',
    },
    dims: (c) => {
      const { hiddenSize, numHeads, headDim } = c.heads(['n_embd', 'hidden_size'], ['n_head', 'num_attention_heads']);
      return {
        vocabSize: c.int(['vocab_size']),
        hiddenSize,
        numLayers: c.int(['n_layer', 'num_hidden_layers']),
        numHeads,
        numKvHeads: numHeads,
        headDim,
        intermediateSize: c.int(['n_inner'], 4 * hiddenSize),
        maxPositions: c.int(['n_positions', 'max_position_embeddings']),
        ...noExtras,
      };
    },
    hyper: (c) => ({
      normEps: c.num(['layer_norm_epsilon'], 1e-5, 'positive'),
      ropeTheta: 0,
      embdDropout: c.num(['embd_pdrop'], 0.1),
      attnDropout: c.num(['attn_pdrop'], 0.1),
      residDropout: c.num(['resid_pdrop'], 0.1),
      classifierDropout: 0,
      activation: c.str('activation_function', 'gelu_new'),
      tieWordEmbeddings: c.flag('tie_word_embeddings', true),
      attentionBias: true,
      attentionOutBias: true,
      mlpBias: true,
      scaleAttnByInverseLayerIdx: c.flag('scale_attn_by_inverse_layer_idx', false),
    }),
    lora: ['c_attn'],
    ia3: { targets: ['c_attn', 'mlp.c_proj'], feedforward: ['mlp.c_proj'] },
    adapterSites: ['attn.c_proj', 'mlp.c_proj'],
    heads: { 'sequence-classification': [/^score\./], 'causal-lm': [/^lm_head\./] },
    block: (i) => new RegExp(`^(transformer\\.)?h\\.${i}\\.`),
    finalNorm: /^(transformer\.)?ln_f\./,
    pooling: 'last',
  },
  llama: {
    modelType: 'llama',
    defaultTask: 'causal-lm',
    ...decoderLayout,
    architectures: {
      'causal-lm': 'LlamaForCausalLM',
      'sequence-classification': 'LlamaForSequenceClassification',
      'feature-extraction': 'LlamaModel',
    },
    dims: decoderDims,
    hyper: (c) => decoderHyper(c, { qkv: c.flag('attention_bias', false), out: c.flag('attention_bias', false) }),
    ia3: { targets: ['k_proj', 'v_proj', 'down_proj'], feedforward: ['down_proj'] },
  },
  qwen2: {
    modelType: 'qwen2',
    defaultTask: 'causal-lm',
    ...decoderLayout,
    architectures: {
      'causal-lm': 'Qwen2ForCausalLM',
      'sequence-classification': 'Qwen2ForSequenceClassification',
      'feature-extraction': 'Qwen2Model',
    },
    dims: decoderDims,
    hyper: (c) => {
      if (c.config.use_sliding_window === true)
        throw new TunekitError('E_CONFIG', `${c.where}: qwen2 sliding-window attention is not supported (use_sliding_window: true)`);
      return decoderHyper(c, { qkv: true, out: false });
    },
    ia3: { targets: ['q_proj', 'v_proj', 'down_proj'], feedforward: ['down_proj'] },
  },
  distilbert: {
    modelType: 'distilbert',
    defaultTask: 'feature-extraction',
    backbone: 'distilbert.',
    conv1d: false,
    architectures: {
      'sequence-classification': 'DistilBertForSequenceClassification',
      'feature-extraction': 'DistilBertModel',
      'masked-lm': 'DistilBertForMaskedLM',
      pretraining: 'DistilBertForMaskedLM',
    },
    dims: (c) => {
      const { hiddenSize, numHeads, headDim } = c.heads(['dim', 'hidden_size'], ['n_heads', 'num_attention_heads']);
      return {
        vocabSize: c.int(['vocab_size']),
        hiddenSize,
        numLayers: c.int(['n_layers', 'num_hidden_layers']),
        numHeads,
        numKvHeads: numHeads,
        headDim,
        intermediateSize: c.int(['hidden_dim', 'intermediate_size']),
        maxPositions: c.int(['max_position_embeddings'], 512),
        ...noExtras,
      };
    },
    hyper: (c) => ({
      normEps: 1e-12,
      ropeTheta: 0,
      embdDropout: c.num(['dropout'], 0.1),
      attnDropout: c.num(['attention_dropout'], 0.1),
      residDropout: c.num(['dropout'], 0.1),
      classifierDropout: c.num(['seq_classif_dropout'], 0.2),
      activation: c.str('activation', 'gelu'),
      tieWordEmbeddings: true,
      attentionBias: true,
      attentionOutBias: true,
      mlpBias: true,
      scaleAttnByInverseLayerIdx: false,
    }),
    lora: ['q_lin', 'v_lin'],
    ia3: { targets: ['k_lin', 'v_lin', 'ffn.lin2'], feedforward: ['ffn.lin2'] },
    adapterSites: ['attention.out_lin', 'ffn.lin2'],
    heads: {
      'sequence-classification': [/^pre_classifier\./, /^classifier\./],
      'masked-lm': [/^vocab_transform\./, /^vocab_layer_norm\./, /^vocab_projector\./],
      pretraining: [/^vocab_transform\./, /^vocab_layer_norm\./, /^vocab_projector\./, /^nsp_/],
    },
    pretrainingOnly: /^nsp_/,
    block: (i) => new RegExp(`^(distilbert\\.)?transformer\\.layer\\.${i}\\.`),
    pooling: 'cls',
  },
  bert: {
    modelType: 'bert',
    defaultTask: 'feature-extraction',
    backbone: 'bert.',
    conv1d: false,
    architectures: {
      'sequence-classification': 'BertForSequenceClassification',
      'feature-extraction': 'BertModel',
      'masked-lm': 'BertForMaskedLM',
    },
    dims: (c) => {
      const { hiddenSize, numHeads, headDim } = c.heads(['hidden_size'], ['num_attention_heads']);
      return {
        vocabSize: c.int(['vocab_size']),
        hiddenSize,
        numLayers: c.int(['num_hidden_layers']),
        numHeads,
        numKvHeads: numHeads,
        headDim,
        intermediateSize: c.int(['intermediate_size']),
        maxPositions: c.int(['max_position_embeddings'], 512),
        typeVocabSize: c.int(['type_vocab_size'], 2),
      };
    },
    hyper: (c) => {
      const positions = c.str('position_embedding_type', 'absolute');
      if (positions !== 'absolute')
        throw new TunekitError('E_CONFIG', `${c.where}: bert position_embedding_type '${positions}' is not supported (only 'absolute')`);
      if (c.config.is_decoder === true)
        throw new TunekitError('E_CONFIG', `${c.where}: bert as a decoder (is_decoder: true) is not supported`);
      const hidden = c.num(['hidden_dropout_prob'], 0.1);
      return {
        normEps: c.num(['layer_norm_eps'], 1e-12, 'positive'),
        ropeTheta: 0,
        embdDropout: hidden,
        attnDropout: c.num(['attention_probs_dropout_prob'], 0.1),
        residDropout: hidden,
        classifierDropout: c.num(['classifier_dropout'], hidden),
        activation: c.str('hidden_act', 'gelu'),
        tieWordEmbeddings: true,
        attentionBias: true,
        attentionOutBias: true,
        mlpBias: true,
        scaleAttnByInverseLayerIdx: false,
      };
    },
    lora: ['query', 'value'],
    ia3: { targets: ['key', 'value', 'output.dense'], feedforward: ['output.dense'] },
    adapterSites: ['attention.output.dense', 'output.dense'],
    heads: {
      'sequence-classification': [/^classifier\./],
      'masked-lm': [/^cls\.predictions\./],
    },
    optional: /^(bert\.)?pooler\./,
    block: (i) => new RegExp(`^(bert\\.)?encoder\\.layer\\.${i}\\.`),
    pooling: 'cls',
  },
};

export const MODEL_TYPES = Object.keys(FAMILIES) as ModelType[];

/** The family of a config, or E_CONFIG naming the supported ones. */
export function familyOf(config: HFConfig, where: string): Family {
  const t = config.model_type;
  if (typeof t !== 'string' || !(t in FAMILIES)) {
    throw new TunekitError('E_CONFIG', `${where}: unknown model_type ${JSON.stringify(t)} (supported: ${MODEL_TYPES.join(', ')})`);
  }
  return FAMILIES[t as ModelType];
}

/** The task a checkpoint was saved for, from `architectures`; else the family's natural default. */
export function defaultTask(family: Family, config: HFConfig): Task {
  const arch = Array.isArray(config.architectures) ? String(config.architectures[0] ?? '') : '';
  for (const [task, name] of Object.entries(family.architectures)) if (name === arch) return task as Task;
  return family.defaultTask;
}

export function firstId(v: unknown): number {
  if (typeof v === 'number') return v;
  if (Array.isArray(v) && typeof v[0] === 'number') return v[0];
  return -1;
}

export function numLabelsOf(config: HFConfig): number {
  if (typeof config.num_labels === 'number') return config.num_labels;
  if (config.id2label && typeof config.id2label === 'object') return Object.keys(config.id2label).length;
  return 2;
}

/** config.json to the core's flat spec: the family's dims and hyper-parameters plus the run's own settings. */
export function toSpec(
  family: Family,
  task: Task,
  config: HFConfig,
  where: string,
  opts: { numLabels: number; device: string; dtype: string; initSeed: number },
): RawSpec {
  const c = new ConfigReader(config, where);
  return {
    family: family.modelType,
    task,
    device: opts.device,
    dtype: opts.dtype,
    numLabels: opts.numLabels,
    padTokenId: typeof config.pad_token_id === 'number' ? config.pad_token_id : -1,
    initSeed: opts.initSeed,
    ...family.dims(c),
    ...family.hyper(c),
  };
}

/** Whether a module name is one of `targets` by PEFT's rule: equal to an entry or ending with "." + entry. */
export function matchesSuffix(module: string, targets: string[]): boolean {
  return targets.some((t) => module === t || module.endsWith(`.${t}`));
}
