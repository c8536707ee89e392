import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { Index, Model, Tokenizer, TunekitError } from '../lib';
import { chunkText, WordCounter } from '../lib/retrieval/chunk';
import { embedTexts } from '../lib/retrieval';
import { ROOT, tmpDir } from './helpers';

const MODEL = path.join(ROOT, 'models', 'tiny-distilbert');
const CLI = path.join(ROOT, 'dist', 'cli', 'main.js');
const cli = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });

const DOCS = [
  { text: 'The whale swam under the boat. Captain Ahab hunted the white whale across the cold sea.', source: 'moby' },
  { text: 'The senate passed the budget bill after a long debate about taxes and spending.', source: 'senate', metadata: { year: 1990 } },
  { text: 'Rain fell on the city all night, and by morning the streets were rivers.', source: 'rain' },
  { text: 'The chef baked bread and roasted a chicken for the wedding dinner.', source: 'kitchen' },
  { text: 'Stocks fell sharply as investors feared that the bank would raise interest rates.', source: 'market' },
];

const cosine = (a: Float32Array, b: Float32Array) => a.reduce((s, x, i) => s + x * b[i], 0);

async function filled(options = {}): Promise<{ index: Index; dir: string }> {
  const dir = path.join(tmpDir('index'), 'ix');
  const index = await Index.open(dir, { model: MODEL, ...options });
  await index.add(DOCS);
  return { index, dir };
}

test('chunking: exact offsets, at most chunkTokens tokens, the stated overlap, every word covered', async (t) => {
  const tok = await Tokenizer.fromPretrained(MODEL);
  // A word with no whitespace to cut at, longer than a chunk (WordPiece reads words up to 100 characters).
  const long = 'qzx'.repeat(31);
  const counter = new WordCounter(tok);
  t.true(counter.count(long) > 40, 'the long word must exceed a chunk for the test to mean anything');
  const text = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8').slice(0, 6000) + ' ' + long;
  const longStart = text.length - long.length;
  const chunks = chunkText(text, counter, { chunkTokens: 40, overlapTokens: 8 });
  t.true(chunks.length > 10);
  for (const [i, c] of chunks.entries()) {
    t.is(text.slice(c.start, c.end), c.text);
    t.true(tok.encode(c.text, { addSpecialTokens: false }).length <= 40, `chunk ${i} is too long`);
    if (i > 0) t.true(c.start > chunks[i - 1].start, 'chunks move forward');
    // (The long word's pieces are cut inside it, not at whitespace: the overlap is checked before it.)
    if (i > 0 && c.end <= longStart) {
      const prev = chunks[i - 1];
      // The words both chunks hold count at most overlapTokens tokens, and at least the previous chunk's last word
      // when that word alone fits the overlap.
      const shared = text.slice(c.start, Math.max(c.start, prev.end)).match(/\S+/g) ?? [];
      t.true(shared.reduce((a, w) => a + counter.count(w), 0) <= 8, `chunk ${i} overlaps too much`);
      const lastWord = prev.text.match(/\S+$/)![0];
      if (counter.count(lastWord) <= 8) t.true(shared.length > 0, `chunk ${i} does not overlap chunk ${i - 1}`);
    }
  }
  const covered = new Uint8Array(text.length);
  for (const c of chunks) covered.fill(1, c.start, c.end);
  for (const m of text.matchAll(/\S/g)) if (!covered[m.index!]) return t.fail(`character ${m.index} is in no chunk`);
  t.true(chunks.filter((c) => /^(qzx)*q?z?$|^[qzx]+$/.test(c.text)).length >= 2, 'the long word is split');
  t.throws(() => chunkText(text, new WordCounter(tok), { chunkTokens: 8, overlapTokens: 8 }), { message: /overlapTokens/ });
});

