/** Scores sampled responses for PPO and GRPO: a one-output reward model, or a JS function, checked either way. */
import { padRows } from '../batch';
import { TunekitError } from '../errors';
import type { Model } from '../model';
import type { Tokenizer } from '../tokenizer';
import { show } from '../validate';

/** Scores whole samples: texts when the run has a tokenizer, else token ids (query + response). */
export type RewardFn = (samples: { text?: string; ids: number[] }[]) => number[] | Promise<number[]>;

export interface Scoring {
  rewardModel?: Model;
  rewardFn?: RewardFn;
  /** The policy's tokenizer: decodes samples for rewardFn and for a reward model with another vocabulary. */
  tokenizer?: Tokenizer;
  /** The reward model's tokenizer when it differs from the policy's. */
  rewardTokenizer?: Tokenizer;
}

/** A sampled response up to and including stopTokenId, as TRL truncates after the stop token (PPO, GRPO). */
export function truncateAtStop(response: number[], stopTokenId: number | undefined): number[] {
  const at = stopTokenId === undefined ? -1 : response.indexOf(stopTokenId);
  return at < 0 ? response : response.slice(0, at + 1);
}

export async function scoreResponses(o: Scoring, queries: number[][], responses: number[][]): Promise<number[]> {
  if (o.rewardModel) {
    let rows = queries.map((q, i) => [...q, ...responses[i]]);
    if (o.rewardTokenizer) {
      if (!o.tokenizer) throw new TunekitError('E_ARG', 'rewardTokenizer needs the tokenizer option (to decode the policy text)');
      rows = rows.map((r) => o.rewardTokenizer!.encode(o.tokenizer!.decode(r, { skipSpecialTokens: true })));
    }
    const { inputIds, attentionMask } = padRows(rows, o.rewardModel.padTokenId ?? 0);
    await o.rewardModel.eval();
    const out = await o.rewardModel.forward({ inputIds, attentionMask });
    return Array.from(out.logits.data);
  }
  if (!o.rewardFn) throw new TunekitError('E_ARG', 'scoring needs rewardModel or rewardFn');
  const samples = queries.map((q, i) => {
    const ids = [...q, ...responses[i]];
    return o.tokenizer ? { ids, text: o.tokenizer.decode(ids, { skipSpecialTokens: true }) } : { ids };
  });
  let got: unknown;
  try {
    got = await o.rewardFn(samples);
  } catch (e) {
    throw new TunekitError('E_ARG', `rewardFn threw: ${(e as Error)?.message ?? String(e)}`, { cause: e });
  }
  if (!Array.isArray(got) || got.length !== samples.length)
    throw new TunekitError('E_ARG', `rewardFn must return ${samples.length} numbers (one per sample), got ${show(got)}`);
  got.forEach((v, i) => {
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new TunekitError('E_NAN', `rewardFn returned ${show(v)} for sample ${i}`);
  });
  return got as number[];
}

/** The checks PPO and GRPO share on their scoring options. */
export function checkScoring(o: Scoring): void {
  if (o.rewardModel !== undefined && o.rewardFn !== undefined) throw new TunekitError('E_ARG', 'give rewardModel or rewardFn, not both');
  if (o.rewardModel !== undefined && (o.rewardModel.task !== 'sequence-classification' || o.rewardModel.numLabels !== 1))
    throw new TunekitError('E_CONFIG', 'rewardModel must be a sequence classifier with one output (numLabels: 1)');
  if (o.rewardFn !== undefined && typeof o.rewardFn !== 'function')
    throw new TunekitError('E_ARG', `rewardFn must be a function, got ${show(o.rewardFn)}`);
}
