import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { AdamW, LoRA, Model } from '../lib';
import { createServer } from '../lib/server';
import { Tokenizer } from '../lib/tokenizer';
import { ROOT, tmpDir } from './helpers';

const GPT2 = path.join(ROOT, 'models', 'tiny-gpt2');
const DISTILBERT = path.join(ROOT, 'models', 'tiny-distilbert');
const CLI = path.join(ROOT, 'dist', 'cli', 'main.js');

/** OpenAI-style prompt/completion rows. */
const ROWS = Array.from({ length: 24 }, (_, i) => ({
  prompt: `Review ${i}: the film was`,
  completion: i % 2 ? ' wonderful and moving.' : ' dull and far too long.',
}));
const jsonl = (rows: unknown[]) => rows.map((r) => JSON.stringify(r)).join('\n') + '\n';

/** Prompts the adapter tests decode; each adapter is taught its own ending for all of them. */
const ADAPTER_PROMPTS = ['The President said that', 'In the morning the old man', 'Review 1: the film was'];
const ADAPTER_ENDINGS = [' apples and pears.', ' rivers and lakes.', ' music and dance.'];

/**
 * A LoRA adapter of tiny-gpt2 trained to continue ADAPTER_PROMPTS with ADAPTER_ENDINGS[i], saved to `dir`. Taught
 * endings give each adapter a greedy continuation far from the base's and from the other adapters', on any machine's
 * rounding; a single small step (as before) left two adapters decoding the same words on one CI machine.
 */
async function trainedAdapter(dir: string, i: number): Promise<Model> {
  const tok = await Tokenizer.fromPretrained(GPT2);
  const model = await Model.fromPretrained(GPT2);
  await new LoRA({ r: 4, alpha: 16, seed: i + 1 }).apply(model);
  const opt = new AdamW(model, { lr: 5e-3 });
  const ids = tok.encodeBatch(
    ADAPTER_PROMPTS.map((p) => p + ADAPTER_ENDINGS[i]),
    { padding: 'longest' },
  );
  const labels = ids.inputIds.map((r, j) => r.map((x, k) => (ids.attentionMask[j]![k] ? x : -100)));
  await model.train();
  for (let step = 0; step < 30; step++) {
    await model.backward({ ...ids, labels });
    await opt.step();
    await model.zeroGrad();
  }
  await model.eval();
  await model.saveAdapter(dir, { baseModelNameOrPath: GPT2 });
  return model;
}

async function started(opts: Partial<Parameters<typeof createServer>[0]> = {}) {
  const dataDir = opts.dataDir ?? tmpDir('serve');
  const app = await createServer({ dataDir, checkpointEvery: 2, ...opts });
  const base = await app.listen({ port: 0, host: '127.0.0.1' });
  return { app, base, dataDir };
}

async function call(base: string, method: string, url: string, body?: unknown, token?: string) {
  const res = await fetch(base + url, {
    method,
    headers: {
      ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
      ...(token ? { authorization: `Bearer ${token}` } : {}),
    },
    body: body !== undefined ? JSON.stringify(body) : undefined,
  });
  return { status: res.status, body: (await res.json()) as any };
}

async function upload(base: string, text: string, token?: string, filename = 'train.jsonl') {
  const form = new FormData();
  form.append('purpose', 'fine-tune');
  form.append('file', new Blob([text]), filename);
  const res = await fetch(`${base}/v1/files`, { method: 'POST', body: form, headers: token ? { authorization: `Bearer ${token}` } : {} });
  return { status: res.status, body: (await res.json()) as any };
}

/** Reads a server-sent-event stream to its `[DONE]`; returns the parsed `data:` payloads. */
async function readSse(res: Response): Promise<any[]> {
  const text = await res.text();
  return text
    .split('\n\n')
    .map((b) =>
      b
        .split('\n')
        .find((l) => l.startsWith('data: '))
        ?.slice(6),
    )
    .filter((d): d is string => d !== undefined && d !== '[DONE]')
    .map((d) => JSON.parse(d));
}

