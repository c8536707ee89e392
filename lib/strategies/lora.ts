/**
 * Parameter-efficient finetuning: the base model frozen, a PEFT method's added parameters (and, for classification,
 * a trainable copy of the head) trained.
 */
import type { Model } from '../model';
import { Adapter, AdapterOptions } from '../peft/adapter';
import { LoRA, LoRAOptions } from '../peft/lora';
import { PrefixTuning, PrefixTuningOptions } from '../peft/prefix';
import { PromptTuning, PromptTuningOptions } from '../peft/prompt';
import { IA3, IA3Options } from '../peft/ia3';
import { checkOptions } from '../validate';
import { StrategyData, StrategyResult, TRAIN_OPTIONS, TrainOptions, trainSupervised } from './common';

export type PeftMethod = LoRA | Adapter | PrefixTuning | PromptTuning | IA3;

export class FinetunePEFT {
  readonly name: string;
  constructor(
    readonly method: PeftMethod,
    readonly options: TrainOptions & { adapterName?: string } = {},
  ) {
    checkOptions(options, [...TRAIN_OPTIONS, 'adapterName'], 'FinetunePEFT');
    this.name = method.name;
  }

  /** Adds the adapter, unless the model already runs one (e.g. made beforehand to export its initial weights). */
  async apply(model: Model): Promise<void> {
    if (model.activeAdapter === null) await this.method.apply(model, { adapterName: this.options.adapterName });
  }

  async run(model: Model, data: StrategyData): Promise<StrategyResult> {
    await this.apply(model);
    return trainSupervised(this.name, model, data, { lr: 1e-3, ...this.options });
  }
}

export class FinetuneLoRA extends FinetunePEFT {
  constructor(options: TrainOptions & { lora?: LoRAOptions; adapterName?: string } = {}) {
    const { lora, ...rest } = checkOptions(options, [...TRAIN_OPTIONS, 'lora', 'adapterName'], 'FinetuneLoRA');
    super(new LoRA(lora ?? {}), rest);
  }
}

export type { AdapterOptions, IA3Options, PrefixTuningOptions, PromptTuningOptions };
