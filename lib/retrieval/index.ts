/**
 * A retrieval index: documents are chunked by tokens, embedded with a tunekit model, and stored in LanceDB (embedded,
 * on disk) with a BM25 full-text index beside the vectors. Search is by vector (cosine), by text (BM25), or both fused
 * by reciprocal rank (LanceDB's RRFReranker). The folder holds `index.json` (which model embeds, how texts are
 * chunked) and LanceDB's `chunks.lance` table.
 *
 * Every add and delete is one LanceDB commit, so a failed call leaves the index as it was; one writer at a time holds
 * the folder's lock file.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type * as Lance from '@lancedb/lancedb';
import { processAlive } from '../checkpoint';
import { TunekitError } from '../errors';
import { Model, Pooling } from '../model';
import { progressBar } from '../progress';
import { readJsonFile, writeJsonAtomic } from '../safetensors';
import { Tokenizer } from '../tokenizer';
import { checkChoice, checkNumber, checkOptions, show } from '../validate';
import { Chunk, chunkText, WordCounter } from './chunk';

export { ContrastiveTrainer } from './contrastive';
export type { ContrastivePair, ContrastiveTrainerOptions, ContrastiveEvaluation } from './contrastive';

export type SearchMode = 'vector' | 'text' | 'hybrid';
export const SEARCH_MODES: readonly SearchMode[] = ['vector', 'text', 'hybrid'];

export interface Document {
  text: string;
  /** Chunks are replaced per source: adding a source again replaces all of its chunks (default: a hash of the text). */
  source?: string;
  metadata?: Record<string, unknown>;
}

export interface Hit {
  text: string;
  source: string;
  /** vector: cosine similarity; text: BM25; hybrid: the reciprocal-rank-fusion score. Higher is better. */
  score: number;
  metadata: Record<string, unknown>;
  /** Character offsets of the chunk in its document. */
  start: number;
  end: number;
}

export interface IndexOptions {
  /**
   * The embedding model: a model folder, or a loaded Model (then `tokenizer` too). Default: the folder the index was
   * made with. `null` opens the index without a model, for what needs none (text search, delete, stats).
   */
  model?: string | Model | null;
  tokenizer?: Tokenizer;
  /** For a new index: tokens per chunk (default: the model's context less its special tokens, at most 128). */
  chunkTokens?: number;
  /** For a new index: tokens shared by consecutive chunks (default 16, less for small chunks). */
  overlapTokens?: number;
  /** For a new index: how a chunk's hidden states pool into its vector (default 'mean', as sentence-transformers). */
  pooling?: Pooling;
  /** Texts per embedding batch (default 32). */
  batchSize?: number;
}

const INDEX_OPTIONS = ['model', 'tokenizer', 'chunkTokens', 'overlapTokens', 'pooling', 'batchSize'] as const;

interface IndexMeta {
  format: 'tunekit-index';
  version: 1;
  /** The model folder it was made with (absolute), when it was given as a folder. */
  modelPath?: string;
  modelType: string;
  dimension: number;
  pooling: Pooling;
  chunkTokens: number;
  overlapTokens: number;
  /** The unit embedding of PROBE: a different model, or changed weights, embed it elsewhere. */
  probe: number[];
}

const TABLE = 'chunks';
const TEXT_INDEX = 'text_idx';
const META = 'index.json';
const LOCK = 'write.lock';
const PROBE = 'The index was built with this model: a fixed sentence, embedded once, identifies it.';
/** Cosine similarity above which the probe embeds "the same": bf16 and float32 runs of one model agree to ~1e-3. */
const SAME_MODEL = 0.99;

function lancedb(): typeof Lance {
  // Loaded on first use: the native library is only needed by code that indexes.
  process.env.LANCEDB_LOG ??= 'error';
  // Lance sizes its CPU pool by the cores; on 2 cores building the BM25 index of ~70,000 rows hung every time (all
  // threads parked), and never with 8 threads.
  process.env.LANCE_CPU_THREADS ??= String(Math.max(8, os.availableParallelism()));
  return require('@lancedb/lancedb') as typeof Lance;
}

/** A LanceDB failure on an existing table: the files are not what LanceDB wrote. */
function corrupt(dir: string, e: unknown): TunekitError {
  if (e instanceof TunekitError) return e;
  return new TunekitError(
    'E_FORMAT',
    `index ${dir}: its LanceDB table cannot be read (${(e as Error)?.message?.split('\n')[0] ?? String(e)})`,
    {
      cause: e,
    },
  );
}