test('vector search is the exact cosine ranking; text search is BM25 on the words; hybrid is their reciprocal rank fusion', async (t) => {
  const { index } = await filled();
  const model = await Model.fromPretrained(MODEL, { task: 'feature-extraction' });
  const tok = await Tokenizer.fromPretrained(MODEL);
  const query = 'the white whale and the sea';
  const [q] = await embedTexts(model, tok, [query], 'mean', 1);
  const docs = await embedTexts(
    model,
    tok,
    DOCS.map((d) => d.text),
    'mean',
    32,
  );
  const want = DOCS.map((d, i) => ({ source: d.source, score: cosine(q, docs[i]) })).sort((a, b) => b.score - a.score);
  const vector = await index.search(query, { k: DOCS.length, mode: 'vector' });
  t.deepEqual(
    vector.map((h) => h.source),
    want.map((w) => w.source),
  );
  vector.forEach((h, i) => t.true(Math.abs(h.score - want[i].score) < 1e-5, `${h.source}: ${h.score} vs ${want[i].score}`));

  const text = await index.search('whale', { k: 5, mode: 'text' });
  t.deepEqual(
    text.map((h) => h.source),
    ['moby'],
  );
  t.true(text[0].score > 0);
  // Quotes, operators and brackets in a query are words, not query syntax.
  for (const mode of ['text', 'hybrid'] as const)
    t.is((await index.search('"white whale" AND (sea -boat', { k: 1, mode }))[0].source, 'moby');

  // RRF with k = 60 over 0-based ranks, as LanceDB's RRFReranker: each list contributes 1 / (60 + rank).
  const hybrid = await index.search(query, { k: DOCS.length, mode: 'hybrid' });
  const textAll = await index.search(query, { k: DOCS.length, mode: 'text' });
  const fused = new Map<string, number>();
  for (const list of [vector, textAll]) list.forEach((h, r) => fused.set(h.source, (fused.get(h.source) ?? 0) + 1 / (60 + r)));
  t.is(hybrid.length, fused.size);
  for (const h of hybrid) t.true(Math.abs(h.score - fused.get(h.source)!) < 1e-6, `${h.source}: ${h.score} vs ${fused.get(h.source)}`);
  t.deepEqual(hybrid[0].source, 'moby');
  t.deepEqual((await index.search('taxes', { mode: 'text' }))[0].metadata, { year: 1990 });
  index.close();
  model.dispose();
});

test('upsert and delete by source, persisted across processes', async (t) => {
  const { index, dir } = await filled({ chunkTokens: 8, overlapTokens: 2 });
  const before = await index.stats();
  t.is(before.sources, DOCS.length);
  t.true(before.chunks > DOCS.length, 'small chunks: several per document');
  // The same source again, shorter: its old chunks are all replaced, none left behind.
  await index.add([{ text: 'A short note about whales.', source: 'moby' }]);
  const moby = (await index.search('whales', { k: 50, mode: 'text' })).filter((h) => h.source === 'moby');
  t.deepEqual(
    moby.map((h) => h.text),
    ['A short note about whales.'],
  );
  // A second Index on the folder (as another process would open it) sees every commit of the first, made before or
  // after it opened, and its own upsert of a source replaces what the first wrote.
  const other = await Index.open(dir, { model: MODEL });
  await index.add([{ text: 'Snow fell on the mountain village.', source: 'snow' }]);
  t.is((await other.search('snow mountain village', { k: 1, mode: 'text' }))[0]?.source, 'snow');
  await other.add([{ text: 'Snow melted in the valley.', source: 'snow' }]);
  t.deepEqual(
    (await index.search('snow', { k: 10, mode: 'text' })).map((h) => h.text),
    ['Snow melted in the valley.'],
  );
  await other.delete({ source: 'snow' });
  other.close();
  const held = (await index.stats()).chunks;
  const removed = (await index.delete({ source: 'senate' })).chunks;
  t.true(removed >= 2);
  t.is((await index.stats()).chunks, held - removed);
  t.is((await index.delete({ source: 'senate' })).chunks, 0);
  t.deepEqual(await index.search('taxes', { mode: 'text' }), []);
  index.close();
  const r = cli('index', 'stats', '--index', dir, '--json');
  t.is(r.status, 0, r.stderr);
  const s = JSON.parse(r.stdout);
  t.is(s.sources, DOCS.length - 1);
  t.is(s.modelPath, MODEL);
  const found = JSON.parse(cli('index', 'search', '--index', dir, '--query', 'bread for the wedding', '--k', '1', '--json').stdout);
  t.is(found[0].source, 'kitchen');
});

