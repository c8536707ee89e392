/**
 * Another Node service using `tunekit serve`: upload training data, start a LoRA job, follow its events as they
 * stream, then complete with the adapter it produced. Start the server first:
 *
 *   npm run tunekit -- serve --port 8080 --data-dir runs/serve-data
 *   node --require tsx/cjs examples/serve-client.ts http://127.0.0.1:8080
 */
const BASE = process.argv[2] ?? 'http://127.0.0.1:8080';

async function api(method: string, url: string, body?: unknown): Promise<any> {
  const res = await fetch(BASE + url, {
    method,
    headers: body ? { 'content-type': 'application/json' } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const json = await res.json();
  if (!res.ok) throw new Error(`${method} ${url}: ${res.status} ${json.error?.message}`);
  return json;
}

async function main(): Promise<void> {
  const rows = Array.from({ length: 64 }, (_, i) => ({
    prompt: `Customer ${i}: how was the film?\nAgent:`,
    completion: i % 2 ? ' It was wonderful, thank you for asking.' : ' It was long, but the ending was good.',
  }));
  const form = new FormData();
  form.append('purpose', 'fine-tune');
  form.append('file', new Blob([rows.map((r) => JSON.stringify(r)).join('\n')]), 'support.jsonl');
  const file = await (await fetch(`${BASE}/v1/files`, { method: 'POST', body: form })).json();
  console.log(`uploaded ${file.id} (${file.bytes} bytes)`);

  const job = await api('POST', '/v1/fine_tuning/jobs', {
    model: 'tiny-gpt2',
    training_file: file.id,
    method: { type: 'lora', hyperparameters: { n_epochs: 2, batch_size: 8, learning_rate: 0.003 } },
    suffix: 'support',
  });
  console.log(`job ${job.id}: ${job.status}`);

  // Server-sent events: every event so far, then live ones until the job ends.
  const stream = await fetch(`${BASE}/v1/fine_tuning/jobs/${job.id}/events?stream=true`);
  const decoder = new TextDecoder();
  let buffer = '';
  for await (const bytes of stream.body as unknown as AsyncIterable<Uint8Array>) {
    buffer += decoder.decode(bytes, { stream: true });
    let cut;
    while ((cut = buffer.indexOf('\n\n')) >= 0) {
      const data = buffer
        .slice(0, cut)
        .split('\n')
        .find((l) => l.startsWith('data: '))
        ?.slice(6);
      buffer = buffer.slice(cut + 2);
      if (data && data !== '[DONE]') {
        const e = JSON.parse(data);
        console.log(e.type === 'metrics' ? `  ${e.message} (eta ${e.data.eta_seconds} s)` : `  ${e.message}`);
      }
    }
  }

  const done = await api('GET', `/v1/fine_tuning/jobs/${job.id}`);
  if (done.status !== 'succeeded') throw new Error(`job ${done.status}: ${done.error?.message}`);
  const completion = await api('POST', '/v1/completions', {
    model: done.fine_tuned_model,
    prompt: 'Customer 99: how was the film?\nAgent:',
    max_tokens: 12,
    temperature: 0,
  });
  console.log(`${done.fine_tuned_model}: ${JSON.stringify(completion.choices[0].text)}`);
}

main().catch((e) => {
  console.error(e.message);
  process.exitCode = 1;
});