async function waitFor(base: string, id: string, statuses: string[], token?: string, timeoutMs = 240_000) {
  const t0 = Date.now();
  for (;;) {
    const { body } = await call(base, 'GET', `/v1/fine_tuning/jobs/${id}`, undefined, token);
    if (statuses.includes(body.status)) return body;
    if (Date.now() - t0 > timeoutMs) throw new Error(`job ${id} still ${body.status}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const LORA = { type: 'lora', hyperparameters: { max_steps: 6, batch_size: 4, lora_r: 4, learning_rate: 0.01 } };

test.serial(
  'a LoRA job: upload, create, stream its events to the end, list checkpoints, then complete with the adapter it made',
  async (t) => {
    const { app, base, dataDir } = await started();
    try {
      const file = await upload(base, jsonl(ROWS));
      t.is(file.status, 200, JSON.stringify(file.body));
      t.regex(file.body.id, /^file-/);
      const validation = await upload(base, jsonl(ROWS.slice(0, 6)), undefined, 'valid.jsonl');
      const created = await call(base, 'POST', '/v1/fine_tuning/jobs', {
        model: 'tiny-gpt2',
        training_file: file.body.id,
        validation_file: validation.body.id,
        method: LORA,
        suffix: 'reviews',
        seed: 7,
      });
      t.is(created.status, 200, JSON.stringify(created.body));
      t.is(created.body.status, 'validating_files');
      const stream = await fetch(`${base}/v1/fine_tuning/jobs/${created.body.id}/events?stream=true`);
      t.is(stream.headers.get('content-type'), 'text/event-stream');
      const events = await readSse(stream);
      const metrics = events.filter((e) => e.type === 'metrics');
      t.deepEqual(
        metrics.map((e) => e.data.step),
        [1, 2, 3, 4, 5, 6],
      );
      t.true(metrics.every((e) => e.data.total_steps === 6 && Number.isFinite(e.data.train_loss) && e.data.eta_seconds >= 0));
      t.regex(events.at(-1).message, /successfully completed: ft:tiny-gpt2:reviews:ftjob-/);
      t.is(events.at(-1).data.validation.examples, 6);
      t.true(Number.isFinite(events.at(-1).data.validation.loss));
      const job = (await call(base, 'GET', `/v1/fine_tuning/jobs/${created.body.id}`)).body;
      t.is(job.status, 'succeeded');
      t.is(job.fine_tuned_model, `ft:tiny-gpt2:reviews:${job.id}`);
      // The list (newest first) holds the same events as the stream.
      const listed = (await call(base, 'GET', `/v1/fine_tuning/jobs/${job.id}/events?limit=100`)).body;
      t.deepEqual(
        listed.data.map((e: any) => e.id).reverse(),
        events.map((e) => e.id),
      );
      const ckpts = (await call(base, 'GET', `/v1/fine_tuning/jobs/${job.id}/checkpoints`)).body.data;
      t.deepEqual(
        ckpts.map((c: any) => c.step_number),
        [6, 4],
      );
      t.is(ckpts[0].metrics.step, 6);
      const models = (await call(base, 'GET', '/v1/models')).body.data.map((m: any) => m.id);
      t.true(models.includes('tiny-gpt2') && models.includes(job.fine_tuned_model));

      // Greedy completion with the job's adapter equals generating with the same adapter directly (both stop at the
      // end-of-text token).
      const model = await Model.fromPretrained(GPT2);
      await model.loadAdapter(path.join(dataDir, 'jobs', job.id, 'out'));
      const tok = await Tokenizer.fromPretrained(GPT2);
      for (const prompt of ['Review 3: the film was', 'The President said that']) {
        const done = await call(base, 'POST', '/v1/completions', { model: job.fine_tuned_model, prompt, max_tokens: 8, temperature: 0 });
        t.is(done.status, 200, JSON.stringify(done.body));
        const ids = tok.encode(prompt);
        const [direct] = await model.generate({ inputIds: [ids] }, { maxNewTokens: 8 });
        const generated = direct!.slice(ids.length);
        const kept = generated.includes(tok.eosTokenId!) ? generated.slice(0, generated.indexOf(tok.eosTokenId!)) : generated;
        t.is(done.body.choices[0].text, tok.decode(kept, { skipSpecialTokens: true }));
        t.is(done.body.choices[0].finish_reason, kept.length < 8 ? 'stop' : 'length');
        t.deepEqual(done.body.usage, { prompt_tokens: ids.length, completion_tokens: kept.length, total_tokens: ids.length + kept.length });
      }
      model.dispose();
    } finally {
      await app.close();
    }
  },
);

test.serial(
  'a DPO job on preference pairs runs `tunekit dpo` and reports its held-out pairs before and after; bad pairs fail at validation',
  async (t) => {
    const { app, base } = await started();
    try {
      const pairs = Array.from({ length: 10 }, (_, i) => ({
        prompt: `Review ${i}: the film was`,
        chosen: ' wonderful.',
        rejected: ' dull.',
      }));
      const file = await upload(base, jsonl(pairs));
      const created = await call(base, 'POST', '/v1/fine_tuning/jobs', {
        model: 'tiny-gpt2',
        training_file: file.body.id,
        method: { type: 'dpo', hyperparameters: { lora: true, batch_size: 3, learning_rate: 0.01, beta: 0.1 } },
      });
      t.is(created.status, 200, JSON.stringify(created.body));
      const done = await waitFor(base, created.body.id, ['succeeded', 'failed']);
      t.is(done.status, 'succeeded', JSON.stringify(done.error));
      const last = (await call(base, 'GET', `/v1/fine_tuning/jobs/${done.id}/events?limit=1`)).body.data[0];
      t.true(last.data.after.loss < last.data.before.loss, JSON.stringify(last.data));
      const steps = (await call(base, 'GET', `/v1/fine_tuning/jobs/${done.id}/events?limit=100`)).body.data.filter(
        (e: any) => e.type === 'metrics',
      );
      t.is(steps.length, 3, '9 training pairs in batches of 3');

      // Text rows are not preference pairs: the job fails while its files are validated, naming the line.
      const text = await upload(base, jsonl(ROWS));
      const wrong = await call(base, 'POST', '/v1/fine_tuning/jobs', {
        model: 'tiny-gpt2',
        training_file: text.body.id,
        method: { type: 'dpo' },
      });
      const failed = await waitFor(base, wrong.body.id, ['failed', 'queued', 'running', 'succeeded']);
      t.is(failed.status, 'failed');
      t.regex(failed.error.message, /:1: expected \{ "prompt"\?, "chosen": string, "rejected": string \}/);
    } finally {
      await app.close();
    }
  },
);

test.serial(
  'streamed completions equal the unstreamed ones, seeded sampling ignores its batch neighbours, and embeddings equal Model.embed',
  async (t) => {
    const { app, base } = await started();
    try {
      const body = {
        model: 'tiny-gpt2',
        prompt: ['The President said that', 'In the morning the old man'],
        max_tokens: 12,
        temperature: 0,
      };
      const [plain, res] = await Promise.all([
        call(base, 'POST', '/v1/completions', body),
        fetch(`${base}/v1/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ ...body, stream: true }),
        }),
      ]);
      t.is(plain.status, 200);
      const chunks = await readSse(res);
      for (const i of [0, 1]) {
        const text = chunks.flatMap((c) => c.choices.filter((ch: any) => ch.index === i).map((ch: any) => ch.text)).join('');
        t.is(text, plain.body.choices[i].text);
        t.true(chunks.filter((c) => c.choices[0].index === i && c.choices[0].text !== '').length > 1, 'streamed in pieces');
      }
      // Sampling is seeded per request: the same seed gives the same text, alone or beside another request.
      const sampled = { model: 'tiny-gpt2', prompt: 'The President said that', max_tokens: 10, temperature: 1, seed: 3 };
      const [a, b] = await Promise.all([
        call(base, 'POST', '/v1/completions', sampled),
        call(base, 'POST', '/v1/completions', { ...sampled, seed: 4 }),
      ]);
      const alone = await call(base, 'POST', '/v1/completions', sampled);
      t.is(alone.body.choices[0].text, a.body.choices[0].text);
      t.not(a.body.choices[0].text, b.body.choices[0].text);

      const emb = await call(base, 'POST', '/v1/embeddings', { model: 'tiny-distilbert', input: ['a fine film', 'a dull one'] });
      t.is(emb.status, 200, JSON.stringify(emb.body));
      const model = await Model.fromPretrained(DISTILBERT, { task: 'feature-extraction' });
      const tok = await Tokenizer.fromPretrained(DISTILBERT);
      const direct = await model.embed({ inputIds: [tok.encode('a dull one')] });
      t.deepEqual(emb.body.data[1].embedding, Array.from(direct.data));
      model.dispose();
      const encoder = await call(base, 'POST', '/v1/completions', { model: 'tiny-distilbert', prompt: 'x' });
      t.is(encoder.status, 400);
      t.regex(encoder.body.error.message, /not a causal language model/);
    } finally {
      await app.close();
    }
  },
);

