/**
 * Load on `tunekit serve` over loopback with autocannon: completions/s and latency at 1, 8 and 32 concurrent clients,
 * every request through one adapter or through 8 different adapters of the same base, and the same while a
 * fine-tuning job runs. Each run is bounded in time; writes docs/serving.json and prints the table docs/SERVING.md
 * shows.
 *
 *   npm run bench:serve [-- --seconds 10]
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import autocannon from 'autocannon';
import { LoRA, Model } from '../lib';
import { createServer } from '../lib/server';
import { scriptFlags } from '../scripts/flags';

const ROOT = path.resolve(__dirname, '..');
const GPT2 = path.join(ROOT, 'models', 'tiny-gpt2');
const seconds = Number(scriptFlags('bench:serve', { seconds: { type: 'string' } }).seconds ?? 10);
if (!(seconds > 0)) throw new Error('--seconds must be a positive number');
const ADAPTERS = 8;

interface Row {
  clients: number;
  adapters: number;
  duringJob: boolean;
  requests: number;
  perSecond: number;
  tokensPerSecond: number;
  p50: number;
  p99: number;
  errors: number;
  non2xx: number;
}

async function main(): Promise<void> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tunekit-bench-serve-'));
  for (let i = 0; i < ADAPTERS; i++) {
    const model = await Model.fromPretrained(GPT2);
    // Fresh adapters (B is zero, as LoRA starts): their products cost what trained ones cost.
    await new LoRA({ r: 8, alpha: 16, seed: i + 1 }).apply(model);
    await model.saveAdapter(path.join(dataDir, 'adapters', `a${i}`), { baseModelNameOrPath: GPT2 });
    model.dispose();
  }
  const app = await createServer({ dataDir, checkpointEvery: 1000 });
  const base = await app.listen({ port: 0, host: '127.0.0.1' });
  const body = (i: number, adapters: number) =>
    JSON.stringify({ model: `tiny-gpt2:a${i % adapters}`, prompt: 'The President said that', max_tokens: 16, temperature: 0 });
  // Loads the base and every adapter before anything is timed.
  for (let i = 0; i < ADAPTERS; i++)
    await fetch(`${base}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: body(i, ADAPTERS) });

  const rows: Row[] = [];
  const load = async (clients: number, adapters: number, duringJob: boolean) => {
    const before = (await (await fetch(`${base}/health`)).json()).generatedTokens;
    const r = await autocannon({
      url: base,
      connections: clients,
      duration: seconds,
      maxOverallRequests: 20_000, // a bound on count too, far above what 2 cores answer in a row's time
      timeout: 60,
      requests: Array.from({ length: adapters }, (_, i) => ({
        method: 'POST' as const,
        path: '/v1/completions',
        headers: { 'content-type': 'application/json' },
        body: body(i, adapters),
      })),
    });
    const after = (await (await fetch(`${base}/health`)).json()).generatedTokens;
    const row: Row = {
      clients,
      adapters,
      duringJob,
      requests: r.requests.total,
      perSecond: r.requests.total / r.duration,
      tokensPerSecond: (after - before) / r.duration,
      p50: r.latency.p50,
      p99: r.latency.p99,
      errors: r.errors + r.timeouts,
      non2xx: r.non2xx,
    };
    rows.push(row);
    console.log(JSON.stringify(row));
  };
  for (const clients of [1, 8, 32]) for (const adapters of [1, ADAPTERS]) await load(clients, adapters, false);

  // The same while a LoRA job trains (it has the cores to share).
  const form = new FormData();
  form.append('purpose', 'fine-tune');
  const lines = Array.from({ length: 64 }, (_, i) => JSON.stringify({ prompt: `Review ${i}: the film was`, completion: ' fine.' }));
  form.append('file', new Blob([lines.join('\n')]), 'train.jsonl');
  const file = await (await fetch(`${base}/v1/files`, { method: 'POST', body: form })).json();
  const job = await (
    await fetch(`${base}/v1/fine_tuning/jobs`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'tiny-gpt2', training_file: file.id, method: { type: 'lora', hyperparameters: { n_epochs: 1000 } } }),
    })
  ).json();
  while ((await (await fetch(`${base}/v1/fine_tuning/jobs/${job.id}/events?limit=1`)).json()).data[0]?.type !== 'metrics')
    await new Promise((r) => setTimeout(r, 200));
  await load(8, ADAPTERS, true);
  await fetch(`${base}/v1/fine_tuning/jobs/${job.id}/cancel`, { method: 'POST' });
  await app.close();

  const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
  fs.writeFileSync(
    path.join(ROOT, 'docs', 'serving.json'),
    JSON.stringify({ cpu, cores: os.cpus().length, seconds, rows }, null, 2) + '\n',
  );
  console.log(`\n${cpu}, ${os.cpus().length} cores; ${seconds} s per row; 16 greedy tokens per request on tiny-gpt2\n`);
  console.log('| clients | adapters | during a job | completions/s | tokens/s | p50 ms | p99 ms | failed |');
  console.log('|---|---|---|---|---|---|---|---|');
  for (const r of rows)
    console.log(
      `| ${r.clients} | ${r.adapters} | ${r.duringJob ? 'yes' : 'no'} | ${r.perSecond.toFixed(1)} | ${r.tokensPerSecond.toFixed(0)} | ${r.p50} | ${r.p99} | ${r.errors + r.non2xx} |`,
    );
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
