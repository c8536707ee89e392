/**
 * Retrieval on text that ships here, and the index's throughput.
 *
 * The task: every held-out paragraph of the pretraining corpus (scripts/pretrain/corpus.ts) with at least three
 * sentences gives one query, a sentence of at most 50 words drawn from it (seeded), and one document, the paragraph without that
 * sentence; every other held-out paragraph is indexed whole as a distractor. A query is answered when its own
 * document is among the top sources. Scored: recall@1/5/10 and MRR@10 for BM25 (text), the shipped tiny-distilbert's
 * mean-pooled embeddings (vector), the same model after contrastive finetuning (MultipleNegativesRankingLoss on
 * sentence / rest-of-paragraph pairs from the corpus's training split, which shares no paragraph with the held-out
 * one), and the hybrid of BM25 with each.
 *
 * Throughput: training-split paragraphs chunked at 64 tokens into an index of 10,000 then 100,000 chunks (add calls
 * of 500 paragraphs, each one LanceDB commit; then optimize(), timed apart), then 200 single queries per mode:
 * chunks/s, queries/s, p50/p99, and the query embedding's share.
 *
 *   npm run retrieval-eval [-- --pairs 8192 --epochs 1 --lr 1e-4 --skip-quality --skip-throughput]
 *
 * Writes docs/retrieval.json; the tables in docs/RESULTS.md are copied from its output.
 */
import fs from 'node:fs';
import path from 'node:path';
import { ContrastiveTrainer, Index, Model, SearchMode, Tokenizer } from '../lib';
import { embedTexts } from '../lib/retrieval';
import { progressBar } from '../lib/progress';
import { mulberry32, shuffled } from '../lib/random';
import { writeJsonAtomic } from '../lib/safetensors';
import { scriptFlags } from './flags';
import { buildCorpus } from './pretrain/corpus';

const ROOT = path.resolve(__dirname, '..');
const WORK = path.join(ROOT, '.cache', 'retrieval');
const MODEL = path.join(ROOT, 'models', 'tiny-distilbert');
const flags = scriptFlags('retrieval-eval', {
  epochs: { type: 'string' },
  lr: { type: 'string' },
  pairs: { type: 'string' },
  'skip-quality': { type: 'boolean' },
  'skip-throughput': { type: 'boolean' },
});
const arg = (name: string, fallback: string) => (flags[name] as string | undefined) ?? fallback;
const SEED = 7;
const KS = [1, 5, 10];

