/**
 * Hard prompt tuning: a search over discrete prompt wordings for in-context classification, scored on a fixed sample
 * of the validation split. Nothing in the model trains.
 *
 * - Template edits, as GrIPS does (Prasad et al. 2023, "GrIPS: Gradient-free, Edit-based Instruction Search"): the
 *   template's words outside its slots are cut into phrases (runs of one to three words; GrIPS uses a constituency
 *   parser), and a candidate applies one edit to a beam member: delete a phrase, swap two phrases, or add a phrase
 *   from the pool (the phrases deleted so far and any the caller gives; GrIPS's fourth edit, paraphrase, needs a
 *   paraphrase model and is left out). The beam keeps the best templates; the search stops after `iterations` or
 *   `patience` rounds without a better score.
 * - Label words, AutoPrompt-style (Shin et al. 2020), restricted to whole words: with the best template, the model's
 *   next-token distribution at the label slot on every sampled example ranks each whole-word token by how much more
 *   likely it is after examples of one class than after all; each class's best-ranked words are tried in turn in place
 *   of its current word, keeping a change when the score improves.
 *
 * A candidate's score is its accuracy on the sample, ties broken by the lower mean negative log-probability of the
 * true label (GrIPS adds an entropy term to the accuracy for the same purpose).
 */
import { TunekitError } from '../errors';
import type { Model } from '../model';
import { mulberry32, shuffled } from '../random';
import type { Tokenizer } from '../tokenizer';
import type { EvalResult, Example } from '../trainer';
import { checkNumber, checkOptions } from '../validate';
import { peakRssMiB, StrategyData, StrategyResult } from './common';
import { IN_CONTEXT_OPTIONS, InContext, InContextOptions } from './in-context';

export interface PromptSearchOptions extends Omit<InContextOptions, 'template' | 'labelWords' | 'onProgress'> {
  /** Where the search starts (InContext's default when absent). */
  template?: string;
  labelWords: string[];
  /** Phrases the 'add' edit may insert besides those deleted during the search. */
  pool?: string[];
  /** Templates kept between rounds (default 4). */
  beam?: number;
  /** Edited candidates per beam member and round (default 6). */
  candidates?: number;
  /** Rounds of template edits (default 5). */
  iterations?: number;
  /** Rounds without a better score before the edits stop (default 2). */
  patience?: number;
  /** Examples of the validation split every candidate is scored on (default 64; a fixed seeded sample). */
  devSize?: number;
  /** Whole words tried per class in the label-word search (default 8; 0 skips it). */
  labelCandidates?: number;
  onProgress?: (scored: number, best: Scored) => void;
}

export interface Scored {
  template: string;
  labelWords: string[];
  /** Accuracy on the sample, and the mean negative log-probability of the true label there. */
  accuracy: number;
  loss: number;
  /** How the candidate was made: 'initial', 'delete', 'swap', 'add' or 'label'. */
  edit: string;
}

export interface PromptSearchResult extends StrategyResult {
  initial: { template: string; labelWords: string[]; validation?: EvalResult; test?: EvalResult };
  best: { template: string; labelWords: string[]; validation?: EvalResult; test?: EvalResult };
  /** Every candidate scored, in the order scored. */
  candidates: Scored[];
}

const SLOT = /(\{text\}|\{label\})/;
const OPTIONS = [...IN_CONTEXT_OPTIONS, 'pool', 'beam', 'candidates', 'iterations', 'patience', 'devSize', 'labelCandidates'];

export class PromptSearch {
  readonly name = 'prompt-search';
  private readonly initial: InContext;
  private readonly settings: {
    beam: number;
    candidates: number;
    iterations: number;
    patience: number;
    devSize: number;
    labelCandidates: number;
  };

  constructor(readonly options: PromptSearchOptions) {
    checkOptions(options, OPTIONS, 'PromptSearch');
    const { pool, beam, candidates, iterations, patience, devSize, labelCandidates, onProgress: _p, ...icl } = options;
    this.initial = new InContext(icl); // checks the template and the label words
    if (pool !== undefined && (!Array.isArray(pool) || pool.some((p) => typeof p !== 'string' || SLOT.test(p))))
      throw new TunekitError('E_ARG', 'pool must be an array of phrases (strings without {text} or {label})');
    this.settings = {
      beam: checkNumber(beam, 'beam', { integer: true, min: 1 }, 4),
      candidates: checkNumber(candidates, 'candidates', { integer: true, min: 1 }, 6),
      iterations: checkNumber(iterations, 'iterations', { integer: true, min: 0 }, 5),
      patience: checkNumber(patience, 'patience', { integer: true, min: 1 }, 2),
      devSize: checkNumber(devSize, 'devSize', { integer: true, min: 1 }, 64),
      labelCandidates: checkNumber(labelCandidates, 'labelCandidates', { integer: true, min: 0 }, 8),
    };
  }

