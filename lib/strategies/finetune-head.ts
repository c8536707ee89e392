/**
 * Finetuning I: the backbone is frozen and only the output layers train (distilbert's pre_classifier + classifier,
 * gpt2's and llama's score head, or a language model's output projection), optionally with the last n blocks.
 */
import { TunekitError } from '../errors';
import type { Model } from '../model';
import { StrategyData, StrategyResult, TrainOptions, trainSupervised } from './common';

export interface FinetuneHeadOptions extends TrainOptions {
  /** Also train the last n transformer blocks (and the final norm that follows them). */
  unfreezeLastBlocks?: number;
}

/** The parameter-name patterns of a model's output layers. */
export function headPatterns(model: Model): RegExp[] {
  if (model.task === 'sequence-classification') {
    return model.modelType === 'distilbert' ? [/^pre_classifier\./, /^classifier\./] : [/^score\./];
  }
  if (model.task === 'causal-lm') return model.modelType === 'gpt2' ? [/^lm_head\./] : [/^lm_head\./];
  if (model.task === 'masked-lm') return [/^vocab_transform\./, /^vocab_layer_norm\./, /^vocab_projector\./];
  throw new TunekitError('E_CONFIG', `a ${model.task} model has no output layers to train`);
}

/** The parameter-name patterns of a model's last n blocks and the norm after them. */
export function lastBlockPatterns(model: Model, n: number): RegExp[] {
  const layers = Number(model.config.n_layer ?? model.config.n_layers ?? model.config.num_hidden_layers);
  if (!Number.isInteger(n) || n < 0 || n > layers) throw new TunekitError('E_ARG', `unfreezeLastBlocks must be an integer from 0 to ${layers}, got ${n}`);
  const out: RegExp[] = [];
  for (let i = layers - n; i < layers; i++) {
    if (model.modelType === 'gpt2') out.push(new RegExp(`^(transformer\\.)?h\\.${i}\\.`));
    else if (model.modelType === 'llama') out.push(new RegExp(`^(model\\.)?layers\\.${i}\\.`));
    else out.push(new RegExp(`^(distilbert\\.)?transformer\\.layer\\.${i}\\.`));
  }
  if (n > 0 && model.modelType === 'gpt2') out.push(/^(transformer\.)?ln_f\./);
  if (n > 0 && model.modelType === 'llama') out.push(/^(model\.)?norm\./);
  return out;
}

export class FinetuneHead {
  readonly name: string;
  constructor(readonly options: FinetuneHeadOptions = {}) {
    const n = options.unfreezeLastBlocks ?? 0;
    this.name = n > 0 ? `head+last${n}` : 'head';
  }

  async apply(model: Model): Promise<void> {
    const patterns = [...headPatterns(model), ...lastBlockPatterns(model, this.options.unfreezeLastBlocks ?? 0)];
    await model.setTrainable('all', false);
    await model.setTrainable(patterns, true);
    // A tied output projection is the input embedding itself: training it would move the frozen backbone.
    if (model.countParameters({ trainableOnly: true }) === 0) {
      throw new TunekitError('E_CONFIG', `${model.modelType} ${model.task}: no separate output layer to train (the output projection is tied to the embeddings)`);
    }
  }

  async run(model: Model, data: StrategyData): Promise<StrategyResult> {
    await this.apply(model);
    return trainSupervised(this.name, model, data, { lr: 1e-3, ...this.options });
  }
}
