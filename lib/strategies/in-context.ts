/**
 * In-context classification: the frozen causal LM reads a prompt of demonstrations from the training split and the
 * query, and the class is the label word it finds most likely next. Nothing trains.
 *
 * - Demonstrations: 'random' (one seeded draw for every query), 'balanced' (one seeded draw with the classes in equal
 *   numbers), or 'similar' (per query, the training examples nearest to it by the model's own pooled embedding, the
 *   nearest last: Liu et al. 2022, "What Makes Good In-Context Examples for GPT-3?").
 * - Scoring: each label word's log-likelihood after the prompt, divided by its token count (so multi-token words are
 *   not penalised for their length); the prompt runs once per query and every label word extends its KV cache
 *   (Model.logLikelihood).
 * - Calibration (Zhao et al. 2021, "Calibrate Before Use"): the label probabilities for a content-free query ("N/A")
 *   under the same demonstrations divide the query's, which removes the prompt's bias towards some label words.
 */
import { TunekitError } from '../errors';
import type { Model, Pooling } from '../model';
import { mulberry32, shuffled } from '../random';
import { embedIds } from '../retrieval';
import type { Tokenizer } from '../tokenizer';
import type { EvalResult, Example } from '../trainer';
import { checkBoolean, checkChoice, checkNumber, checkOptions } from '../validate';
import { peakRssMiB, StrategyData, StrategyResult } from './common';

export const ICL_SUMMARY =
  'icl = in-context learning: the frozen causal LM reads demonstrations in its prompt and the likeliest label word is the class (--template, --label-words, --shots, --selection random|balanced|similar, --calibrate)';

export const SELECTIONS = ['random', 'balanced', 'similar'] as const;
export type Selection = (typeof SELECTIONS)[number];

export interface InContextOptions {
  /** Encodes the template's text and the label words (the model's own tokenizer). */
  tokenizer: Tokenizer;
  /** One labelled example, with `{text}` and then `{label}`; default `'Review: {text}\nSentiment: {label}'`. */
  template?: string;
  /** The word for each class, in label order (class i is `labelWords[i]`). */
  labelWords: string[];
  /** Demonstrations before each query (default 0: zero-shot). */
  shots?: number;
  selection?: Selection;
  calibrate?: boolean;
  /** The content-free query calibration scores (default Zhao et al.'s `'N/A'`). */
  contentFree?: string;
  /** Between demonstrations and before the query (default a blank line). */
  separator?: string;
  /** Pooling of the embeddings 'similar' compares (default: the family's). */
  pooling?: Pooling;
  seed?: number;
  onProgress?: (done: number, total: number) => void;
}

export const IN_CONTEXT_OPTIONS = [
  'tokenizer',
  'template',
  'labelWords',
  'shots',
  'selection',
  'calibrate',
  'contentFree',
  'separator',
  'pooling',
  'seed',
  'onProgress',
];

/** A template cut at its slots, with the space before `{label}` moved onto the label words, as the words follow it in
 * running text ("Sentiment: positive" scores " positive", one BPE token, not "positive" after a dangling space). */
interface Pieces {
  before: number[];
  between: number[];
  after: number[];
  labels: number[][];
  separator: number[];
}

export class InContext {
  readonly name = 'icl';
  readonly options: Required<Omit<InContextOptions, 'pooling' | 'onProgress'>> & Pick<InContextOptions, 'pooling' | 'onProgress'>;
  private readonly pieces: Pieces;

