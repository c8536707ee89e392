/**
 * Direct preference optimisation (Rafailov et al. 2023), as TRL's DPOTrainer: the policy's and the reference's
 * log-probabilities of each completion (prompt tokens excluded), and TRL's sigmoid, hinge, IPO and robust losses.
 */
import { TunekitError } from '../errors';
import { Model } from '../model';
import { checkChoice, checkNumber, checkOptions } from '../validate';
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
import { Reference } from './reference';

export type DPOLossType = 'sigmoid' | 'hinge' | 'ipo' | 'robust';

export interface DPOOptions extends PairTrainingOptions {
  /**
   * The model the policy is kept close to. Default: the policy with its adapters switched off when it runs a PEFT
   * adapter (no second copy, as TRL does with PEFT), else a frozen copy of the policy as it was when DPO first ran.
   */
  reference?: Model;
  /** Strength of the pull towards the reference (TRL default 0.1). */
  beta?: number;
  lossType?: DPOLossType;
  /** The assumed fraction of flipped labels, for lossType 'robust' (TRL applies it there only), in [0, 0.5). */
  labelSmoothing?: number;
}

export type DPOEvaluation = Record<'loss' | 'rewards/chosen' | 'rewards/rejected' | 'rewards/accuracies' | 'rewards/margins', number> & {
  pairs: number;
};

export class DPO {
  readonly options: DPOOptions;
  private reference?: Reference;

  constructor(
    readonly policy: Model,
    options: DPOOptions = {},
  ) {
    this.options = checkOptions(options, [...PAIR_TRAINING_OPTIONS, 'reference', 'beta', 'lossType', 'labelSmoothing'], 'DPO');
    if (policy.task !== 'causal-lm') throw new TunekitError('E_CONFIG', `DPO trains a causal-lm policy, not a ${policy.task} model`);
    checkNumber(options.beta, 'beta', { min: 0, minExclusive: true }, 0.1);
    const type = checkChoice<DPOLossType>(options.lossType, ['sigmoid', 'hinge', 'ipo', 'robust'], 'lossType', 'sigmoid');
    if (options.labelSmoothing !== undefined) {
      checkNumber(options.labelSmoothing, 'labelSmoothing', { min: 0, max: 0.5, maxExclusive: true });
      if (type !== 'robust') throw new TunekitError('E_ARG', `labelSmoothing applies to lossType 'robust' only (as TRL), not '${type}'`);
    }
    if (options.reference !== undefined && (!(options.reference instanceof Model) || options.reference === policy))
      throw new TunekitError('E_ARG', 'reference must be a Model other than the policy (leave it out for the default)');
  }

  private get maxLength(): number {
    return contextOf(this.policy, this.options.maxLength);
  }

  /** Sum of the reference's log-probabilities of each row's completion tokens. */
  private async referenceLogps(rows: ReturnType<typeof collatePairs>): Promise<Float32Array> {
    this.reference ??= await Reference.of(this.policy, this.options.reference);
    const per = (await this.reference.logprobs({ inputIds: rows.inputIds, attentionMask: rows.attentionMask })).data;
    const seq = rows.inputIds[0].length;
    const out = new Float32Array(rows.inputIds.length);
    for (let r = 0; r < out.length; r++)
      for (let j = 1; j < seq; j++) out[r] += per[r * (seq - 1) + j - 1] * rows.completionMask[r * seq + j];
    return out;
  }

  private async run(batch: TokenizedPair[], backward: boolean): Promise<PairStats> {
    const rows = collatePairs(this.policy, batch, this.maxLength);
    const refLogps = await this.referenceLogps(rows);
    return this.policy.objective(
      { inputIds: rows.inputIds, attentionMask: rows.attentionMask },
      {
        name: 'dpo',
        numbers: { beta: this.options.beta ?? 0.1, label_smoothing: this.options.labelSmoothing ?? 0 },
        strings: { loss_type: this.options.lossType ?? 'sigmoid' },
        arrays: { completion_mask: rows.completionMask, ref_logps: refLogps },
      },
      { backward },
    );
  }

  /** Trains the policy's trainable parameters on the pairs; returns every step's loss and TRL's reward statistics. */
  async train(pairs: (PreferencePair | TokenizedPair)[]): Promise<{ steps: number; history: PairStats[] }> {
    const o = this.options;
    const data = tokenizePairs(pairs, o.tokenizer, this.maxLength, 'DPO.train');
    // Made before the first update: a default frozen copy holds the starting weights.
    this.reference ??= await Reference.of(this.policy, o.reference);
    return trainOnPairs(this.policy, data, o, 1e-6, 'dpo', (batch) => this.run(batch, true));
  }

  /** The DPO loss and TRL's reward statistics over the pairs, with dropout off. */
  async evaluate(pairs: (PreferencePair | TokenizedPair)[]): Promise<DPOEvaluation> {
    const data = tokenizePairs(pairs, this.options.tokenizer, this.maxLength, 'DPO.evaluate');
    const s = await evaluatePairs(this.policy, data, this.options, (batch) => this.run(batch, false));
    return {
      loss: s.loss,
      'rewards/chosen': s['rewards/chosen'],
      'rewards/rejected': s['rewards/rejected'],
      'rewards/accuracies': s['rewards/accuracies'],
      'rewards/margins': s['rewards/margins'],
      pairs: data.length,
    };
  }

  /** Frees the frozen reference copy, if DPO made one. */
  dispose(): void {
    this.reference?.dispose();
    this.reference = undefined;
  }
}
