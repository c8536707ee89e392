/** Datasets of text, labelled text or prompt/response pairs, from JSONL, CSV or JSON files or the built-in sets. */
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { TunekitError } from '../errors';
import type { Tokenizer } from '../tokenizer';
import type { Example } from '../trainer';
import { shuffled } from '../random';
import { readCsvRecords } from './csv';

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

/** Turns raw records into rows; string labels get ids in first-seen order unless names are given. */
class RowMapper {
  readonly names: string[];
  private readonly fixedNames: boolean;
  private readonly f: Required<FieldMap>;
  constructor(opts: ReadOptions) {
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
    if (typeof v === 'number' || (typeof v === 'string' && /^\d+$/.test(v.trim()) && !this.names.includes(v))) {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 0)
        throw new TunekitError('E_FORMAT', `${where}: label must be a class name or a non-negative integer, got ${JSON.stringify(v)}`);
      if (this.fixedNames && n >= this.names.length)
        throw new TunekitError('E_FORMAT', `${where}: label ${n} is out of range for ${this.names.length} classes`);
      return n;
    }
    if (typeof v !== 'string')
      throw new TunekitError('E_FORMAT', `${where}: label must be a class name or a non-negative integer, got ${JSON.stringify(v)}`);
    let id = this.names.indexOf(v);
    if (id < 0) {
      if (this.fixedNames)
        throw new TunekitError('E_FORMAT', `${where}: label ${JSON.stringify(v)} is not one of ${this.names.join(', ')}`);
      id = this.names.push(v) - 1;
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
    this.rows = rows;
    this.source = opts.source ?? 'rows';
    const maxLabel = rows.reduce((m, r) => (r.label !== undefined ? Math.max(m, r.label) : m), -1);
    if (opts.labelNames) this.labelNames = opts.labelNames.slice();
    else if (maxLabel >= 0) this.labelNames = Array.from({ length: maxLabel + 1 }, (_, i) => String(i));
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
    return jsonlRows(file, new RowMapper(opts));
  }

  /** Reads rows one at a time from a CSV file with a header row, of any size. */
  static streamCsv(file: string, opts: ReadOptions = {}): AsyncGenerator<Row> {
    checkFile(file);
    return csvRows(file, new RowMapper(opts), opts.delimiter ?? ',');
  }

  static async fromJsonl(file: string, opts: ReadOptions = {}): Promise<Dataset> {
    checkFile(file);
    const mapper = new RowMapper(opts);
    return collect(jsonlRows(file, mapper), mapper, file);
  }

  static async fromCsv(file: string, opts: ReadOptions = {}): Promise<Dataset> {
    checkFile(file);
    const mapper = new RowMapper(opts);
    return collect(csvRows(file, mapper, opts.delimiter ?? ','), mapper, file);
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
    const rows = data.map((raw, i) => mapper.map(raw, `${file}: item ${i}`));
    return finish(rows, mapper, file);
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

async function* jsonlRows(file: string, mapper: RowMapper): AsyncGenerator<Row> {
  const rl = readline.createInterface({ input: fs.createReadStream(file, { encoding: 'utf8' }), crlfDelay: Infinity });
  let n = 0;
  try {
    for await (const line of rl) {
      n++;
      if (line.trim() === '') continue;
      let raw: unknown;
      try {
        raw = JSON.parse(line);
      } catch (e) {
        throw new TunekitError('E_FORMAT', `${file}:${n}: not valid JSON (${(e as Error).message})`);
      }
      yield mapper.map(raw, `${file}:${n}`);
    }
  } finally {
    rl.close();
  }
}

async function* csvRows(file: string, mapper: RowMapper, delimiter: string): AsyncGenerator<Row> {
  let header: string[] | undefined;
  for await (const rec of readCsvRecords(file, delimiter)) {
    if (!header) {
      header = rec.fields.map((h, i) => (i === 0 ? h.replace(/^\uFEFF/, '') : h).trim());
      continue;
    }
    if (rec.fields.length !== header.length) {
      throw new TunekitError('E_FORMAT', `${file}:${rec.line}: ${rec.fields.length} fields but the header has ${header.length}`);
    }
    yield mapper.map(Object.fromEntries(header.map((h, i) => [h, rec.fields[i]])), `${file}:${rec.line}`);
  }
  if (!header) throw new TunekitError('E_FORMAT', `${file}: empty CSV file (a header row is required)`);
}

async function collect(gen: AsyncGenerator<Row>, mapper: RowMapper, file: string): Promise<Dataset> {
  const rows: Row[] = [];
  for await (const r of gen) rows.push(r);
  return finish(rows, mapper, file);
}

function finish(rows: Row[], mapper: RowMapper, file: string): Dataset {
  if (rows.length === 0) throw new TunekitError('E_FORMAT', `${file}: no rows`);
  return new Dataset(rows, { labelNames: mapper.names.length ? mapper.names : undefined, source: file });
}
