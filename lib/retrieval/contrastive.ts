/**
 * Contrastive finetuning of an embedder, as sentence-transformers trains one with MultipleNegativesRankingLoss: each
 * anchor's positive must outscore (by scaled cosine similarity of pooled embeddings) every other positive in the batch
 * and any hard negatives. The loss is computed in the native core (rl/objectives.cpp); the loop is the one the
 * preference trainers share (lib/rl/pairs.ts).
 */
import { TunekitError } from '../errors';
import type { Model, Pooling } from '../model';
import { padRows } from '../batch';
import { contextOf, evaluatePairs, PAIR_TRAINING_OPTIONS, PairStats, PairTrainingOptions, trainOnPairs } from '../rl/pairs';
import { checkChoice, checkNumber, checkOptions, show } from '../validate';

/** One training example: a query (or sentence) and a text that should embed near it; optionally one that should not. */
export interface ContrastivePair {
  anchor: string;
  positive: string;
  negative?: string;
}

export interface ContrastiveTrainerOptions extends PairTrainingOptions {
  /** How hidden states pool into the embedding (default 'mean', sentence-transformers' default). */
  pooling?: Pooling;
  /** Multiplies the cosine similarities before the softmax (default 20, sentence-transformers'). */
  scale?: number;
}

export interface ContrastiveEvaluation {
  loss: number;
  /** Fraction of anchors whose own positive scores highest among the batch's candidates. */
  accuracy: number;
  positiveCosine: number;
  negativeCosine: number;
  pairs: number;
}

type Rows = { anchor: number[]; positive: number[]; negative?: number[] };

export class ContrastiveTrainer {
  readonly options: ContrastiveTrainerOptions;

  constructor(
    readonly model: Model,
    options: ContrastiveTrainerOptions = {},
  ) {
    this.options = checkOptions(options, [...PAIR_TRAINING_OPTIONS, 'pooling', 'scale'], 'ContrastiveTrainer');
    if (model.task !== 'feature-extraction')
      throw new TunekitError(
        'E_CONFIG',
        `an embedder trains as a base model: load it with { task: 'feature-extraction' } (got '${model.task}')`,
      );
    checkChoice(options.pooling, ['cls', 'mean', 'last'], 'pooling', 'mean');
    if (options.scale !== undefined) checkNumber(options.scale, 'scale', { min: 0, minExclusive: true });
  }

  private tokenize(pairs: ContrastivePair[], what: string): Rows[] {
    const tok = this.options.tokenizer;
    if (!tok) throw new TunekitError('E_ARG', `${what}: the tokenizer option is required`);
    if (!Array.isArray(pairs) || pairs.length === 0) throw new TunekitError('E_ARG', `${what}: no pairs`);
    const max = contextOf(this.model, this.options.maxLength);
    const withNegatives = pairs[0]?.negative !== undefined;
    return pairs.map((p, i) => {
      checkOptions(p, ['anchor', 'positive', 'negative'], `${what}: pairs[${i}]`);
      if ((p.negative !== undefined) !== withNegatives)
        throw new TunekitError('E_ARG', `${what}: pairs[${i}]: give a negative for every pair or for none`);
      for (const k of ['anchor', 'positive', ...(withNegatives ? ['negative'] : [])] as const) {
        const v = p[k as keyof ContrastivePair];
        if (typeof v !== 'string' || v.trim() === '')
          throw new TunekitError('E_TYPE', `${what}: pairs[${i}].${k} must be a non-empty string, got ${show(v)}`);
      }
      const ids = (s: string) => tok.encode(s, { maxLength: max });
      return { anchor: ids(p.anchor), positive: ids(p.positive), ...(withNegatives ? { negative: ids(p.negative!) } : {}) };
    });
  }

  private run(batch: Rows[], backward: boolean): Promise<PairStats> {
    const ids = [...batch.map((b) => b.anchor), ...batch.map((b) => b.positive), ...batch.flatMap((b) => (b.negative ? [b.negative] : []))];
    const { inputIds, attentionMask } = padRows(ids, this.model.padTokenId ?? 0);
    return this.model.objective(
      { inputIds, attentionMask },
      {
        name: 'multiple-negatives-ranking',
        numbers: { anchors: batch.length, scale: this.options.scale ?? 20 },
        strings: { pooling: this.options.pooling ?? 'mean' },
      },
      { backward },
    );
  }

  /** Trains on the pairs (dropout on, as sentence-transformers trains); returns every step's loss and accuracy. */
  async train(pairs: ContrastivePair[]): Promise<{ steps: number; history: PairStats[] }> {
    const rows = this.tokenize(pairs, 'ContrastiveTrainer.train');
    if (rows.length < 2 && rows[0].negative === undefined)
      throw new TunekitError('E_ARG', 'ContrastiveTrainer.train: in-batch negatives need at least two pairs (or hard negatives)');
    return trainOnPairs(this.model, rows, { disableDropout: false, ...this.options }, 5e-5, 'contrastive', (b) => this.run(b, true));
  }

  /** Loss, in-batch accuracy and mean cosines over the pairs in batches of batchSize, dropout off. */
  async evaluate(pairs: ContrastivePair[]): Promise<ContrastiveEvaluation> {
    const rows = this.tokenize(pairs, 'ContrastiveTrainer.evaluate');
    const s = await evaluatePairs(this.model, rows, this.options, (b) => this.run(b, false));
    return { loss: s.loss, accuracy: s.accuracy, positiveCosine: s.positiveCosine, negativeCosine: s.negativeCosine, pairs: rows.length };
  }
}