const sql = (s: string) => `'${s.replace(/'/g, "''")}'`;

export class Index {
  private writes: Promise<void> = Promise.resolve();
  /** The chunks table, from the first commit on. */
  private table: Lance.Table | undefined;
  private constructor(
    readonly dir: string,
    private readonly meta: IndexMeta,
    private readonly db: Lance.Connection,
    private readonly model: Model | undefined,
    private readonly tokenizer: Tokenizer | undefined,
    private readonly ownsModel: boolean,
    private readonly batchSize: number,
  ) {}

  /** Opens the index in `dir`, creating it (with the given model) when the folder is new or empty. */
  static async open(dir: string, options: IndexOptions = {}): Promise<Index> {
    checkOptions(options, INDEX_OPTIONS, 'Index.open');
    if (typeof dir !== 'string' || dir === '') throw new TunekitError('E_ARG', `Index.open: dir must be a folder path, got ${show(dir)}`);
    dir = path.resolve(dir);
    const batchSize = checkNumber(options.batchSize, 'batchSize', { integer: true, min: 1 }, 32);
    const metaFile = path.join(dir, META);
    let meta: IndexMeta | undefined;
    if (fs.existsSync(metaFile)) meta = readMeta(metaFile);
    else if (fs.existsSync(dir) && (!fs.statSync(dir).isDirectory() || fs.readdirSync(dir).length > 0))
      throw new TunekitError('E_STATE', `${dir} is not a tunekit index (no ${META}) and not an empty folder: refusing to write into it`);

    let { model, tokenizer } = options;
    let ownsModel = false;
    let modelPath: string | undefined;
    if (model === undefined && meta?.modelPath !== undefined && fs.existsSync(meta.modelPath)) model = meta.modelPath;
    if (model === null) model = undefined;
    if (typeof model === 'string') {
      modelPath = path.resolve(model);
      tokenizer ??= await Tokenizer.fromPretrained(modelPath);
      model = await Model.fromPretrained(modelPath, { task: 'feature-extraction' });
      ownsModel = true;
    } else if (model !== undefined) {
      if (!(model instanceof Model)) throw new TunekitError('E_TYPE', `Index.open: model must be a folder or a Model, got ${show(model)}`);
      if (!(tokenizer instanceof Tokenizer))
        throw new TunekitError('E_ARG', 'Index.open: a loaded Model needs its tokenizer (options.tokenizer)');
    }
    if (!meta && !model) throw new TunekitError('E_ARG', `Index.open: ${dir} is a new index: say which model embeds it (options.model)`);

    try {
      if (meta && model) await checkSameModel(dir, meta, model, tokenizer!);
      if (!meta) {
        const m = model!;
        const pooling = checkChoice<Pooling>(options.pooling, ['cls', 'mean', 'last'], 'pooling', 'mean');
        const specials = tokenizer!.encode('', { addSpecialTokens: true }).length;
        const room = m.dims.maxPositions - specials;
        const chunkTokens = checkNumber(options.chunkTokens, 'chunkTokens', { integer: true, min: 1, max: room }, Math.min(128, room));
        const overlapTokens = checkNumber(
          options.overlapTokens,
          'overlapTokens',
          { integer: true, min: 0, max: chunkTokens - 1 },
          Math.min(16, Math.floor(chunkTokens / 4)),
        );
        const probe = await embedTexts(m, tokenizer!, [PROBE], pooling, 1);
        meta = {
          format: 'tunekit-index',
          version: 1,
          ...(modelPath ? { modelPath } : {}),
          modelType: m.modelType,
          dimension: probe[0].length,
          pooling,
          chunkTokens,
          overlapTokens,
          probe: [...probe[0]],
        };
        fs.mkdirSync(dir, { recursive: true });
        await writeJsonAtomic(metaFile, meta);
      } else {
        for (const k of ['chunkTokens', 'overlapTokens', 'pooling'] as const)
          if (options[k] !== undefined && options[k] !== meta[k])
            throw new TunekitError(
              'E_CONFIG',
              `index ${dir} was made with ${k} ${show(meta[k])}, not ${show(options[k])}: make a new index to change it`,
            );
      }
      // Every read checks for commits made since (by another process): a long-lived Index sees them, and a merge
      // never works from a stale version.
      const db = await lancedb().connect(dir, { readConsistencyInterval: 0 });
      const index = new Index(dir, meta, db, model as Model | undefined, tokenizer, ownsModel, batchSize);
      await index.openTable();
      return index;
    } catch (e) {
      if (ownsModel) (model as Model).dispose();
      throw e;
    }
  }