  constructor(options: InContextOptions) {
    checkOptions(options, IN_CONTEXT_OPTIONS, 'InContext');
    if (!options?.tokenizer || typeof options.tokenizer.encode !== 'function')
      throw new TunekitError('E_ARG', "InContext needs the model's tokenizer: new InContext({ tokenizer, labelWords, ... })");
    const template = options.template ?? 'Review: {text}\nSentiment: {label}';
    if (typeof template !== 'string') throw new TunekitError('E_TYPE', 'template must be a string');
    const [t, l] = [template.indexOf('{text}'), template.indexOf('{label}')];
    if (t < 0 || l < 0 || l < t || template.indexOf('{text}', t + 1) >= 0 || template.indexOf('{label}', l + 1) >= 0)
      throw new TunekitError('E_ARG', `template must hold {text} once and then {label} once, got ${JSON.stringify(template)}`);
    const words = options.labelWords;
    if (!Array.isArray(words) || words.length < 2 || words.some((w) => typeof w !== 'string' || w.trim() === ''))
      throw new TunekitError('E_ARG', 'labelWords must list a non-empty word for each of at least two classes');
    this.options = {
      tokenizer: options.tokenizer,
      template,
      labelWords: words,
      shots: checkNumber(options.shots, 'shots', { integer: true, min: 0 }, 0),
      selection: checkChoice(options.selection, SELECTIONS, 'selection', 'random'),
      calibrate: checkBoolean(options.calibrate, 'calibrate', false),
      contentFree: options.contentFree ?? 'N/A',
      separator: options.separator ?? '\n\n',
      seed: checkNumber(options.seed, 'seed', { integer: true, min: 0 }, 42),
      pooling: options.pooling === undefined ? undefined : checkChoice(options.pooling, ['cls', 'mean', 'last'] as const, 'pooling'),
      onProgress: options.onProgress,
    };
    const enc = (s: string) => (s === '' ? [] : this.options.tokenizer.encode(s, { addSpecialTokens: false }));
    const between = template.slice(t + '{text}'.length, l);
    const space = /\s*$/.exec(between)![0];
    const labels = words.map((w, i) => {
      const ids = enc(space + w);
      if (ids.length === 0) throw new TunekitError('E_ARG', `label word ${i} (${JSON.stringify(w)}) encodes to no token`);
      return ids;
    });
    this.pieces = {
      before: enc(template.slice(0, t)),
      between: enc(between.slice(0, between.length - space.length)),
      after: enc(template.slice(l + '{label}'.length)),
      labels,
      separator: enc(this.options.separator),
    };
  }

  /** The prompt for one query: demonstrations (dropped from the farthest while the whole would not fit), then the
   * query up to its label. Returns the prompt and how many demonstrations it kept. */
  prompt(model: Model, demos: Example[], query: number[]): { ids: number[]; shots: number } {
    const p = this.pieces;
    const room = model.dims.maxPositions - Math.max(...p.labels.map((l) => l.length)) + 1;
    const tail = [...p.before, ...query, ...p.between];
    if (tail.length > room)
      throw new TunekitError(
        'E_RANGE',
        `a query of ${query.length} tokens leaves no room for its label in the model's context of ${model.dims.maxPositions} positions (cut the texts shorter: maxLength)`,
      );
    const shown = demos.map((d) => [...p.before, ...d.inputIds, ...p.between, ...p.labels[d.label!], ...p.after, ...p.separator]);
    let first = 0;
    let length = shown.reduce((a, s) => a + s.length, 0) + tail.length;
    while (length > room) length -= shown[first++].length;
    return { ids: [...shown.slice(first).flat(), ...tail], shots: shown.length - first };
  }

  /** Each class's log-probability (over the label words, length-normalised), for one prompt. */
  async labelLogProbs(model: Model, prompt: number[]): Promise<number[]> {
    const ll = await model.logLikelihood(prompt, this.pieces.labels);
    return logNormalise(ll.map((v, i) => v / this.pieces.labels[i].length));
  }

