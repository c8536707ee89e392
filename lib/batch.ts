/** Checks JS batches and packs them into the flat typed arrays the addon takes. */
import { TunekitError } from './errors';
import type { RawBatch } from './native';
import { show } from './validate';

export interface BatchInput {
  inputIds: number[][];
  attentionMask?: number[][];
  /** [batch] class ids for classification, [batch][seq] token ids (-100 = ignored) for language models. */
  labels?: number[] | number[][];
}

function rectangular(name: string, rows: unknown, seq: number | undefined): number[][] {
  if (!Array.isArray(rows) || rows.length === 0)
    throw new TunekitError('E_TYPE', `${name} must be a non-empty array of arrays of integers`);
  // Index loops, not forEach: forEach skips the holes of a sparse array ([1, , 3]).
  for (let i = 0; i < rows.length; i++) {
    const r: unknown = rows[i];
    if (!Array.isArray(r)) throw new TunekitError('E_TYPE', `${name}[${i}] must be an array of integers, got ${show(r)}`);
    const want = seq ?? (rows[0] as unknown[]).length;
    if (r.length !== want) {
      throw new TunekitError(
        'E_SHAPE',
        `${name}[${i}] has length ${r.length} but ${seq === undefined ? `${name}[0]` : 'inputIds'} has ${want}`,
      );
    }
    for (let j = 0; j < r.length; j++) {
      const v: unknown = r[j];
      if (typeof v !== 'number' || !Number.isInteger(v))
        throw new TunekitError('E_TYPE', `${name}[${i}][${j}] must be an integer, got ${j in r ? show(v) : 'a hole'}`);
    }
  }
  return rows as number[][];
}

/** Rows of token ids that may differ in length (none empty), each id checked against the vocabulary. */
export function tokenRows(name: string, rows: unknown, vocabSize: number): number[][] {
  if (!Array.isArray(rows) || rows.length === 0)
    throw new TunekitError('E_TYPE', `${name} must be a non-empty array of arrays of token ids`);
  for (let i = 0; i < rows.length; i++) {
    const r: unknown = rows[i];
    if (!Array.isArray(r) || r.length === 0)
      throw new TunekitError('E_SHAPE', `${name}[${i}] must be a non-empty array of token ids, got ${show(r)}`);
    for (let j = 0; j < r.length; j++) {
      const v: unknown = r[j];
      if (typeof v !== 'number' || !Number.isInteger(v))
        throw new TunekitError('E_TYPE', `${name}[${i}][${j}] must be an integer, got ${j in r ? show(v) : 'a hole'}`);
      if (v < 0 || v >= vocabSize)
        throw new TunekitError('E_RANGE', `${name}[${i}][${j}] = ${v} is outside the vocabulary [0, ${vocabSize})`);
    }
  }
  return rows as number[][];
}

/** `numLabels` (a classifier's class count) makes per-sequence labels class ids; 1 (regression) takes any finite number. */
export function packBatch(b: BatchInput, opts: { vocabSize: number; requireLabels?: boolean; numLabels?: number }): RawBatch {
  if (!b || typeof b !== 'object') throw new TunekitError('E_TYPE', `batch must be an object with inputIds, got ${show(b)}`);
  const ids = rectangular('inputIds', b.inputIds, undefined);
  const batch = ids.length;
  const seq = ids[0].length;
  if (seq === 0) throw new TunekitError('E_SHAPE', 'inputIds rows must not be empty');
  const inputIds = new Int32Array(batch * seq);
  ids.forEach((r, i) =>
    r.forEach((v, j) => {
      if (v < 0 || v >= opts.vocabSize)
        throw new TunekitError('E_RANGE', `inputIds[${i}][${j}] = ${v} is outside the vocabulary [0, ${opts.vocabSize})`);
      inputIds[i * seq + j] = v;
    }),
  );
  const raw: RawBatch = { batch, seq, inputIds };
  if (b.attentionMask !== undefined) {
    if (!Array.isArray(b.attentionMask) || b.attentionMask.length !== batch) {
      throw new TunekitError('E_SHAPE', `attentionMask must have ${batch} rows like inputIds`);
    }
    const mask = rectangular('attentionMask', b.attentionMask, seq);
    raw.attentionMask = new Int32Array(batch * seq);
    mask.forEach((r, i) =>
      r.forEach((v, j) => {
        if (v !== 0 && v !== 1) throw new TunekitError('E_RANGE', `attentionMask[${i}][${j}] must be 0 or 1, got ${v}`);
        raw.attentionMask![i * seq + j] = v;
      }),
    );
  }
  if (b.labels !== undefined) {
    if (!Array.isArray(b.labels) || b.labels.length !== batch)
      throw new TunekitError('E_SHAPE', `labels must have ${batch} entries, one per row of inputIds`);
    if (Array.isArray(b.labels[0])) {
      const l = rectangular('labels', b.labels, seq);
      l.forEach((r, i) =>
        r.forEach((v, j) => {
          if (v !== -100 && (v < 0 || v >= opts.vocabSize))
            throw new TunekitError(
              'E_RANGE',
              `labels[${i}][${j}] = ${v} is neither -100 (ignored) nor a token id in [0, ${opts.vocabSize})`,
            );
        }),
      );
      raw.labels = Float32Array.from(l.flat());
      raw.labelsShape = [batch, seq];
    } else {
      const classes = opts.numLabels !== undefined && opts.numLabels > 1 ? opts.numLabels : undefined;
      for (let i = 0; i < batch; i++) {
        const v: unknown = b.labels[i];
        if (typeof v !== 'number' || !Number.isFinite(v)) throw new TunekitError('E_TYPE', `labels[${i}] must be a number, got ${show(v)}`);
        if (classes !== undefined && (!Number.isInteger(v) || v < 0 || v >= classes))
          throw new TunekitError('E_RANGE', `labels[${i}] = ${v} is not a class id in [0, ${classes})`);
      }
      raw.labels = Float32Array.from(b.labels as number[]);
      raw.labelsShape = [batch];
    }
  } else if (opts.requireLabels) {
    throw new TunekitError('E_ARG', 'labels are required here');
  }
  return raw;
}

/** Pads token rows to `length` (default: the longest row); `side` says where the padding goes. */
export function padRows(rows: number[][], padId: number, side: 'right' | 'left' = 'right', length?: number) {
  const cut = length === undefined ? rows : rows.map((r) => r.slice(0, length));
  const seq = length ?? Math.max(1, ...cut.map((r) => r.length));
  const pad = (r: number[], v: number) => {
    const fill = new Array(seq - r.length).fill(v);
    return side === 'right' ? [...r, ...fill] : [...fill, ...r];
  };
  return {
    inputIds: cut.map((r) => pad(r, padId)),
    attentionMask: cut.map((r) => pad(new Array(r.length).fill(1), 0)),
    seq,
    pad,
  };
}