  /**
   * Chunks, embeds and stores the documents. A source already in the index has all of its chunks replaced (an
   * upsert by source); the whole call is one commit.
   */
  async add(documents: Document[], options: { progress?: boolean } = {}): Promise<{ chunks: number; sources: number }> {
    checkOptions(options, ['progress'], 'add');
    const { model, tokenizer } = this.embedder('add');
    if (!Array.isArray(documents)) throw new TunekitError('E_TYPE', 'add: documents must be an array of { text, source?, metadata? }');
    const rows: Record<string, unknown>[] = [];
    const sources = new Set<string>();
    const counter = new WordCounter(tokenizer);
    const pending: { doc: Document; source: string; chunks: Chunk[] }[] = [];
    documents.forEach((d, i) => {
      checkOptions(d, ['text', 'source', 'metadata'], `add: documents[${i}]`);
      if (typeof d?.text !== 'string') throw new TunekitError('E_TYPE', `add: documents[${i}].text must be a string, got ${show(d?.text)}`);
      if (d.source !== undefined && (typeof d.source !== 'string' || d.source === ''))
        throw new TunekitError('E_TYPE', `add: documents[${i}].source must be a non-empty string, got ${show(d.source)}`);
      if (d.metadata !== undefined && (typeof d.metadata !== 'object' || d.metadata === null || Array.isArray(d.metadata)))
        throw new TunekitError('E_TYPE', `add: documents[${i}].metadata must be an object, got ${show(d.metadata)}`);
      const source = d.source ?? `sha256:${createHash('sha256').update(d.text).digest('hex').slice(0, 16)}`;
      if (sources.has(source)) throw new TunekitError('E_ARG', `add: source ${show(source)} appears twice in one call`);
      sources.add(source);
      pending.push({ doc: d, source, chunks: chunkText(d.text, counter, this.meta) });
    });
    const total = pending.reduce((a, p) => a + p.chunks.length, 0);
    const bar = progressBar(total, 'embedding chunks', { silent: !options.progress });
    const texts = pending.flatMap((p) => p.chunks.map((c) => c.text));
    const vectors = await embedTexts(model, tokenizer, texts, this.meta.pooling, this.batchSize, (n) => bar.update(n));
    bar.stop();
    let v = 0;
    for (const p of pending) {
      const metadata = JSON.stringify(p.doc.metadata ?? {});
      p.chunks.forEach((c, i) =>
        rows.push({ id: `${p.source}#${i}`, source: p.source, text: c.text, start: c.start, end: c.end, metadata, vector: vectors[v++] }),
      );
    }
    await this.write(async () => {
      const replaced = `source IN (${[...sources].map(sql).join(', ')})`;
      // Another process may have made the table since this Index opened.
      await this.openTable();
      if (!this.table) {
        if (rows.length === 0) return;
        this.table = await this.db.createTable(TABLE, rows, { mode: 'create' });
        await this.table.createIndex('text', { config: lancedb().Index.fts(), name: TEXT_INDEX });
        return;
      }
      if (rows.length === 0) await this.table.delete(replaced);
      else
        await this.table
          .mergeInsert('id')
          .whenMatchedUpdateAll()
          .whenNotMatchedInsertAll()
          .whenNotMatchedBySourceDelete({ where: replaced })
          .execute(rows);
      await this.refreshTextIndex();
    });
    return { chunks: rows.length, sources: sources.size };
  }

  /**
   * Text search scans the rows the BM25 index does not cover yet, so the index is rebuilt once they pass a quarter of
   * those it covers (or always, with `all`). A full rebuild, not LanceDB's incremental optimize(), whose append path
   * can deadlock (lance-format/lance#7439) and whose compactions, run after every commit, rewrote the table again and
   * again (2 GB for 70,000 chunks).
   */
  private async refreshTextIndex(all = false): Promise<void> {
    const stats = await this.table!.indexStats(TEXT_INDEX);
    if (!all && stats && stats.numUnindexedRows <= Math.max(1000, stats.numIndexedRows / 4)) return;
    if (all && stats?.numUnindexedRows === 0) return;
    await this.table!.createIndex('text', { config: lancedb().Index.fts(), replace: true, name: TEXT_INDEX });
  }

