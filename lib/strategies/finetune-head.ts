/**
 * Finetuning I: the backbone is frozen and only the output layers train (the family's heads for the task: a
 * classifier, a score head, or a language model's output projection), optionally with the last n blocks.
 */
import { TunekitError } from '../errors';
import type { Model } from '../model';
import { checkOptions } from '../validate';
import { StrategyData, StrategyResult, TRAIN_OPTIONS, TrainOptions, trainSupervised } from './common';

export interface FinetuneHeadOptions extends TrainOptions {
  /** Also train the last n transformer blocks (and the final norm that follows them). */
  unfreezeLastBlocks?: number;
}

/** The parameter-name patterns of a model's output layers. */
export function headPatterns(model: Model): RegExp[] {
  const heads = model.family.heads[model.task];
  if (!heads) throw new TunekitError('E_CONFIG', `a ${model.task} model has no output layers to train`);
  return heads;
}

/** The parameter-name patterns of a model's last n blocks and the norm after them. */
export function lastBlockPatterns(model: Model, n: number): RegExp[] {
  const layers = model.dims.numLayers;
  if (!Number.isInteger(n) || n < 0 || n > layers)
    throw new TunekitError('E_ARG', `unfreezeLastBlocks must be an integer from 0 to ${layers}, got ${n}`);
  const out: RegExp[] = [];
  for (let i = layers - n; i < layers; i++) out.push(model.family.block(i));
  if (n > 0 && model.family.finalNorm) out.push(model.family.finalNorm);
  return out;
}

export class FinetuneHead {
  readonly name: string;
  constructor(readonly options: FinetuneHeadOptions = {}) {
    checkOptions(options, [...TRAIN_OPTIONS, 'unfreezeLastBlocks'], 'FinetuneHead');
    const n = options.unfreezeLastBlocks ?? 0;
    this.name = n > 0 ? `head+last${n}` : 'head';
  }

  async apply(model: Model): Promise<void> {
    const patterns = [...headPatterns(model), ...lastBlockPatterns(model, this.options.unfreezeLastBlocks ?? 0)];
    await model.setTrainable('all', false);
    await model.setTrainable(patterns, true);
    // A tied output projection is the input embedding itself: training it would move the frozen backbone.
    if (model.countParameters({ trainableOnly: true }) === 0) {
      throw new TunekitError(
        'E_CONFIG',
        `${model.modelType} ${model.task}: no separate output layer to train (the output projection is tied to the embeddings)`,
      );
    }
  }

  async run(model: Model, data: StrategyData): Promise<StrategyResult> {
    await this.apply(model);
    return trainSupervised(this.name, model, data, { lr: 1e-3, ...this.options });
  }
}