  async run(model: Model, data: StrategyData): Promise<PromptSearchResult> {
    const start = Date.now();
    const validation = data?.validation ?? [];
    if (validation.length === 0) throw new TunekitError('E_ARG', 'prompt-search scores candidates on data.validation, which is empty');
    const o = this.initial.options;
    const s = this.settings;
    const dev = shuffled(validation.length, o.seed)
      .slice(0, s.devSize)
      .map((i) => validation[i]);
    const scored = new Map<string, Scored>();
    const order: Scored[] = [];
    const score = async (template: string, labelWords: string[], edit: string): Promise<Scored> => {
      const key = JSON.stringify([template, labelWords]);
      const had = scored.get(key);
      if (had) return had;
      const r = await this.inContext(template, labelWords).run(model, { train: data.train, validation: dev });
      const c = { template, labelWords, accuracy: r.validation!.accuracy!, loss: r.validation!.loss, edit };
      scored.set(key, c);
      order.push(c);
      this.options.onProgress?.(order.length, best(order));
      return c;
    };

    // Template edits, beam search.
    const rand = mulberry32(o.seed + 7);
    const pool = new Set((this.options.pool ?? []).map((p) => p.trim()).filter(Boolean));
    let beam = [await score(o.template, o.labelWords, 'initial')];
    let stale = 0;
    for (let round = 0; round < s.iterations && stale < s.patience; round++) {
      const before = best(beam);
      const next = [...beam];
      for (const member of beam) {
        for (let k = 0; k < s.candidates; k++) {
          const edited = edit(member.template, [...pool], rand, o.shots > 0);
          if (!edited) continue;
          if (edited.removed) pool.add(edited.removed);
          next.push(await score(edited.template, member.labelWords, edited.edit));
        }
      }
      beam = [...new Set(next)].sort(rank).slice(0, s.beam);
      stale = rank(best(beam), before) < 0 ? 0 : stale + 1;
    }

    // Label words, one class at a time, from the model's own next-token distribution at the label slot.
    let top = best(beam);
    if (s.labelCandidates > 0) {
      const ranked = await this.rankLabelWords(model, top.template, data.train, dev);
      for (let c = 0; c < ranked.length; c++) {
        for (const word of ranked[c].slice(0, s.labelCandidates)) {
          if (top.labelWords.includes(word)) continue;
          const words = top.labelWords.map((w, i) => (i === c ? word : w));
          const cand = await score(top.template, words, 'label');
          if (rank(cand, top) < 0) top = cand;
        }
      }
    }

    const final = async (template: string, labelWords: string[]) => {
      const r = await this.inContext(template, labelWords).run(model, { train: data.train, validation, test: data.test });
      return { template, labelWords, validation: r.validation, test: r.test };
    };
    const initial = await final(o.template, o.labelWords);
    const chosen = await final(top.template, top.labelWords);
    return {
      strategy: this.name,
      trainableParameters: 0,
      totalParameters: model.countParameters(),
      wallTimeMs: Date.now() - start,
      peakRssMiB: peakRssMiB(),
      ...(chosen.validation ? { validation: chosen.validation } : {}),
      ...(chosen.test ? { test: chosen.test } : {}),
      initial,
      best: chosen,
      candidates: order,
    };
  }

  private inContext(template: string, labelWords: string[]): InContext {
    const { tokenizer, shots, selection, calibrate, contentFree, separator, pooling, seed } = this.initial.options;
    return new InContext({ tokenizer, template, labelWords, shots, selection, calibrate, contentFree, separator, pooling, seed });
  }