  /** Brings every row into the BM25 index, so that text search scans nothing: call it after the last add of a batch. */
  async optimize(): Promise<void> {
    await this.write(async () => {
      await this.openTable();
      if (this.table) await this.refreshTextIndex(true);
    });
  }

  /** Opens the chunks table once it exists, checking it against index.json. */
  private async openTable(): Promise<void> {
    if (this.table || !(await this.db.tableNames()).includes(TABLE)) return;
    try {
      this.table = await this.db.openTable(TABLE);
    } catch (e) {
      throw corrupt(this.dir, e);
    }
    await checkTable(this.dir, this.table, this.meta);
  }

  /** Removes every chunk of a source. */
  async delete(filter: { source: string }): Promise<{ chunks: number }> {
    checkOptions(filter, ['source'], 'delete');
    if (typeof filter?.source !== 'string')
      throw new TunekitError('E_TYPE', `delete: source must be a string, got ${show(filter?.source)}`);
    let removed = 0;
    await this.write(async () => {
      await this.openTable();
      if (!this.table) return;
      const where = `source = ${sql(filter.source)}`;
      removed = await this.table.countRows(where);
      if (removed > 0) await this.table.delete(where);
    });
    return { chunks: removed };
  }

  async search(query: string, options: { k?: number; mode?: SearchMode } = {}): Promise<Hit[]> {
    checkOptions(options, ['k', 'mode'], 'search');
    if (typeof query !== 'string' || query.trim() === '')
      throw new TunekitError('E_ARG', `search: query must be a non-empty string, got ${show(query)}`);
    const k = checkNumber(options.k, 'k', { integer: true, min: 1 }, 5);
    const mode = checkChoice<SearchMode>(options.mode, SEARCH_MODES, 'mode', 'hybrid');
    await this.openTable();
    if (!this.table) return [];
    let vector: Float32Array | undefined;
    if (mode !== 'text') {
      const { model, tokenizer } = this.embedder(`search (mode '${mode}')`);
      const n = tokenizer.encode(query).length;
      if (n > model.dims.maxPositions)
        throw new TunekitError(
          'E_RANGE',
          `search: the query is ${n} tokens; the embedding model reads at most ${model.dims.maxPositions} (shorten it, or use mode 'text')`,
        );
      [vector] = await embedTexts(model, tokenizer, [query], this.meta.pooling, 1);
    }
    try {
      // The query's words as plain BM25 terms (OR): quotes or operators in user text are not query syntax.
      const terms = new (lancedb().MatchQuery)(query, 'text');
      let q;
      if (mode === 'text') q = this.table.query().fullTextSearch(terms);
      else {
        q = this.table.query().nearestTo(vector!).distanceType('cosine');
        if (mode === 'hybrid') q = q.fullTextSearch(terms).rerank(await lancedb().rerankers.RRFReranker.create(60));
      }
      const rows = await q.limit(k).toArray();
      return rows.map((r) => ({
        text: r.text,
        source: r.source,
        score: mode === 'vector' ? 1 - r._distance : mode === 'text' ? r._score : r._relevance_score,
        metadata: JSON.parse(r.metadata),
        start: Number(r.start),
        end: Number(r.end),
      }));
    } catch (e) {
      throw corrupt(this.dir, e);
    }
  }

  /**
   * A retrieval-augmented prompt: the top-k chunks into `template` ({context}, {question}), best first, dropping the
   * lowest-ranked chunks that would not fit `maxTokens` of the generator's tokenizer.
   */
  async prompt(
    question: string,
    options: { k?: number; mode?: SearchMode; template?: string; tokenizer?: Tokenizer; maxTokens?: number } = {},
  ): Promise<{ prompt: string; hits: Hit[] }> {
    checkOptions(options, ['k', 'mode', 'template', 'tokenizer', 'maxTokens'], 'prompt');
    const template = options.template ?? RAG_TEMPLATE;
    for (const slot of ['{context}', '{question}'])
      if (typeof template !== 'string' || !template.includes(slot))
        throw new TunekitError('E_ARG', `prompt: template must contain ${slot}`);
    const hits = await this.search(question, { k: options.k, mode: options.mode });
    const fill = (h: Hit[]) => template.replace('{context}', h.map((x) => x.text).join('\n\n')).replace('{question}', question);
    const tok = options.tokenizer ?? this.tokenizer;
    let used = hits;
    if (options.maxTokens !== undefined && tok) {
      while (used.length > 0 && tok.encode(fill(used)).length > options.maxTokens) used = used.slice(0, -1);
      if (tok.encode(fill(used)).length > options.maxTokens)
        throw new TunekitError('E_RANGE', `prompt: the template and question alone exceed ${options.maxTokens} tokens`);
    }
    return { prompt: fill(used), hits: used };
  }