/** Sentences of at least four words, cut after . ! ? before a capital or a quote. */
const sentences = (p: string) => p.split(/(?<=[.!?])\s+(?=[A-Z"'])/).filter((s) => s.split(' ').length >= 4);

interface Task {
  docs: { text: string; source: string }[];
  queries: { text: string; source: string }[];
}

function evaluationTask(paragraphs: string[]): Task {
  const rand = mulberry32(SEED);
  const task: Task = { docs: [], queries: [] };
  paragraphs.forEach((p, i) => {
    const source = `p${i}`;
    const s = sentences(p);
    // A query is a sentence of at most 50 words, so that it fits the embedding model's 128 positions.
    const short = s.flatMap((x, j) => (x.split(' ').length <= 50 ? [j] : []));
    if (s.length < 3 || short.length === 0) return task.docs.push({ text: p, source });
    const q = short[Math.floor(rand() * short.length)];
    task.queries.push({ text: s[q], source });
    task.docs.push({ text: s.filter((_, j) => j !== q).join(' '), source });
  });
  return task;
}

function trainingPairs(paragraphs: string[], n: number) {
  const rand = mulberry32(SEED + 1);
  const pairs: { anchor: string; positive: string }[] = [];
  for (const i of shuffled(paragraphs.length, SEED)) {
    const s = sentences(paragraphs[i]);
    if (s.length < 3) continue;
    const q = Math.floor(rand() * s.length);
    pairs.push({ anchor: s[q], positive: s.filter((_, j) => j !== q).join(' ') });
    if (pairs.length === n) break;
  }
  return pairs;
}

/** Recall@k and MRR@10 of the true source among the top 10 distinct sources of each query's hits. */
async function score(index: Index, task: Task, mode: SearchMode) {
  const recall = Object.fromEntries(KS.map((k) => [k, 0]));
  let mrr = 0;
  for (const q of task.queries) {
    const hits = await index.search(q.text, { k: 30, mode });
    const ranked = [...new Set(hits.map((h) => h.source))].slice(0, 10);
    const rank = ranked.indexOf(q.source) + 1;
    for (const k of KS) if (rank > 0 && rank <= k) recall[k]++;
    if (rank > 0) mrr += 1 / rank;
  }
  const n = task.queries.length;
  return {
    ...Object.fromEntries(KS.map((k) => [`recall@${k}`, recall[k] / n])),
    'mrr@10': mrr / n,
  };
}

async function buildIndex(dir: string, model: string, docs: { text: string; source: string }[]): Promise<Index> {
  fs.rmSync(dir, { recursive: true, force: true });
  const index = await Index.open(dir, { model });
  await index.add(docs, { progress: true });
  return index;
}

async function finetuneEmbedder(pairs: { anchor: string; positive: string }[], out: string) {
  const model = await Model.fromPretrained(MODEL, { task: 'feature-extraction' });
  const tokenizer = await Tokenizer.fromPretrained(MODEL);
  const batchSize = 32;
  const epochs = Number(arg('epochs', '1'));
  const lr = Number(arg('lr', '1e-4'));
  const steps = Math.ceil(pairs.length / batchSize) * epochs;
  const bar = progressBar(steps, 'contrastive finetuning');
  const trainer = new ContrastiveTrainer(model, {
    tokenizer,
    batchSize,
    epochs,
    lr,
    warmupRatio: 0.1,
    seed: SEED,
    precision: 'bf16-mixed',
    onProgress: (p) => bar.update(p.step, { loss: p.loss.toFixed(4), acc: p.accuracy.toFixed(3) }),
  });
  const started = Date.now();
  const { history } = await trainer.train(pairs);
  bar.stop();
  const seconds = (Date.now() - started) / 1000;
  await model.setPrecision('32-true');
  fs.rmSync(out, { recursive: true, force: true });
  await model.savePretrained(out);
  for (const f of ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'vocab.txt'])
    if (fs.existsSync(path.join(MODEL, f))) fs.copyFileSync(path.join(MODEL, f), path.join(out, f));
  model.dispose();
  const tail = history.slice(-20);
  return {
    pairs: pairs.length,
    batchSize,
    epochs,
    lr,
    steps: history.length,
    seconds,
    finalLoss: tail.reduce((a, s) => a + s.loss, 0) / tail.length,
    finalInBatchAccuracy: tail.reduce((a, s) => a + s.accuracy, 0) / tail.length,
  };
}

const quantile = (xs: number[], q: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))];

