export { TunekitError } from './errors';
export type { ErrorCode } from './errors';
export { DecodeSession, Model, PRECISIONS } from './model';
export type { Device, DType, ForwardOutput, FromPretrainedOptions, GenerateOptions, Pooling, Precision } from './model';
export type { Dims, Task, ModelType } from './families';
export { FAMILIES, MODEL_TYPES } from './families';
export { Tokenizer } from './tokenizer';
export type { EncodeBatchOptions } from './tokenizer';
export { AdamW, GradScaler, SGD, scheduleFactor } from './optim';
export type { Optimizer, OptimizerOptions, AdamWOptions, SGDOptions, Schedule, ScheduleType, StepResult } from './optim';
export { Trainer, evaluateModel, collateExamples } from './trainer';
export type { Example, Progress, TrainerOptions, TrainResult, EvalResult } from './trainer';
export type { BatchInput } from './batch';
export type { FloatArray } from './native';

import { addon } from './native';
/** True when the native core was built against a libtorch with CUDA and a GPU is visible. */
export function cudaAvailable(): boolean {
  return addon.cudaAvailable();
}
export { Dataset, BUILTINS, builtinSplits, loadSplits } from './data';
export type { DatasetKind, FieldMap, ReadOptions, Row, Splits } from './data';
export { FeatureBased, FinetuneAll, FinetuneHead, FinetuneLoRA, FinetunePEFT, InContext, PromptSearch } from './strategies';
export { LogisticRegression } from './logreg';
export type { LogisticRegressionOptions } from './logreg';
export type {
  FeatureBasedOptions,
  FinetuneHeadOptions,
  InContextOptions,
  PromptSearchOptions,
  PromptSearchResult,
  StrategyData,
  StrategyResult,
  TrainOptions,
} from './strategies';
export { LoRA } from './peft/lora';
export type { LoRAOptions } from './peft/lora';
export { PromptTuning } from './peft/prompt';
export type { PromptTuningOptions } from './peft/prompt';
export { Adapter } from './peft/adapter';
export type { AdapterOptions } from './peft/adapter';
export { PrefixTuning } from './peft/prefix';
export type { PrefixTuningOptions } from './peft/prefix';
export { IA3 } from './peft/ia3';
export type { IA3Options } from './peft/ia3';
export { runtimeInfo, releaseCpuCache } from './runtime';
export { ProcessGroup, defaultProcessGroup, launchedDistributed, shardOf } from './distributed';
export type { DistributedOptions, ProcessGroupOptions } from './distributed';
export { launch } from './launcher';
export type { LaunchOptions, LaunchResult, WorkerFailure } from './launcher';
export { DPO, GRPO, PPO, RewardTrainer } from './rl';
export type {
  DPOEvaluation,
  DPOLossType,
  DPOOptions,
  PairStats,
  PairTrainingOptions,
  PreferencePair,
  RewardEvaluation,
  RewardTrainerOptions,
  TokenizedPair,
} from './rl';
export type { RuntimeInfo } from './runtime';
export { ContrastiveTrainer, Index, RAG_TEMPLATE, SEARCH_MODES } from './retrieval';
export type {
  ContrastiveEvaluation,
  ContrastivePair,
  ContrastiveTrainerOptions,
  Document,
  Hit,
  IndexOptions,
  SearchMode,
} from './retrieval';
