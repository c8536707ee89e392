/** Hugging Face config.json to the core's flat model spec, family by family. */
import { TunekitError } from './errors';
import type { RawSpec } from './native';

export type Task = 'causal-lm' | 'sequence-classification' | 'feature-extraction' | 'masked-lm';
export type ModelType = 'gpt2' | 'distilbert' | 'llama';
export type HFConfig = Record<string, unknown>;

export const MODEL_TYPES: ModelType[] = ['gpt2', 'distilbert', 'llama'];

/** The transformers class that holds a family's weights for a task (written to `architectures` on save). */
export const ARCHITECTURES: Record<ModelType, Partial<Record<Task, string>>> = {
  gpt2: { 'causal-lm': 'GPT2LMHeadModel', 'sequence-classification': 'GPT2ForSequenceClassification', 'feature-extraction': 'GPT2Model' },
  llama: { 'causal-lm': 'LlamaForCausalLM', 'sequence-classification': 'LlamaForSequenceClassification', 'feature-extraction': 'LlamaModel' },
  distilbert: {
    'sequence-classification': 'DistilBertForSequenceClassification', 'feature-extraction': 'DistilBertModel',
    'masked-lm': 'DistilBertForMaskedLM',
  },
};

export function modelType(config: HFConfig, where: string): ModelType {
  const t = config.model_type;
  if (typeof t !== 'string' || !MODEL_TYPES.includes(t as ModelType)) {
    throw new TunekitError('E_CONFIG', `${where}: unknown model_type ${JSON.stringify(t)} (supported: ${MODEL_TYPES.join(', ')})`);
  }
  return t as ModelType;
}

/** The task a checkpoint was saved for, from `architectures`; else the family's natural default. */
export function defaultTask(type: ModelType, config: HFConfig): Task {
  const arch = Array.isArray(config.architectures) ? String(config.architectures[0] ?? '') : '';
  for (const [task, name] of Object.entries(ARCHITECTURES[type])) if (name === arch) return task as Task;
  return type === 'distilbert' ? 'feature-extraction' : 'causal-lm';
}

function num(config: HFConfig, keys: string[], fallback?: number): number {
  for (const k of keys) {
    const v = config[k];
    if (typeof v === 'number') return v;
  }
  if (fallback === undefined) throw new TunekitError('E_CONFIG', `config.json lacks ${keys.join(' / ')}`);
  return fallback;
}

function firstId(v: unknown): number {
  if (typeof v === 'number') return v;
  if (Array.isArray(v) && typeof v[0] === 'number') return v[0];
  return -1;
}

export function numLabelsOf(config: HFConfig): number {
  if (typeof config.num_labels === 'number') return config.num_labels;
  if (config.id2label && typeof config.id2label === 'object') return Object.keys(config.id2label).length;
  return 2;
}

export function toSpec(type: ModelType, task: Task, config: HFConfig, opts: { numLabels: number; device: string; dtype: string; initSeed: number }): RawSpec {
  const common = {
    family: type, task, device: opts.device, dtype: opts.dtype, numLabels: opts.numLabels,
    padTokenId: typeof config.pad_token_id === 'number' ? config.pad_token_id : -1, initSeed: opts.initSeed,
    vocabSize: num(config, ['vocab_size']),
  };
  if (type === 'gpt2') {
    const C = num(config, ['n_embd', 'hidden_size']);
    const H = num(config, ['n_head', 'num_attention_heads']);
    return {
      ...common, hiddenSize: C, numLayers: num(config, ['n_layer', 'num_hidden_layers']), numHeads: H, numKvHeads: H,
      headDim: C / H, intermediateSize: num(config, ['n_inner'], 4 * C), maxPositions: num(config, ['n_positions', 'max_position_embeddings']),
      normEps: num(config, ['layer_norm_epsilon'], 1e-5), ropeTheta: 0, embdDropout: num(config, ['embd_pdrop'], 0.1),
      attnDropout: num(config, ['attn_pdrop'], 0.1), residDropout: num(config, ['resid_pdrop'], 0.1),
      classifierDropout: 0, activation: String(config.activation_function ?? 'gelu_new'),
      tieWordEmbeddings: config.tie_word_embeddings !== false, attentionBias: true, mlpBias: true,
      scaleAttnByInverseLayerIdx: config.scale_attn_by_inverse_layer_idx === true,
    };
  }
  if (type === 'llama') {
    const C = num(config, ['hidden_size']);
    const H = num(config, ['num_attention_heads']);
    const rope = (config.rope_parameters ?? config.rope_scaling ?? {}) as Record<string, unknown>;
    const ropeType = rope.rope_type ?? rope.type ?? 'default';
    if (ropeType !== 'default') throw new TunekitError('E_CONFIG', `llama rope_type '${String(ropeType)}' is not supported (only 'default')`);
    return {
      ...common, hiddenSize: C, numLayers: num(config, ['num_hidden_layers']), numHeads: H,
      numKvHeads: num(config, ['num_key_value_heads'], H), headDim: num(config, ['head_dim'], C / H),
      intermediateSize: num(config, ['intermediate_size']), maxPositions: num(config, ['max_position_embeddings'], 2048),
      normEps: num(config, ['rms_norm_eps'], 1e-6),
      ropeTheta: typeof rope.rope_theta === 'number' ? rope.rope_theta : num(config, ['rope_theta'], 10000),
      embdDropout: 0, attnDropout: num(config, ['attention_dropout'], 0), residDropout: 0, classifierDropout: 0,
      activation: String(config.hidden_act ?? 'silu'), tieWordEmbeddings: config.tie_word_embeddings === true,
      attentionBias: config.attention_bias === true, mlpBias: config.mlp_bias === true, scaleAttnByInverseLayerIdx: false,
    };
  }
  const C = num(config, ['dim', 'hidden_size']);
  const H = num(config, ['n_heads', 'num_attention_heads']);
  return {
    ...common, hiddenSize: C, numLayers: num(config, ['n_layers', 'num_hidden_layers']), numHeads: H, numKvHeads: H,
    headDim: C / H, intermediateSize: num(config, ['hidden_dim', 'intermediate_size']),
    maxPositions: num(config, ['max_position_embeddings'], 512), normEps: 1e-12, ropeTheta: 0,
    embdDropout: num(config, ['dropout'], 0.1), attnDropout: num(config, ['attention_dropout'], 0.1),
    residDropout: num(config, ['dropout'], 0.1), classifierDropout: num(config, ['seq_classif_dropout'], 0.2),
    activation: String(config.activation ?? 'gelu'), tieWordEmbeddings: true, attentionBias: true, mlpBias: true,
    scaleAttnByInverseLayerIdx: false,
  };
}

export { firstId };
