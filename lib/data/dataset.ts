/** Datasets of text, labelled text or prompt/response pairs, from JSONL, CSV or JSON files or the built-in sets. */
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { TunekitError } from '../errors';
import type { Tokenizer } from '../tokenizer';
import type { Example } from '../trainer';
import { shuffled } from '../random';
import { readCsvRecords } from './csv';
import { checkOptions, show } from '../validate';

/** One example. Either `text` (with an optional class `label`) or a `prompt`/`response` pair. */
export interface Row {
  text?: string;
  label?: number;
  prompt?: string;
  response?: string;
}

/** Which field of the file holds what (defaults: text, label, prompt, response). */
export interface FieldMap {
  text?: string;
  label?: string;
  prompt?: string;
  response?: string;
}

export interface ReadOptions {
  fields?: FieldMap;
  /** Class names, index = label id; string labels in the file are looked up here. */
  labelNames?: string[];
  /** CSV only (default ','). */
  delimiter?: string;
}

export type DatasetKind = 'classification' | 'language-modeling' | 'prompt-response';

type Raw = Record<string, unknown>;

/** The most classes a label field may name: a bound that keeps one stray number from sizing a head (and arrays) by it. */
export const MAX_CLASSES = 10_000;

/** A row and where it was read (file:line), for messages about the data set as a whole. */
interface Located {
  row: Row;
  where: string;
}

/** Turns raw records into rows; string labels get ids in first-seen order unless names are given. */
class RowMapper {
  readonly names: string[];
  /** Whether the file's labels are class names or class ids (without given names, one file may not mix them). */
  private labelKind?: 'name' | 'id';
  /** The fields of the first record, for messages. */
  firstFields?: string[];
  private readonly fixedNames: boolean;
  readonly f: Required<FieldMap>;
  constructor(opts: ReadOptions) {
    checkOptions(opts, ['fields', 'labelNames', 'delimiter'], 'read');
    if (opts.fields !== undefined) checkOptions(opts.fields, ['text', 'label', 'prompt', 'response'], 'fields');
    this.f = { text: 'text', label: 'label', prompt: 'prompt', response: 'response', ...opts.fields };
    for (const [k, v] of Object.entries(this.f)) {
      if (typeof v !== 'string' || v.length === 0)
        throw new TunekitError('E_ARG', `field mapping ${k} must be a non-empty string, got ${JSON.stringify(v)}`);
    }
    this.names = opts.labelNames?.slice() ?? [];
    this.fixedNames = opts.labelNames !== undefined;
  }

  map(raw: unknown, where: string): Row {
    if (!raw || typeof raw !== 'object' || Array.isArray(raw))
      throw new TunekitError('E_FORMAT', `${where}: expected an object, got ${JSON.stringify(raw)?.slice(0, 60)}`);
    const r = raw as Raw;
    this.firstFields ??= Object.keys(r);
    const f = this.f;
    const str = (key: string) => {
      const v = r[key];
      if (v === undefined || v === null) return undefined;
      if (typeof v !== 'string')
        throw new TunekitError('E_FORMAT', `${where}: field "${key}" must be a string, got ${JSON.stringify(v).slice(0, 60)}`);
      return v;
    };
    const text = str(f.text);
    const prompt = str(f.prompt);
    const response = str(f.response);
    const row: Row = {};
    if (text !== undefined) row.text = text;
    else if (prompt !== undefined && response !== undefined) {
      row.prompt = prompt;
      row.response = response;
    } else {
      throw new TunekitError(
        'E_FORMAT',
        `${where}: no "${f.text}" field (nor "${f.prompt}" + "${f.response}"); fields present: ${Object.keys(r).join(', ') || 'none'}`,
      );
    }
    const label = r[f.label];
    if (label !== undefined && label !== null && label !== '') row.label = this.labelId(label, where);
    return row;
  }

