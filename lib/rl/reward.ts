/**
 * Reward models from preference pairs, as TRL's RewardTrainer: a sequence classifier with one output scores prompt +
 * completion at its last non-pad token, trained so that chosen outscores rejected.
 */
import { TunekitError } from '../errors';
import type { Model } from '../model';
import { checkNumber, checkOptions } from '../validate';
import {
  collatePairs,
  contextOf,
  evaluatePairs,
  PAIR_TRAINING_OPTIONS,
  PairStats,
  PairTrainingOptions,
  PreferencePair,
  TokenizedPair,
  tokenizePairs,
  trainOnPairs,
} from './pairs';

export interface RewardTrainerOptions extends PairTrainingOptions {
  /** Adds centerRewardsCoefficient * mean((r_chosen + r_rejected)^2), pulling rewards towards zero mean (TRL). */
  centerRewardsCoefficient?: number;
  /** A margin for every pair (a pair's own `margin` wins): the loss is -logsigmoid(r_chosen - r_rejected - margin). */
  margin?: number;
}

export interface RewardEvaluation {
  loss: number;
  /** Fraction of pairs whose chosen response outscores the rejected one. */
  accuracy: number;
  /** Mean of r_chosen - r_rejected. */
  margin: number;
  meanReward: number;
  pairs: number;
}

export class RewardTrainer {
  readonly options: RewardTrainerOptions;

  constructor(
    readonly model: Model,
    options: RewardTrainerOptions = {},
  ) {
    this.options = checkOptions(options, [...PAIR_TRAINING_OPTIONS, 'centerRewardsCoefficient', 'margin'], 'RewardTrainer');
    if (model.task !== 'sequence-classification' || model.numLabels !== 1)
      throw new TunekitError(
        'E_CONFIG',
        `a reward model is a sequence classifier with one output: load it with { task: 'sequence-classification', numLabels: 1 }`,
      );
    if (options.centerRewardsCoefficient !== undefined)
      checkNumber(options.centerRewardsCoefficient, 'centerRewardsCoefficient', { min: 0 });
    if (options.margin !== undefined) checkNumber(options.margin, 'margin');
  }

  private get maxLength(): number {
    return contextOf(this.model, this.options.maxLength);
  }

  private objective(batch: TokenizedPair[]) {
    const margins = batch.map((p) => p.margin ?? this.options.margin);
    const margin = margins.some((m) => m !== undefined) ? Float32Array.from(margins.map((m) => m ?? 0)) : undefined;
    return {
      name: 'pairwise-reward',
      numbers: { center_rewards_coefficient: this.options.centerRewardsCoefficient ?? 0 },
      ...(margin ? { arrays: { margin } } : {}),
    };
  }

  private run(batch: TokenizedPair[], backward: boolean): Promise<PairStats> {
    const rows = collatePairs(this.model, batch, this.maxLength);
    return this.model.objective(rows, this.objective(batch), { backward });
  }

  /** Trains on the pairs; returns every step's loss, accuracy, margin and rewards. */
  async train(pairs: (PreferencePair | TokenizedPair)[]): Promise<{ steps: number; history: PairStats[] }> {
    const o = this.options;
    const data = tokenizePairs(pairs, o.tokenizer, this.maxLength, 'RewardTrainer.train');
    return trainOnPairs(this.model, data, o, 1e-4, 'reward', (batch) => this.run(batch, true));
  }

  /** Loss, pairwise accuracy, mean margin and mean reward over the pairs, with dropout off. */
  async evaluate(pairs: (PreferencePair | TokenizedPair)[]): Promise<RewardEvaluation> {
    const data = tokenizePairs(pairs, this.options.tokenizer, this.maxLength, 'RewardTrainer.evaluate');
    const s = await evaluatePairs(this.model, data, this.options, (batch) => this.run(batch, false));
    return { loss: s.loss, accuracy: s.accuracy, margin: s.margin, meanReward: s.meanReward, pairs: data.length };
  }
}
