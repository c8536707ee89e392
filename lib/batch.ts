/** Checks JS batches and packs them into the flat typed arrays the addon takes. */
import { TunekitError } from './errors';
import type { RawBatch } from './native';

export interface BatchInput {
  inputIds: number[][];
  attentionMask?: number[][];
  /** [batch] class ids for classification, [batch][seq] token ids (-100 = ignored) for language models. */
  labels?: number[] | number[][];
}

function rectangular(name: string, rows: unknown, seq: number | undefined): number[][] {
  if (!Array.isArray(rows) || rows.length === 0)
    throw new TunekitError('E_TYPE', `${name} must be a non-empty array of arrays of integers`);
  rows.forEach((r, i) => {
    if (!Array.isArray(r)) throw new TunekitError('E_TYPE', `${name}[${i}] must be an array of integers`);
    const want = seq ?? (rows[0] as unknown[]).length;
    if (r.length !== want) {
      throw new TunekitError(
        'E_SHAPE',
        `${name}[${i}] has length ${r.length} but ${seq === undefined ? `${name}[0]` : 'inputIds'} has ${want}`,
      );
    }
    r.forEach((v, j) => {
      if (typeof v !== 'number' || !Number.isInteger(v))
        throw new TunekitError('E_TYPE', `${name}[${i}][${j}] must be an integer, got ${JSON.stringify(v)}`);
    });
  });
  return rows as number[][];
}

export function packBatch(b: BatchInput, opts: { vocabSize: number; requireLabels?: boolean }): RawBatch {
  if (!b || typeof b !== 'object') throw new TunekitError('E_TYPE', 'batch must be an object with inputIds');
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
      raw.labels = Float32Array.from(l.flat());
      raw.labelsShape = [batch, seq];
    } else {
      (b.labels as unknown[]).forEach((v, i) => {
        if (typeof v !== 'number' || !Number.isFinite(v)) throw new TunekitError('E_TYPE', `labels[${i}] must be a number`);
      });
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