  /** For each class, whole-word tokens ranked by their mean log-probability at the label slot after the class's
   * examples, less their mean after all examples. */
  private async rankLabelWords(model: Model, template: string, train: Example[], dev: Example[]): Promise<string[][]> {
    const tok: Tokenizer = this.initial.options.tokenizer;
    const classes = this.initial.options.labelWords.length;
    // The vocabulary's whole words, as they follow the slot's space (BPE: 'Ġword'); single tokens only.
    const space = /\s*$/.exec(template.slice(template.indexOf('{text}') + 6, template.indexOf('{label}')))![0];
    const words: { id: number; word: string }[] = [];
    for (let id = 0; id < model.vocabSize; id++) {
      const text = tok.decode([id]);
      if (!/^[A-Za-z]{3,}$/.test(text.slice(space.length)) || !text.startsWith(space)) continue;
      const ids = tok.encode(text, { addSpecialTokens: false });
      if (ids.length === 1 && ids[0] === id) words.push({ id, word: text.slice(space.length) });
    }
    if (words.length === 0) return Array.from({ length: classes }, () => []);
    const icl = this.inContext(template, this.initial.options.labelWords);
    const demos = this.initial.options.shots > 0 && this.initial.options.selection !== 'similar' ? icl.draw(train, classes) : [];
    const sums = Array.from({ length: classes }, () => new Float64Array(words.length));
    const counts = new Array(classes).fill(0);
    const all = new Float64Array(words.length);
    for (const e of dev) {
      const ll = await model.logLikelihood(
        icl.prompt(model, demos, e.inputIds).ids,
        words.map((w) => [w.id]),
      );
      counts[e.label!]++;
      ll.forEach((v, j) => {
        sums[e.label!][j] += v;
        all[j] += v;
      });
    }
    return sums.map((row, c) => {
      if (counts[c] === 0) return [];
      const lift = words.map((w, j) => [row[j] / counts[c] - all[j] / dev.length, j] as const);
      return lift.sort((a, b) => b[0] - a[0] || a[1] - b[1]).map(([, j]) => words[j].word);
    });
  }
}

/** Best first: higher accuracy, then lower loss. */
function rank(a: Scored, b: Scored): number {
  return b.accuracy - a.accuracy || a.loss - b.loss;
}

function best(list: Scored[]): Scored {
  return [...list].sort(rank)[0];
}

/** One GrIPS edit of the template's wording (the slots never move). Phrases are runs of one to three words.
 * `afterLabel: false` leaves the text after {label} alone: without demonstrations no prompt shows it. */
export function edit(
  template: string,
  pool: string[],
  rand: () => number,
  afterLabel = true,
): { template: string; edit: string; removed?: string } | undefined {
  // Segments alternate text and slots: text, slot, text, slot, text.
  const segments = template.split(SLOT);
  const editable = (i: number) => i % 2 === 0 && (afterLabel || i < 4);
  const words = segments.map((seg, i) => (!editable(i) || seg === '' ? [] : seg.split(/(?<=\s)(?=\S)/)));
  const phrases: { seg: number; at: number; len: number }[] = [];
  words.forEach((ws, seg) => {
    for (let at = 0; at < ws.length;) {
      const len = Math.min(ws.length - at, 1 + Math.floor(rand() * 3));
      phrases.push({ seg, at, len });
      at += len;
    }
  });
  const text = (p: { seg: number; at: number; len: number }) => words[p.seg].slice(p.at, p.at + p.len).join('');
  const join = (ws: string[][]) => segments.map((seg, i) => (editable(i) ? ws[i].join('') : seg)).join('');
  const kinds = ['delete', 'swap', 'add'].filter(
    (k) => (k === 'delete' && phrases.length > 0) || (k === 'swap' && phrases.length > 1) || (k === 'add' && pool.length > 0),
  );
  if (kinds.length === 0) return undefined;
  const kind = kinds[Math.floor(rand() * kinds.length)];
  const ws = words.map((w) => [...w]);
  if (kind === 'delete') {
    const p = phrases[Math.floor(rand() * phrases.length)];
    ws[p.seg].splice(p.at, p.len);
    return { template: join(ws), edit: kind, removed: text(p).trim() };
  }
  if (kind === 'swap') {
    const i = Math.floor(rand() * phrases.length);
    let j = Math.floor(rand() * (phrases.length - 1));
    if (j >= i) j++;
    const [a, b] = [phrases[i], phrases[j]].sort((x, y) => x.seg - y.seg || x.at - y.at);
    const [ta, tb] = [ws[a.seg].slice(a.at, a.at + a.len), ws[b.seg].slice(b.at, b.at + b.len)];
    // The later phrase first, so the earlier one's indices still hold.
    ws[b.seg].splice(b.at, b.len, ...ta);
    ws[a.seg].splice(a.at, a.len, ...tb);
    return { template: join(ws), edit: kind };
  }
  const phrase = pool[Math.floor(rand() * pool.length)];
  const textSegs = ws.map((_, i) => i).filter(editable);
  const seg = textSegs[Math.floor(rand() * textSegs.length)];
  const at = Math.floor(rand() * (ws[seg].length + 1));
  ws[seg].splice(at, 0, `${phrase} `);
  return { template: join(ws), edit: kind };
}