test.serial('requests for different adapters of one base decode together and each equals its adapter alone', async (t) => {
  const dataDir = tmpDir('serve-adapters');
  const tok = await Tokenizer.fromPretrained(GPT2);
  const prompts = ADAPTER_PROMPTS;
  const alone: string[] = [];
  for (const [i, name] of ['x', 'y', 'z'].entries()) {
    const model = await trainedAdapter(path.join(dataDir, 'adapters', name), i);
    const p = tok.encode(prompts[i]!);
    const [out] = await model.generate({ inputIds: [p] }, { maxNewTokens: 10 });
    const gen = out!.slice(p.length);
    alone.push(tok.decode(gen.includes(tok.eosTokenId!) ? gen.slice(0, gen.indexOf(tok.eosTokenId!)) : gen, { skipSpecialTokens: true }));
    model.dispose();
  }
  const { app, base } = await started({ dataDir });
  try {
    const models = (await call(base, 'GET', '/v1/models')).body.data.map((m: any) => m.id);
    t.true(
      ['tiny-gpt2:x', 'tiny-gpt2:y', 'tiny-gpt2:z'].every((m) => models.includes(m)),
      models.join(', '),
    );
    const together = await Promise.all(
      ['x', 'y', 'z'].map((name, i) =>
        call(base, 'POST', '/v1/completions', { model: `tiny-gpt2:${name}`, prompt: prompts[i], max_tokens: 10, temperature: 0 }),
      ),
    );
    t.deepEqual(
      together.map((r) => r.body.choices[0].text),
      alone,
    );
    // The adapters change what is generated, so a row decoded through the wrong one (or none) would show.
    const bare = await Promise.all(
      prompts.map((prompt) => call(base, 'POST', '/v1/completions', { model: 'tiny-gpt2', prompt, max_tokens: 10, temperature: 0 })),
    );
    t.true(
      bare.every((r, i) => r.body.choices[0].text !== alone[i]),
      JSON.stringify(bare.map((r) => r.body.choices[0].text)),
    );
  } finally {
    await app.close();
  }
});

