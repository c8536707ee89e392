/** Parameter-efficient finetuning with LoRA: the base model frozen, low-rank adapters (and the head, for classification) trained. */
import type { Model } from '../model';
import { LoRA, LoRAOptions } from '../peft/lora';
import { StrategyData, StrategyResult, TrainOptions, trainSupervised } from './common';

export class FinetuneLoRA {
  readonly name = 'lora';
  readonly lora: LoRA;
  constructor(readonly options: TrainOptions & { lora?: LoRAOptions; adapterName?: string } = {}) {
    this.lora = new LoRA(options.lora ?? {});
  }

  /** Adds the adapter, unless the model already runs one (e.g. made beforehand to export its initial weights). */
  async apply(model: Model): Promise<void> {
    if (model.activeAdapter === null) await this.lora.apply(model, { adapterName: this.options.adapterName });
  }

  async run(model: Model, data: StrategyData): Promise<StrategyResult> {
    await this.apply(model);
    return trainSupervised(this.name, model, data, { lr: 1e-3, ...this.options });
  }
}
