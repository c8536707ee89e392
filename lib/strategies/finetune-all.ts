/** Finetuning II: every parameter of the model trains. */
import type { Model } from '../model';
import { checkOptions } from '../validate';
import { StrategyData, StrategyResult, TRAIN_OPTIONS, TrainOptions, trainSupervised } from './common';

export class FinetuneAll {
  readonly name = 'full';
  constructor(readonly options: TrainOptions = {}) {
    checkOptions(options, TRAIN_OPTIONS, 'FinetuneAll');
  }

  async apply(model: Model): Promise<void> {
    await model.setTrainable('all', true);
  }

  async run(model: Model, data: StrategyData): Promise<StrategyResult> {
    await this.apply(model);
    return trainSupervised(this.name, model, data, this.options);
  }
}