  private labelId(v: unknown, where: string): number {
    const isId = typeof v === 'number' || (typeof v === 'string' && /^\d+$/.test(v.trim()) && !this.names.includes(v));
    if (typeof v !== 'number' && typeof v !== 'string')
      throw new TunekitError('E_FORMAT', `${where}: label must be a class name or a class id (an integer >= 0), got ${show(v)}`);
    if (!this.fixedNames) {
      const kind = isId ? 'id' : 'name';
      if (this.labelKind && this.labelKind !== kind)
        throw new TunekitError(
          'E_FORMAT',
          `${where}: label ${show(v)} is a class ${kind}, but earlier rows' labels are class ${this.labelKind}s; use one kind (or give labelNames)`,
        );
      this.labelKind = kind;
    }
    if (isId) {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 0)
        throw new TunekitError('E_FORMAT', `${where}: label must be a class name or a class id (an integer >= 0), got ${show(v)}`);
      if (this.fixedNames && n >= this.names.length)
        throw new TunekitError('E_FORMAT', `${where}: label ${n} is out of range for ${this.names.length} classes`);
      if (n >= MAX_CLASSES) throw new TunekitError('E_FORMAT', `${where}: label ${n} exceeds the ${MAX_CLASSES} classes tunekit supports`);
      return n;
    }
    let id = this.names.indexOf(v);
    if (id < 0) {
      if (this.fixedNames)
        throw new TunekitError('E_FORMAT', `${where}: label ${JSON.stringify(v)} is not one of ${this.names.join(', ')}`);
      if (this.names.length >= MAX_CLASSES)
        throw new TunekitError(
          'E_FORMAT',
          `${where}: more than ${MAX_CLASSES} distinct labels; is ${JSON.stringify(this.f.label)} a class field?`,
        );
      id = this.names.push(v as string) - 1;
    }
    return id;
  }
}

function checkFile(file: string): void {
  if (typeof file !== 'string') throw new TunekitError('E_TYPE', 'data file must be a string path');
  if (!fs.existsSync(file)) throw new TunekitError('E_FILE', `data file ${file} does not exist`);
  if (!fs.statSync(file).isFile()) throw new TunekitError('E_FILE', `data file ${file} is not a file`);
}

export class Dataset {
  readonly rows: readonly Row[];
  /** Class names (index = label id) when the rows are labelled. */
  readonly labelNames?: string[];
  /** Where the rows came from, for messages and reports. */
  readonly source: string;

  constructor(rows: Row[], opts: { labelNames?: string[]; source?: string } = {}) {
    checkOptions(opts, ['labelNames', 'source'], 'Dataset');
    if (!Array.isArray(rows)) throw new TunekitError('E_ARG', `Dataset needs an array of rows, got ${show(rows)}`);
    this.rows = rows;
    this.source = opts.source ?? 'rows';
    const names = opts.labelNames;
    if (names !== undefined && (!Array.isArray(names) || names.length > MAX_CLASSES || names.some((n) => typeof n !== 'string')))
      throw new TunekitError('E_ARG', `labelNames must be at most ${MAX_CLASSES} strings, got ${show(names)}`);
    const ids = new Set<number>();
    for (let i = 0; i < rows.length; i++) {
      const l: unknown = rows[i]?.label;
      if (l === undefined) continue;
      const bound = names?.length ?? MAX_CLASSES;
      if (typeof l !== 'number' || !Number.isInteger(l) || l < 0 || l >= bound)
        throw new TunekitError('E_FORMAT', `${this.source}: row ${i} has label ${show(l)}, not a class id in [0, ${bound})`);
      ids.add(l);
    }
    if (names) this.labelNames = names.slice();
    else if (ids.size > 0) {
      // Class ids are 0..K-1. A split may lack a class, but when most ids never occur, a stray number is sizing the head.
      const k = Math.max(...ids) + 1;
      if (k > 2 * ids.size) {
        const gaps = [];
        for (let i = 0; i < k && gaps.length < 5; i++) if (!ids.has(i)) gaps.push(i);
        throw new TunekitError(
          'E_FORMAT',
          `${this.source}: numeric labels must be class ids 0..K-1, but they reach ${k - 1} while only ${ids.size} ids occur ` +
            `(${gaps.join(', ')}${ids.size + gaps.length < k ? ', ...' : ''} never do); give labelNames, or use class names`,
        );
      }
      this.labelNames = Array.from({ length: k }, (_, i) => String(i));
    }
  }

  get length(): number {
    return this.rows.length;
  }
  get numLabels(): number {
    return this.labelNames?.length ?? 0;
  }

  /** What the rows are for: classification when every row has a label, prompt-response pairs, or plain text. */
  get kind(): DatasetKind {
    if (this.rows.length > 0 && this.rows.every((r) => r.label !== undefined)) return 'classification';
    if (this.rows.length > 0 && this.rows.every((r) => r.prompt !== undefined)) return 'prompt-response';
    return 'language-modeling';
  }