test('an index refuses another embedding model: a different dimension, or the same dimension with other weights', async (t) => {
  const { index, dir } = await filled();
  index.close();
  const config = JSON.parse(fs.readFileSync(path.join(MODEL, 'config.json'), 'utf8'));
  const tok = await Tokenizer.fromPretrained(MODEL);
  const narrow = await Model.fromConfig({ ...config, dim: 64, hidden_dim: 128, n_heads: 2 }, { task: 'feature-extraction', seed: 1 });
  const err = await t.throwsAsync(Index.open(dir, { model: narrow, tokenizer: tok }), { instanceOf: TunekitError });
  t.is((err as TunekitError).code, 'E_CONFIG');
  t.regex(err!.message, /256-dimensional embeddings of distilbert from .*tiny-distilbert.*64 dimensions/);
  const other = await Model.fromConfig(config, { task: 'feature-extraction', seed: 2 });
  const err2 = await t.throwsAsync(Index.open(dir, { model: other, tokenizer: tok }), { instanceOf: TunekitError });
  t.is((err2 as TunekitError).code, 'E_CONFIG');
  t.regex(err2!.message, /embedded by another model/);
  narrow.dispose();
  other.dispose();
  // The refusals changed nothing.
  const again = await Index.open(dir);
  t.is((await again.stats()).sources, DOCS.length);
  again.close();
});

test('bad input: clear errors, and nothing lost from the index', async (t) => {
  const { index, dir } = await filled();
  const held = await index.stats();
  const code = async (p: Promise<unknown>, c: string, re: RegExp) => {
    const e = await t.throwsAsync(p, { instanceOf: TunekitError });
    t.is((e as TunekitError).code, c, e?.message);
    t.regex(e!.message, re);
  };
  await code(index.add([DOCS[0], { text: 42 } as never]), 'E_TYPE', /documents\[1\]\.text/);
  await code(index.add([{ text: 'x', sourc: 'typo' } as never]), 'E_ARG', /sourc/);
  await code(index.add([DOCS[0], DOCS[0]]), 'E_ARG', /appears twice/);
  await code(
    index.search('the whale '.repeat(100), { mode: 'vector' }),
    'E_RANGE',
    /query is \d+ tokens; the embedding model reads at most 128/,
  );
  await code(index.search('whale', { mode: 'fuzzy' as never }), 'E_ARG', /mode/);
  await code(index.search(''), 'E_ARG', /non-empty/);
  await code(index.prompt('whale', { template: 'no slots' }), 'E_ARG', /\{context\}/);
  await code(Index.open(dir, { chunkTokens: 10 }), 'E_CONFIG', /chunkTokens 126/);
  // Writes through one Index wait for each other.
  await Promise.all([index.add([{ text: 'First writer.', source: 'w1' }]), index.add([{ text: 'Second writer.', source: 'w2' }])]);
  t.is((await index.stats()).sources, held.sources + 2);
  // A writer elsewhere holds the folder's lock: refused while it runs, and its lock is taken over once it is gone.
  const holder = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)']);
  fs.writeFileSync(path.join(dir, 'write.lock'), JSON.stringify({ pid: holder.pid, host: os.hostname() }));
  await code(
    index.add([{ text: 'Third writer.', source: 'w3' }]),
    'E_STATE',
    new RegExp(`being written by another writer \\(process ${holder.pid}`),
  );
  await code(index.delete({ source: 'w1' }), 'E_STATE', /being written/);
  t.is((await index.stats()).sources, held.sources + 2);
  await new Promise((res) => holder.on('exit', res).kill('SIGKILL'));
  await index.add([{ text: 'Third writer.', source: 'w3' }]);
  t.is((await index.stats()).sources, held.sources + 3);
  t.false(fs.existsSync(path.join(dir, 'write.lock')));
  index.close();
  // Not an index: a folder with other files is not written into.
  const busy = tmpDir('not-index');
  fs.writeFileSync(path.join(busy, 'notes.txt'), 'mine');
  await code(Index.open(busy, { model: MODEL }), 'E_STATE', /not a tunekit index/);
  t.deepEqual(fs.readdirSync(busy), ['notes.txt']);
  await code(Index.open(path.join(tmpDir('new'), 'ix')), 'E_ARG', /new index: say which model/);
  // A corrupted table: its manifests overwritten.
  const versions = path.join(dir, 'chunks.lance', '_versions');
  for (const f of fs.readdirSync(versions)) fs.writeFileSync(path.join(versions, f), 'garbage');
  await code(
    Index.open(dir, { model: null }).then((i) => i.stats()),
    'E_FORMAT',
    /LanceDB table cannot be read/,
  );
});