  async run(model: Model, data: StrategyData): Promise<StrategyResult> {
    if (model.task !== 'causal-lm') throw new TunekitError('E_STATE', `in-context learning needs a causal-lm model, not ${model.task}`);
    const o = this.options;
    const classes = o.labelWords.length;
    const train = data?.train ?? [];
    for (const [name, split] of [
      ['training', train],
      ['validation', data?.validation ?? []],
      ['test', data?.test ?? []],
    ] as const)
      for (const [i, e] of split.entries())
        if (typeof e.label !== 'number' || e.label < 0 || e.label >= classes || !Number.isInteger(e.label))
          throw new TunekitError('E_ARG', `icl: ${name} example ${i} has label ${e.label}, not a class in [0, ${classes}) of labelWords`);
    if (o.shots > train.length)
      throw new TunekitError('E_ARG', `icl: ${o.shots} shots but the training split has ${train.length} examples`);
    const start = Date.now();
    await model.eval();
    const fixed = o.selection === 'similar' ? [] : this.draw(train, classes);
    const index = o.selection === 'similar' && o.shots > 0 ? await this.embedAll(model, train) : undefined;
    const total = (data.validation?.length ?? 0) + (data.test?.length ?? 0);
    let done = 0;
    let shotsUsed = 0;
    let prompts = 0;
    const score = async (split?: Example[]): Promise<EvalResult | undefined> => {
      if (!split?.length) return undefined;
      let correct = 0;
      let loss = 0;
      const queries = index ? await this.embedAll(model, split) : undefined;
      for (const [i, e] of split.entries()) {
        const demos = index ? nearest(index, queries![i], train, o.shots) : fixed;
        const { ids, shots } = this.prompt(model, demos, e.inputIds);
        shotsUsed += shots;
        prompts++;
        let lp = await this.labelLogProbs(model, ids);
        if (o.calibrate) {
          const free = this.prompt(model, demos, o.tokenizer.encode(o.contentFree, { addSpecialTokens: false })).ids;
          const cf = await this.labelLogProbs(model, free);
          lp = logNormalise(lp.map((v, c) => v - cf[c]));
        }
        const best = lp.indexOf(Math.max(...lp));
        if (best === e.label) correct++;
        loss -= lp[e.label!];
        o.onProgress?.(++done, total);
      }
      return { loss: loss / split.length, accuracy: correct / split.length, examples: split.length };
    };
    const validation = await score(data.validation);
    const test = await score(data.test);
    return {
      strategy: this.name,
      trainableParameters: 0,
      totalParameters: model.countParameters(),
      wallTimeMs: Date.now() - start,
      peakRssMiB: peakRssMiB(),
      shotsUsed: prompts ? shotsUsed / prompts : 0,
      ...(validation ? { validation } : {}),
      ...(test ? { test } : {}),
    };
  }

  /** The fixed demonstrations of 'random' and 'balanced', in a seeded order. */
  draw(train: Example[], classes: number): Example[] {
    const o = this.options;
    const order = shuffled(train.length, o.seed).map((i) => train[i]);
    if (o.selection === 'random') return order.slice(0, o.shots);
    const byClass = Array.from({ length: classes }, (_, c) => order.filter((e) => e.label === c));
    const picked: Example[] = [];
    for (let round = 0; picked.length < o.shots; round++) {
      const before = picked.length;
      for (const list of byClass) if (round < list.length && picked.length < o.shots) picked.push(list[round]);
      if (picked.length === before) break;
    }
    const rand = mulberry32(o.seed + 1);
    return shuffled(picked.length, Math.floor(rand() * 2 ** 31)).map((i) => picked[i]);
  }

  /** Unit embeddings of the examples by the model's own pooling. */
  private embedAll(model: Model, examples: Example[]): Promise<Float32Array[]> {
    return embedIds(
      model,
      examples.map((e) => e.inputIds),
      this.options.pooling ?? model.family.pooling,
      32,
    );
  }
}

/** Log-probabilities from unnormalised log-scores (a log-softmax). */
function logNormalise(scores: number[]): number[] {
  const top = Math.max(...scores);
  const z = Math.log(scores.reduce((a, v) => a + Math.exp(v - top), 0)) + top;
  return scores.map((v) => v - z);
}

function nearest(index: Float32Array[], query: Float32Array, train: Example[], k: number): Example[] {
  const sims = index.map((r, i) => {
    let d = 0;
    for (let j = 0; j < r.length; j++) d += r[j] * query[j];
    return [d, i] as const;
  });
  sims.sort((a, b) => b[0] - a[0] || a[1] - b[1]);
  return sims
    .slice(0, k)
    .reverse()
    .map(([, i]) => train[i]);
}