  /** Reads rows one at a time from a JSON-lines file of any size. A malformed line is an error naming file and line. */
  static streamJsonl(file: string, opts: ReadOptions = {}): AsyncGenerator<Row> {
    checkFile(file);
    return rowsOnly(jsonlRows(file, new RowMapper(opts)));
  }

  /** Reads rows one at a time from a CSV file with a header row, of any size. */
  static streamCsv(file: string, opts: ReadOptions = {}): AsyncGenerator<Row> {
    checkFile(file);
    return rowsOnly(csvRows(file, new RowMapper(opts), opts.delimiter ?? ','));
  }

  static async fromJsonl(file: string, opts: ReadOptions = {}): Promise<Dataset> {
    checkFile(file);
    const mapper = new RowMapper(opts);
    return collect(jsonlRows(file, mapper), mapper, file, opts);
  }

  static async fromCsv(file: string, opts: ReadOptions = {}): Promise<Dataset> {
    checkFile(file);
    const mapper = new RowMapper(opts);
    return collect(csvRows(file, mapper, opts.delimiter ?? ','), mapper, file, opts);
  }

  /** A JSON file holding an array of objects (read whole; use JSONL for files larger than memory). */
  static async fromJson(file: string, opts: ReadOptions = {}): Promise<Dataset> {
    checkFile(file);
    let data: unknown;
    try {
      data = JSON.parse(await fs.promises.readFile(file, 'utf8'));
    } catch (e) {
      throw new TunekitError('E_FORMAT', `${file}: not valid JSON (${(e as Error).message})`);
    }
    if (!Array.isArray(data)) throw new TunekitError('E_FORMAT', `${file}: expected a JSON array of objects`);
    const mapper = new RowMapper(opts);
    const rows = data.map((raw, i) => ({ row: mapper.map(raw, `${file}: item ${i}`), where: `${file}: item ${i}` }));
    return finish(rows, mapper, file, opts);
  }

  /** A file by its extension (.jsonl, .csv, .json). Built-in sets go through `loadSplits`. */
  static async fromFile(file: string, opts: ReadOptions = {}): Promise<Dataset> {
    const ext = path.extname(file).toLowerCase();
    if (ext === '.jsonl' || ext === '.ndjson') return Dataset.fromJsonl(file, opts);
    if (ext === '.csv') return Dataset.fromCsv(file, opts);
    if (ext === '.tsv') return Dataset.fromCsv(file, { delimiter: '\t', ...opts });
    if (ext === '.json') return Dataset.fromJson(file, opts);
    throw new TunekitError('E_ARG', `${file}: unknown data format ${JSON.stringify(ext)} (expected .jsonl, .csv, .tsv or .json)`);
  }

  /** The same rows in a seeded random order. */
  shuffle(seed: number): Dataset {
    return this.derive(shuffled(this.rows.length, seed).map((i) => this.rows[i]));
  }

  /**
   * Seeded split by fractions, e.g. { train: 0.7, validation: 0.1, test: 0.2 }. Every row lands in exactly one part;
   * the parts' sizes are rounded so they add up to the whole.
   */
  split<K extends string>(fractions: Record<K, number>, seed: number): Record<K, Dataset> {
    const keys = Object.keys(fractions) as K[];
    const fr = keys.map((k) => fractions[k]);
    if (keys.length === 0 || fr.some((f) => typeof f !== 'number' || !(f >= 0)))
      throw new TunekitError('E_ARG', `split fractions must be non-negative numbers, got ${JSON.stringify(fractions)}`);
    const total = fr.reduce((a, b) => a + b, 0);
    if (Math.abs(total - 1) > 1e-9) throw new TunekitError('E_ARG', `split fractions must add up to 1, got ${total}`);
    const order = shuffled(this.rows.length, seed);
    const out = {} as Record<K, Dataset>;
    let start = 0;
    let acc = 0;
    keys.forEach((k, i) => {
      acc += fr[i];
      const end = i === keys.length - 1 ? order.length : Math.round(acc * order.length);
      out[k] = this.derive(order.slice(start, end).map((j) => this.rows[j]));
      start = end;
    });
    return out;
  }

  filter(pred: (r: Row, i: number) => boolean): Dataset {
    return this.derive(this.rows.filter(pred));
  }
  take(n: number): Dataset {
    return this.derive(this.rows.slice(0, n));
  }
  concat(other: Dataset): Dataset {
    return new Dataset([...this.rows, ...other.rows], {
      labelNames: this.labelNames ?? other.labelNames,
      source: `${this.source}+${other.source}`,
    });
  }