test('a retrieval-augmented prompt holds the best chunks that fit, and answer() generates from it', async (t) => {
  const { index } = await filled();
  const gpt2Dir = path.join(ROOT, 'models', 'tiny-gpt2');
  const generator = await Model.fromPretrained(gpt2Dir);
  const gtok = await Tokenizer.fromPretrained(gpt2Dir);
  const all = await index.prompt('Who hunted the whale?', { k: 3, mode: 'vector' });
  t.is(all.hits.length, 3);
  t.true(all.prompt.startsWith(`Context:\n${all.hits[0].text}\n\n${all.hits[1].text}`));
  t.true(all.prompt.endsWith('Question: Who hunted the whale?\nAnswer:'));
  // A budget that holds only the first chunk drops the others, lowest-ranked first.
  const budget = gtok.encode(all.prompt).length - gtok.encode(all.hits[2].text).length - gtok.encode(all.hits[1].text).length;
  const cut = await index.prompt('Who hunted the whale?', { k: 3, mode: 'vector', tokenizer: gtok, maxTokens: budget });
  t.deepEqual(
    cut.hits.map((h) => h.source),
    [all.hits[0].source],
  );
  const out = await index.answer('Who hunted the whale?', { generator, tokenizer: gtok, k: 2, mode: 'vector', maxNewTokens: 8 });
  const ids = gtok.encode(out.prompt);
  const [direct] = await generator.generate({ inputIds: [ids] }, { maxNewTokens: 8 });
  t.is(out.answer, gtok.decode(direct.slice(ids.length), { skipSpecialTokens: true }));
  t.true(out.answer.length > 0);
  index.close();
  generator.dispose();
});

test('tunekit index add/search on the command line: plain text and JSONL, --json prints what search() returns', async (t) => {
  const dir = path.join(tmpDir('cli-index'), 'ix');
  const files = tmpDir('cli-docs');
  fs.writeFileSync(path.join(files, 'moby.txt'), DOCS[0].text);
  fs.writeFileSync(
    path.join(files, 'more.jsonl'),
    DOCS.slice(1)
      .map((d) => JSON.stringify(d))
      .join('\n') + '\n',
  );
  const add = cli('index', 'add', '--index', dir, '--model', MODEL, path.join(files, 'moby.txt'), path.join(files, 'more.jsonl'));
  t.is(add.status, 0, add.stderr);
  t.regex(add.stdout, /added 5 chunks from 5 sources/);
  const r = cli('index', 'search', '--index', dir, '--query', 'budget taxes', '--mode', 'hybrid', '--k', '3', '--json');
  t.is(r.status, 0, r.stderr);
  const hits = JSON.parse(r.stdout);
  const index = await Index.open(dir);
  t.deepEqual(hits, JSON.parse(JSON.stringify(await index.search('budget taxes', { mode: 'hybrid', k: 3 }))));
  t.is(hits[0].source, 'senate');
  t.deepEqual(hits[0].metadata, { year: 1990 });
  index.close();
  const bad = cli('index', 'search', '--index', dir, '--query', 'x', '--mode', 'fuzzy');
  t.is(bad.status, 2);
  t.regex(bad.stderr, /^tunekit: --mode must be one of vector, text, hybrid/);
  const none = cli('index', 'add', '--index', dir);
  t.is(none.status, 2);
  t.regex(none.stderr, /name at least one FILE/);
});
