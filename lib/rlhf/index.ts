export { RewardTrainer } from './reward';
export type { RewardEvaluation, RewardTrainerOptions } from './reward';
export { DPO } from './dpo';
export type { DPOEvaluation, DPOLossType, DPOOptions } from './dpo';
export type { PairStats, PairTrainingOptions, PreferencePair, TokenizedPair } from './pairs';