  /**
   * Token ids for the Trainer. Classification rows keep their label; prompt/response rows are trained on the
   * response only (prompt positions get label -100, as TRL's completion-only loss); plain text is trained on all.
   */
  toExamples(tokenizer: Tokenizer, opts: { maxLength?: number } = {}): Example[] {
    checkOptions(opts, ['maxLength'], 'toExamples');
    const max = opts.maxLength;
    return this.rows.map((r) => {
      if (r.text !== undefined) {
        const inputIds = tokenizer.encode(r.text.trim(), { maxLength: max });
        return r.label !== undefined ? { inputIds, label: r.label } : { inputIds };
      }
      const p = tokenizer.encode(r.prompt!, { addSpecialTokens: false });
      const eos = tokenizer.eosTokenId;
      const resp = [...tokenizer.encode(r.response!, { addSpecialTokens: false }), ...(eos !== undefined ? [eos] : [])];
      const ids = [...p, ...resp].slice(0, max);
      const labels = ids.map((v, i) => (i < p.length ? -100 : v));
      return { inputIds: ids, labels };
    });
  }

  private derive(rows: Row[]): Dataset {
    return new Dataset(rows, { labelNames: this.labelNames, source: this.source });
  }
}

async function* rowsOnly(gen: AsyncGenerator<Located>): AsyncGenerator<Row> {
  for await (const r of gen) yield r.row;
}

async function* jsonlRows(file: string, mapper: RowMapper): AsyncGenerator<Located> {
  const rl = readline.createInterface({ input: fs.createReadStream(file, { encoding: 'utf8' }), crlfDelay: Infinity });
  let n = 0;
  try {
    for await (const line of rl) {
      n++;
      // A byte-order mark (as Windows editors write) is not part of the first record.
      const text = n === 1 ? line.replace(/^\uFEFF/, '') : line;
      if (text.trim() === '') continue;
      let raw: unknown;
      try {
        raw = JSON.parse(text);
      } catch (e) {
        throw new TunekitError('E_FORMAT', `${file}:${n}: not valid JSON (${(e as Error).message})`);
      }
      yield { row: mapper.map(raw, `${file}:${n}`), where: `${file}:${n}` };
    }
  } finally {
    rl.close();
  }
}

async function* csvRows(file: string, mapper: RowMapper, delimiter: string): AsyncGenerator<Located> {
  let header: string[] | undefined;
  for await (const rec of readCsvRecords(file, delimiter)) {
    if (!header) {
      header = rec.fields.map((h, i) => (i === 0 ? h.replace(/^\uFEFF/, '') : h).trim());
      continue;
    }
    if (rec.fields.length !== header.length) {
      throw new TunekitError('E_FORMAT', `${file}:${rec.line}: ${rec.fields.length} fields but the header has ${header.length}`);
    }
    const where = `${file}:${rec.line}`;
    yield { row: mapper.map(Object.fromEntries(header.map((h, i) => [h, rec.fields[i]])), where), where };
  }
  if (!header) throw new TunekitError('E_FORMAT', `${file}: empty CSV file (a header row is required)`);
}

async function collect(gen: AsyncGenerator<Located>, mapper: RowMapper, file: string, opts: ReadOptions): Promise<Dataset> {
  const rows: Located[] = [];
  for await (const r of gen) rows.push(r);
  return finish(rows, mapper, file, opts);
}

/** The file as a whole: labelled throughout or not at all, and a label field the user named must exist. */
function finish(located: Located[], mapper: RowMapper, file: string, opts: ReadOptions): Dataset {
  if (located.length === 0) throw new TunekitError('E_FORMAT', `${file}: no rows`);
  const field = mapper.f.label;
  const labelled = located.filter((r) => r.row.label !== undefined).length;
  if (labelled === 0 && opts.fields?.label !== undefined)
    throw new TunekitError(
      'E_FORMAT',
      `${file}: no row has the label field ${JSON.stringify(field)}; fields present: ${mapper.firstFields?.join(', ') || 'none'}`,
    );
  if (labelled > 0 && labelled < located.length) {
    const first = located.find((r) => r.row.label === undefined)!;
    throw new TunekitError(
      'E_FORMAT',
      `${first.where}: no ${JSON.stringify(field)} label, but ${labelled} of the ${located.length} rows have one (label every row, or none)`,
    );
  }
  const rows = located.map((r) => r.row);
  return new Dataset(rows, { labelNames: mapper.names.length ? mapper.names : undefined, source: file });
}