async function throughput(paragraphs: string[], queries: string[]) {
  const dir = path.join(WORK, 'throughput');
  fs.rmSync(dir, { recursive: true, force: true });
  const model = await Model.fromPretrained(MODEL, { task: 'feature-extraction' });
  const tokenizer = await Tokenizer.fromPretrained(MODEL);
  const index = await Index.open(dir, { model, tokenizer, chunkTokens: 64, overlapTokens: 8 });
  const rows = [];
  let next = 0;
  let added = 0;
  let addSeconds = 0;
  for (const target of [10_000, 100_000]) {
    const bar = progressBar(target, `indexing to ${target} chunks`);
    while (added < target && next < paragraphs.length) {
      const batch = paragraphs.slice(next, next + 500).map((text, i) => ({ text, source: `t${next + i}` }));
      next += batch.length;
      const t0 = process.hrtime.bigint();
      added += (await index.add(batch)).chunks;
      addSeconds += Number(process.hrtime.bigint() - t0) / 1e9;
      bar.update(Math.min(added, target));
    }
    bar.stop();
    const t0 = process.hrtime.bigint();
    await index.optimize();
    const optimizeSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
    const stats = await index.stats();
    const row: Record<string, unknown> = {
      chunks: stats.chunks,
      indexSeconds: addSeconds,
      chunksPerSecond: stats.chunks / addSeconds,
      optimizeSeconds,
      bytes: stats.bytes,
    };
    // What a vector query spends embedding the query, apart from LanceDB's search.
    const embedMs: number[] = [];
    for (const q of queries) {
      const t1 = process.hrtime.bigint();
      await embedTexts(model, tokenizer, [q], 'mean', 1);
      embedMs.push(Number(process.hrtime.bigint() - t1) / 1e6);
    }
    row.queryEmbedding = { p50Ms: quantile(embedMs, 0.5), p99Ms: quantile(embedMs, 0.99) };
    for (const mode of ['vector', 'text', 'hybrid'] as const) {
      await index.search(queries[0], { k: 10, mode }); // warm-up
      const ms: number[] = [];
      for (const q of queries) {
        const t0 = process.hrtime.bigint();
        await index.search(q, { k: 10, mode });
        ms.push(Number(process.hrtime.bigint() - t0) / 1e6);
      }
      row[mode] = {
        queriesPerSecond: 1000 / (ms.reduce((a, b) => a + b, 0) / ms.length),
        p50Ms: quantile(ms, 0.5),
        p99Ms: quantile(ms, 0.99),
      };
    }
    console.log(JSON.stringify(row));
    rows.push(row);
    if (added < target) {
      console.log(`the training split ran out at ${added} chunks`);
      break;
    }
  }
  index.close();
  model.dispose();
  return rows;
}

async function main() {
  const corpusDir = path.join(ROOT, '.cache', 'pretrain', 'corpus');
  buildCorpus(corpusDir);
  const read = (f: string) => fs.readFileSync(path.join(corpusDir, f), 'utf8').split('\n').filter(Boolean);
  const task = evaluationTask(read('validation.txt'));
  const train = read('train.txt');
  console.log(`${task.queries.length} queries over ${task.docs.length} documents`);

  const out = path.join(ROOT, 'docs', 'retrieval.json');
  // Each part rewrites its own fields, so that either can be rerun alone.
  const results: Record<string, unknown> = fs.existsSync(out) ? JSON.parse(fs.readFileSync(out, 'utf8')) : {};
  if (!flags['skip-quality']) await quality(task, train, results);
  if (!flags['skip-throughput'])
    results.throughput = await throughput(
      train,
      task.queries.slice(0, 200).map((q) => q.text),
    );
  await writeJsonAtomic(out, results);
  console.log(`wrote ${out}`);
}

async function quality(task: Task, train: string[], results: Record<string, unknown>) {
  results.queries = task.queries.length;
  results.documents = task.docs.length;
  const table: Record<string, Record<string, number>> = {};
  const raw = await buildIndex(path.join(WORK, 'raw'), MODEL, task.docs);
  table['BM25 (text)'] = await score(raw, task, 'text');
  table['tiny-distilbert, mean pooling (vector)'] = await score(raw, task, 'vector');
  table['hybrid: BM25 + tiny-distilbert (RRF)'] = await score(raw, task, 'hybrid');
  raw.close();

  const embedder = path.join(WORK, 'embedder');
  results.finetuning = await finetuneEmbedder(trainingPairs(train, Number(arg('pairs', '8192'))), embedder);
  const tuned = await buildIndex(path.join(WORK, 'tuned'), embedder, task.docs);
  table['tiny-distilbert, contrastively finetuned (vector)'] = await score(tuned, task, 'vector');
  table['hybrid: BM25 + finetuned (RRF)'] = await score(tuned, task, 'hybrid');
  tuned.close();
  results.retrieval = table;

  console.log('\n| method | recall@1 | recall@5 | recall@10 | MRR@10 |\n|---|---|---|---|---|');
  for (const [name, m] of Object.entries(table))
    console.log(
      `| ${name} | ${m['recall@1'].toFixed(3)} | ${m['recall@5'].toFixed(3)} | ${m['recall@10'].toFixed(3)} | ${m['mrr@10'].toFixed(3)} |`,
    );
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