  /** Retrieves, builds the prompt so that it and the answer fit the generator's context, and generates the answer. */
  async answer(
    question: string,
    options: { generator: Model; tokenizer: Tokenizer; k?: number; mode?: SearchMode; template?: string; maxNewTokens?: number },
  ): Promise<{ answer: string; prompt: string; hits: Hit[] }> {
    checkOptions(options, ['generator', 'tokenizer', 'k', 'mode', 'template', 'maxNewTokens'], 'answer');
    const { generator, tokenizer } = options;
    if (!(generator instanceof Model) || !(tokenizer instanceof Tokenizer))
      throw new TunekitError('E_ARG', 'answer: generator (a causal LM Model) and its tokenizer are required');
    const maxNewTokens = checkNumber(options.maxNewTokens, 'maxNewTokens', { integer: true, min: 1 }, 32);
    const { prompt, hits } = await this.prompt(question, {
      k: options.k,
      mode: options.mode,
      template: options.template,
      tokenizer,
      maxTokens: generator.dims.maxPositions - maxNewTokens,
    });
    const ids = tokenizer.encode(prompt);
    const [out] = await generator.generate({ inputIds: [ids] }, { maxNewTokens });
    return { answer: tokenizer.decode(out.slice(ids.length), { skipSpecialTokens: true }), prompt, hits };
  }

  async stats(): Promise<{
    chunks: number;
    sources: number;
    dimension: number;
    modelType: string;
    modelPath?: string;
    pooling: Pooling;
    chunkTokens: number;
    overlapTokens: number;
    version: number;
    bytes: number;
  }> {
    const { modelPath, modelType, dimension, pooling, chunkTokens, overlapTokens } = this.meta;
    let chunks = 0;
    let sources = 0;
    let version = 0;
    let bytes = 0;
    await this.openTable();
    if (this.table) {
      try {
        chunks = await this.table.countRows();
        sources = new Set((await this.table.query().select(['source']).toArray()).map((r) => r.source)).size;
        version = await this.table.version();
        bytes = (await this.table.stats()).totalBytes;
      } catch (e) {
        throw corrupt(this.dir, e);
      }
    }
    return {
      chunks,
      sources,
      dimension,
      modelType,
      ...(modelPath ? { modelPath } : {}),
      pooling,
      chunkTokens,
      overlapTokens,
      version,
      bytes,
    };
  }

  /** Releases the model the index loaded itself (a Model passed in stays the caller's). */
  close(): void {
    this.table?.close();
    if (this.ownsModel) this.model?.dispose();
  }

  private embedder(what: string): { model: Model; tokenizer: Tokenizer } {
    if (!this.model || !this.tokenizer)
      throw new TunekitError(
        'E_STATE',
        `${what}: this index was opened without its embedding model${this.meta.modelPath ? ` (${this.meta.modelPath} is missing)` : ''}: pass options.model`,
      );
    return { model: this.model, tokenizer: this.tokenizer };
  }

  /**
   * Runs one commit under the folder's writer lock. Commits of this Index wait for each other; a writer elsewhere
   * (another process, or another Index on the folder) holding the lock is an E_STATE refusal.
   */
  private write(commit: () => Promise<void>): Promise<void> {
    const run = async () => {
      const lock = path.join(this.dir, LOCK);
      takeLock(lock);
      try {
        await commit();
      } catch (e) {
        throw corrupt(this.dir, e);
      } finally {
        fs.rmSync(lock, { force: true });
      }
    };
    const done = this.writes.then(run, run);
    this.writes = done.catch(() => undefined);
    return done;
  }
}

export const RAG_TEMPLATE = 'Context:\n{context}\n\nQuestion: {question}\nAnswer:';

/** Unit vectors of the texts' pooled hidden states (texts cut to the model's context). */
export function embedTexts(
  model: Model,
  tokenizer: Tokenizer,
  texts: string[],
  pooling: Pooling,
  batchSize: number,
  onProgress?: (done: number) => void,
): Promise<Float32Array[]> {
  const max = model.dims.maxPositions;
  return embedIds(
    model,
    texts.map((t) => tokenizer.encode(t, { maxLength: max })),
    pooling,
    batchSize,
    onProgress,
  );
}

