export { RewardTrainer } from './reward';
export type { RewardEvaluation, RewardTrainerOptions } from './reward';
export { DPO } from './dpo';
export type { DPOEvaluation, DPOLossType, DPOOptions } from './dpo';
export type { PairStats, PairTrainingOptions, PreferencePair, TokenizedPair } from './pairs';
export { PPO } from './ppo';
export type { PPOOptions, PPOStats, RewardFn, Rollout } from './ppo';
export { GRPO } from './grpo';
export type { Generation, GRPOLossType, GRPOOptions } from './grpo';