test.serial('a client that disconnects mid-stream stops its generation', async (t) => {
  const { app, base } = await started();
  try {
    const body = { model: 'tiny-gpt2', prompt: 'In the morning the old man', max_tokens: 100, temperature: 0 };
    const whole = await call(base, 'POST', '/v1/completions', body);
    t.is(whole.body.usage.completion_tokens, 100, 'left alone, this request runs to its 100 tokens');
    const before = (await call(base, 'GET', '/health')).body.generatedTokens;
    const ac = new AbortController();
    const res = await fetch(`${base}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ ...body, stream: true }),
      signal: ac.signal,
    });
    await res.body!.getReader().read();
    ac.abort();
    let health;
    do {
      await new Promise((r) => setTimeout(r, 20));
      health = (await call(base, 'GET', '/health')).body;
    } while (health.decoding > 0);
    // Stopped at the step it was in when the connection closed, far short of the 100 tokens asked for.
    t.true(health.generatedTokens - before < 50, `${health.generatedTokens - before} tokens generated`);
  } finally {
    await app.close();
  }
});

test.serial('bad requests: 401 without a token, 403 for another tenant, 400 naming the field, 404, and no stack traces', async (t) => {
  const { app, base } = await started({ tokens: { alice: 'a', bob: 'b' } });
  try {
    t.is((await call(base, 'GET', '/v1/fine_tuning/jobs')).status, 401);
    t.is((await call(base, 'GET', '/v1/fine_tuning/jobs', undefined, 'mallory')).status, 401);
    const corrupt = await upload(base, '{"prompt": "a", "completion": "b"}\n{not json\n', 'alice');
    t.is(corrupt.status, 400);
    t.regex(corrupt.body.error.message, /line 2 is not JSON/);
    const file = await upload(base, jsonl(ROWS), 'alice');
    t.is(file.status, 200);
    t.is((await call(base, 'GET', `/v1/files/${file.body.id}`, undefined, 'bob')).status, 403);
    t.is((await call(base, 'GET', '/v1/files/..%2F..%2Fetc%2Fpasswd', undefined, 'alice')).status, 400);
    const unknown = await call(
      base,
      'POST',
      '/v1/fine_tuning/jobs',
      { model: 'tiny-gpt2', training_file: file.body.id, epochs: 3 },
      'alice',
    );
    t.is(unknown.status, 400);
    t.regex(unknown.body.error.message, /additional propert/);
    const hyper = await call(
      base,
      'POST',
      '/v1/fine_tuning/jobs',
      { model: 'tiny-gpt2', training_file: file.body.id, method: { type: 'lora', hyperparameters: { lora_rank: 4 } } },
      'alice',
    );
    t.is(hyper.status, 400);
    t.regex(hyper.body.error.message, /hyperparameters.lora_rank: not a hyperparameter of lora/);
    const missing = await call(base, 'POST', '/v1/fine_tuning/jobs', { model: 'gpt-5', training_file: file.body.id }, 'alice');
    t.is(missing.status, 400);
    t.regex(missing.body.error.message, /model: "gpt-5" is not a base model/);
    const stolen = await call(base, 'POST', '/v1/fine_tuning/jobs', { model: 'tiny-gpt2', training_file: file.body.id }, 'bob');
    t.is(stolen.status, 403);
    t.is((await call(base, 'GET', '/v1/fine_tuning/jobs/ftjob-nothere', undefined, 'alice')).status, 404);
    t.is((await call(base, 'POST', '/v1/completions', { model: 'tiny-gpt2:nope', prompt: 'x' }, 'alice')).status, 404);
    for (const r of [corrupt, unknown, hyper, missing, stolen]) t.false(JSON.stringify(r.body).includes('    at '), 'no stack trace');
  } finally {
    await app.close();
  }
});

test.serial('cancel: a queued job at once, a running one by ending its process; both say so in their events', async (t) => {
  const { app, base } = await started();
  try {
    const file = await upload(base, jsonl(ROWS));
    const long = { type: 'lora', hyperparameters: { n_epochs: 100, batch_size: 4 } };
    const running = (await call(base, 'POST', '/v1/fine_tuning/jobs', { model: 'tiny-gpt2', training_file: file.body.id, method: long }))
      .body;
    await waitFor(base, running.id, ['running']);
    const queued = (await call(base, 'POST', '/v1/fine_tuning/jobs', { model: 'tiny-gpt2', training_file: file.body.id, method: long }))
      .body;
    t.is((await waitFor(base, queued.id, ['queued'])).status, 'queued', 'one job at a time: the second waits');
    t.is((await call(base, 'POST', `/v1/fine_tuning/jobs/${queued.id}/cancel`)).body.status, 'cancelled');
    await call(base, 'POST', `/v1/fine_tuning/jobs/${running.id}/cancel`);
    const done = await waitFor(base, running.id, ['cancelled', 'failed', 'succeeded']);
    t.is(done.status, 'cancelled');
    for (const id of [queued.id, running.id]) {
      const last = (await call(base, 'GET', `/v1/fine_tuning/jobs/${id}/events?limit=1`)).body.data[0];
      t.is(last.message, 'The job was cancelled');
    }
    // Paging: newest first, `after` continues past the last one seen.
    const first = (await call(base, 'GET', '/v1/fine_tuning/jobs?limit=1')).body;
    t.deepEqual([first.data[0].id, first.has_more], [queued.id, true]);
    const rest = (await call(base, 'GET', `/v1/fine_tuning/jobs?limit=5&after=${queued.id}`)).body;
    t.deepEqual([rest.data.map((j: any) => j.id), rest.has_more], [[running.id], false]);
  } finally {
    await app.close();
  }
});

test.serial(
  'limits: an upload over the size limit is 413, decoding beyond maxOpen is 503, adapters beyond maxAdapters are swapped',
  async (t) => {
    const dataDir = tmpDir('serve-limits');
    for (const [i, name] of ['p', 'q', 'r'].entries()) (await trainedAdapter(path.join(dataDir, 'adapters', name), i)).dispose();
    const { app, base } = await started({ dataDir, maxFileBytes: 1000, maxOpen: 1, maxAdapters: 2 });
    try {
      const big = await upload(base, jsonl(ROWS.concat(ROWS, ROWS)));
      t.is(big.status, 413);
      t.regex(big.body.error.message, /larger than the 1000 bytes/);
      t.deepEqual(fs.readdirSync(path.join(dataDir, 'files')), [], 'nothing half-written is left');
      const body = (model: string, max_tokens: number) => ({ model, prompt: ADAPTER_PROMPTS[0], max_tokens, temperature: 0 });
      // The second request arrives while the first is decoding (its first chunk is in): one is the limit.
      const res = await fetch(`${base}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        // This prompt runs to its 100 tokens (no end-of-text; the disconnect test checks it).
        body: JSON.stringify({ ...body('tiny-gpt2', 100), prompt: 'In the morning the old man', stream: true }),
      });
      const reader = res.body!.getReader();
      await reader.read();
      const refused = await call(base, 'POST', '/v1/completions', body('tiny-gpt2', 1));
      t.is(refused.status, 503);
      t.regex(refused.body.error.message, /retry shortly/);
      while (!(await reader.read()).done);
      // Three adapters through a set of two, twice round: each answer equals the first one for that adapter, and the
      // adapters differ, so a row run through the wrong one would show.
      const answers = new Map<string, string>();
      for (const name of ['p', 'q', 'r', 'p', 'q', 'r']) {
        const r = await call(base, 'POST', '/v1/completions', body(`tiny-gpt2:${name}`, 6));
        t.is(r.status, 200);
        if (!answers.has(name)) answers.set(name, r.body.choices[0].text);
        t.is(r.body.choices[0].text, answers.get(name));
      }
      t.is(new Set(answers.values()).size, 3, JSON.stringify([...answers]));
    } finally {
      await app.close();
    }
  },
);

