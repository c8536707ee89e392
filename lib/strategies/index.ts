export { FinetuneAll } from './finetune-all';
export { FinetuneHead, headPatterns, lastBlockPatterns } from './finetune-head';
export type { FinetuneHeadOptions } from './finetune-head';
export { TRAIN_DEFAULTS, peakRssMiB, trainSupervised } from './common';
export type { StrategyData, StrategyResult, TrainOptions } from './common';
export { FeatureBased } from './feature-based';
export type { FeatureBasedOptions } from './feature-based';
export { FinetuneLoRA, FinetunePEFT } from './lora';
export type { PeftMethod } from './lora';
