/** `tunekit index add|search|stats|delete`: a retrieval index (lib/retrieval) from the command line. */
import fs from 'node:fs';
import path from 'node:path';
import { Command, num, Opts, UsageError } from './args';
import { TunekitError } from '../errors';
import { Document, Index, IndexOptions, SEARCH_MODES, SearchMode } from '../retrieval';

const indexFlag = { index: { type: 'string' } } as const;
const indexHelp = { index: 'the index folder (LanceDB table and index.json)' };

/** Runs `use` on the index, closing it (and the model it loaded) however `use` ends. */
async function withIndex(dir: string, options: IndexOptions, use: (index: Index) => Promise<void>): Promise<void> {
  const index = await Index.open(dir, options);
  try {
    await use(index);
  } finally {
    index.close();
  }
}

function indexDir(o: Opts): string {
  if (typeof o.index !== 'string') throw new UsageError('--index DIR is required');
  return path.resolve(o.index);
}

/** Documents of one file: JSONL rows with `text` (and `source`, `metadata`), or the whole plain-text file. */
function readDocuments(file: string): Document[] {
  if (!fs.existsSync(file) || !fs.statSync(file).isFile()) throw new UsageError(`${file}: no such file`);
  const text = fs.readFileSync(file, 'utf8');
  if (!file.endsWith('.jsonl')) return [{ text, source: file }];
  const docs: Document[] = [];
  text.split('\n').forEach((line, i) => {
    if (line.trim() === '') return;
    let row: Record<string, unknown>;
    try {
      row = JSON.parse(line);
    } catch (e) {
      throw new TunekitError('E_FORMAT', `${file}:${i + 1}: ${(e as Error).message}`);
    }
    if (typeof row?.text !== 'string') throw new TunekitError('E_FORMAT', `${file}:${i + 1}: no "text" string`);
    const { text: t, source, metadata, ...rest } = row;
    docs.push({
      text: t,
      source: typeof source === 'string' && source !== '' ? source : `${file}:${i + 1}`,
      // Fields besides text and source are kept as the chunk's metadata.
      metadata: { ...(metadata && typeof metadata === 'object' ? (metadata as Record<string, unknown>) : {}), ...rest },
    });
  });
  return docs;
}

export const INDEX_COMMANDS: Record<string, Command> = {
  'index add': {
    summary: 'chunk, embed and store files in a retrieval index (a file indexed again replaces its chunks)',
    usage: 'tunekit index add --index DIR [--model DIR] [--chunk-tokens N] [--overlap-tokens N] FILE...',
    positionals: true,
    options: {
      ...indexFlag,
      model: { type: 'string' },
      'chunk-tokens': { type: 'string' },
      'overlap-tokens': { type: 'string' },
      pooling: { type: 'string' },
    },
    help: {
      ...indexHelp,
      model: 'the embedding model folder (required for a new index; default: the one the index was made with)',
      'chunk-tokens': "new index: tokens per chunk (default: the model's context, at most 128)",
      'overlap-tokens': 'new index: tokens shared by consecutive chunks (default 16)',
      pooling: 'new index: cls, mean or last (default mean)',
    },
    async run(o, files) {
      if (files.length === 0) throw new UsageError('name at least one FILE to add (plain text, or JSONL with a "text" field)');
      const docs = files.flatMap((f) => readDocuments(path.resolve(f)));
      await withIndex(
        indexDir(o),
        {
          ...(o.model !== undefined ? { model: String(o.model) } : {}),
          chunkTokens: num(o, 'chunk-tokens', undefined, 'int'),
          overlapTokens: num(o, 'overlap-tokens', undefined, 'int'),
          pooling: o.pooling as 'cls' | 'mean' | 'last' | undefined,
        },
        async (index) => {
          const r = await index.add(docs, { progress: true });
          await index.optimize();
          const s = await index.stats();
          process.stdout.write(
            `added ${r.chunks} chunks from ${r.sources} sources; the index holds ${s.chunks} chunks of ${s.sources} sources\n`,
          );
        },
      );
    },
  },
  'index search': {
    summary: 'the top-k chunks of an index for a query',
    usage: 'tunekit index search --index DIR --query TEXT [--k N] [--mode vector|text|hybrid] [--json]',
    options: {
      ...indexFlag,
      model: { type: 'string' },
      query: { type: 'string' },
      k: { type: 'string' },
      mode: { type: 'string' },
      json: { type: 'boolean' },
    },
    help: {
      ...indexHelp,
      model: 'the embedding model folder (default: the one the index was made with)',
      query: 'the text to search for',
      k: 'how many chunks (default 5)',
      mode: 'vector (cosine), text (BM25) or hybrid (reciprocal rank fusion of both; default)',
      json: 'print the hits as one JSON array ({ text, source, score, metadata, start, end })',
    },
    async run(o) {
      const query = o.query;
      if (typeof query !== 'string') throw new UsageError('--query TEXT is required');
      const mode = (o.mode ?? 'hybrid') as SearchMode;
      if (!SEARCH_MODES.includes(mode))
        throw new UsageError(`--mode must be one of ${SEARCH_MODES.join(', ')}, got ${JSON.stringify(o.mode)}`);
      // A text search needs no embedding model.
      await withIndex(
        indexDir(o),
        { model: o.model !== undefined ? String(o.model) : mode === 'text' ? null : undefined },
        async (index) => {
          const hits = await index.search(query, { k: num(o, 'k', 5, 'int'), mode });
          if (o.json) process.stdout.write(JSON.stringify(hits) + '\n');
          else
            hits.forEach((h, i) =>
              process.stdout.write(
                `${i + 1}. ${h.score.toFixed(4)}  ${h.source} [${h.start}, ${h.end})\n   ${h.text.replace(/\s+/g, ' ').slice(0, 200)}\n`,
              ),
            );
        },
      );
    },
  },
  'index stats': {
    summary: 'what an index holds: chunks, sources, the embedding model, its chunking',
    usage: 'tunekit index stats --index DIR [--json]',
    options: { ...indexFlag, json: { type: 'boolean' } },
    help: { ...indexHelp, json: 'print one JSON object' },
    async run(o) {
      const dir = indexDir(o);
      if (!fs.existsSync(path.join(dir, 'index.json'))) throw new UsageError(`--index ${dir}: not an index (no index.json)`);
      await withIndex(dir, { model: null }, async (index) => {
        const s = await index.stats();
        process.stdout.write(
          o.json
            ? JSON.stringify(s) + '\n'
            : Object.entries(s)
                .map(([k, v]) => `${k}: ${v}`)
                .join('\n') + '\n',
        );
      });
    },
  },
  'index delete': {
    summary: 'remove every chunk of a source from an index',
    usage: 'tunekit index delete --index DIR --source SOURCE',
    options: { ...indexFlag, source: { type: 'string' } },
    help: { ...indexHelp, source: 'the source to remove (for files added by `index add`: the absolute path)' },
    async run(o) {
      const source = o.source;
      if (typeof source !== 'string') throw new UsageError('--source is required');
      await withIndex(indexDir(o), { model: null }, async (index) => {
        const r = await index.delete({ source });
        process.stdout.write(`removed ${r.chunks} chunks\n`);
      });
    },
  },
};