test.serial("a job's process killed with SIGKILL fails that job with a clear event, and the server serves on", async (t) => {
  const dataDir = tmpDir('serve-kill');
  const { app, base } = await started({ dataDir });
  try {
    const file = await upload(base, jsonl(ROWS));
    const job = (
      await call(base, 'POST', '/v1/fine_tuning/jobs', {
        model: 'tiny-gpt2',
        training_file: file.body.id,
        method: { type: 'lora', hyperparameters: { n_epochs: 100, batch_size: 4 } },
      })
    ).body;
    await waitFor(base, job.id, ['running']);
    // The first metrics event says the child is training; its command line names the job's folder.
    for (;;) {
      const ev = (await call(base, 'GET', `/v1/fine_tuning/jobs/${job.id}/events?limit=1`)).body.data[0];
      if (ev?.type === 'metrics') break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const pid = childPid(job.id);
    process.kill(pid, 'SIGKILL');
    const failed = await waitFor(base, job.id, ['failed']);
    t.regex(failed.error.message, /killed by SIGKILL/);
    t.is((await call(base, 'GET', '/v1/models')).status, 200);
  } finally {
    await app.close();
  }
});

/** The pid of this process's child whose command line mentions `name`. */
function childPid(name: string): number {
  for (const p of fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const stat = fs.readFileSync(`/proc/${p}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === process.pid && fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(name)) return Number(p);
    } catch {
      continue;
    }
  }
  throw new Error(`no child process running ${name}`);
}

test.serial('kill -9 of the server mid-job: on restart the job resumes from its checkpoint and finishes every step once', async (t) => {
  const dataDir = tmpDir('serve-restart');
  const serve = () => {
    const child = spawn(process.execPath, [CLI, 'serve', '--port', '0', '--data-dir', dataDir, '--checkpoint-every', '3'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const base = new Promise<string>((resolve) =>
      child.stdout.on('data', (d: Buffer) => /listening on (\S+)/.test(String(d)) && resolve(String(d).match(/listening on (\S+)/)![1]!)),
    );
    return { child, base };
  };
  const first = serve();
  const base1 = await first.base;
  const file = await upload(base1, jsonl(ROWS));
  const job = (
    await call(base1, 'POST', '/v1/fine_tuning/jobs', {
      model: 'tiny-gpt2',
      training_file: file.body.id,
      method: { type: 'lora', hyperparameters: { max_steps: 12, batch_size: 4 } },
    })
  ).body;
  const ckpt = path.join(dataDir, 'jobs', job.id, 'out', 'checkpoints', 'latest.json');
  while (!fs.existsSync(ckpt)) await new Promise((r) => setTimeout(r, 20));
  first.child.kill('SIGKILL');
  await new Promise((r) => first.child.once('exit', r));
  const second = serve();
  try {
    const base2 = await second.base;
    const done = await waitFor(base2, job.id, ['succeeded', 'failed']);
    t.is(done.status, 'succeeded', JSON.stringify(done.error));
    const events = (await call(base2, 'GET', `/v1/fine_tuning/jobs/${job.id}/events?limit=100`)).body.data.reverse();
    t.true(events.some((e: any) => /server restarted while the job ran; it resumes from its last checkpoint \(step \d+\)/.test(e.message)));
    t.true(events.some((e: any) => /started again \(attempt 2\)/.test(e.message)));
    const steps = events.filter((e: any) => e.type === 'metrics').map((e: any) => e.data.step);
    t.deepEqual(
      steps,
      Array.from({ length: 12 }, (_, i) => i + 1),
      'each step reported once',
    );
  } finally {
    second.child.kill('SIGTERM');
    await new Promise((r) => second.child.once('exit', r));
  }
});