/** Unit vectors of the token rows' pooled hidden states, with dropout off, batched by similar length. */
export async function embedIds(
  model: Model,
  ids: number[][],
  pooling: Pooling,
  batchSize: number,
  onProgress?: (done: number) => void,
): Promise<Float32Array[]> {
  await model.eval();
  const order = ids.map((_, i) => i).sort((a, b) => ids[a].length - ids[b].length);
  const out: Float32Array[] = new Array(ids.length);
  // Padding is masked out: any id in the vocabulary does.
  const pad = model.padTokenId ?? 0;
  for (let i = 0; i < order.length; i += batchSize) {
    const part = order.slice(i, i + batchSize);
    const width = Math.max(...part.map((j) => ids[j].length));
    const e = await model.embed(
      {
        inputIds: part.map((j) => [...ids[j], ...new Array(width - ids[j].length).fill(pad)]),
        attentionMask: part.map((j) => [...ids[j].map(() => 1), ...new Array(width - ids[j].length).fill(0)]),
      },
      { pooling },
    );
    const dim = e.shape[1];
    part.forEach((j, r) => (out[j] = unit(Float32Array.from(e.data.subarray(r * dim, (r + 1) * dim)))));
    onProgress?.(Math.min(ids.length, i + batchSize));
  }
  return out;
}

function unit(v: Float32Array): Float32Array {
  let n = 0;
  for (const x of v) n += x * x;
  const s = 1 / Math.sqrt(n || 1);
  return v.map((x) => x * s);
}

function readMeta(file: string): IndexMeta {
  const m = readJsonFile<IndexMeta>(file);
  if (m?.format !== 'tunekit-index' || m.version !== 1 || !Array.isArray(m.probe) || !Number.isInteger(m.dimension))
    throw new TunekitError('E_FORMAT', `${file}: not a tunekit index description (format 'tunekit-index', version 1)`);
  return m;
}

async function checkSameModel(dir: string, meta: IndexMeta, model: Model, tokenizer: Tokenizer): Promise<void> {
  const made = `${meta.modelType}${meta.modelPath ? ` from ${meta.modelPath}` : ''}`;
  const [probe] = await embedTexts(model, tokenizer, [PROBE], meta.pooling, 1);
  if (probe.length !== meta.dimension)
    throw new TunekitError(
      'E_CONFIG',
      `index ${dir} holds ${meta.dimension}-dimensional embeddings of ${made}; this model (${model.modelType}) embeds in ${probe.length} dimensions`,
    );
  const cos = probe.reduce((a, x, i) => a + x * meta.probe[i], 0);
  if (cos < SAME_MODEL)
    throw new TunekitError(
      'E_CONFIG',
      `index ${dir} was embedded by another model (${made}): this ${model.modelType} embeds its probe sentence elsewhere (cosine ${cos.toFixed(3)}); re-index with it, or open the index with its own model`,
    );
}

async function checkTable(dir: string, table: Lance.Table, meta: IndexMeta): Promise<void> {
  let dim: number | undefined;
  try {
    const field = (await table.schema()).fields.find((f) => f.name === 'vector');
    dim = (field?.type as { listSize?: number } | undefined)?.listSize;
    await table.countRows();
  } catch (e) {
    throw corrupt(dir, e);
  }
  if (dim !== meta.dimension)
    throw new TunekitError(
      'E_FORMAT',
      `index ${dir}: its table holds ${dim ?? 'no'}-dimensional vectors but ${META} says ${meta.dimension}`,
    );
}

/** An exclusive lock file naming its holder; a holder that no longer runs on this host leaves a stale lock, taken over. */
function takeLock(file: string): void {
  const me = JSON.stringify({ pid: process.pid, host: os.hostname() });
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      fs.writeFileSync(file, me, { flag: 'wx' });
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    let holder: { pid?: number; host?: string } = {};
    try {
      holder = JSON.parse(fs.readFileSync(file, 'utf8'));
    } catch {
      // a lock being written this instant: treat it as held
    }
    if (holder.host === os.hostname() && holder.pid !== undefined && !processAlive(holder.pid)) {
      fs.rmSync(file, { force: true });
      continue;
    }
    throw new TunekitError(
      'E_STATE',
      `index ${path.dirname(file)} is being written by another writer (process ${holder.pid ?? '?'} on ${holder.host ?? '?'}); try again when it is done`,
    );
  }
  throw new TunekitError('E_STATE', `index ${path.dirname(file)}: could not take the writer lock ${file}`);
}
