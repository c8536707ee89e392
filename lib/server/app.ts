/**
 * `tunekit serve`: OpenAI's fine-tuning jobs API and OpenAI-compatible completions and embeddings, on Fastify 5 with
 * JSON-Schema-validated routes. Files, jobs and events live in SQLite under the data dir; each job runs in a child
 * process of its own (./jobs.ts); inference loads models on demand (./inference.ts).
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import Fastify, { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import multipart from '@fastify/multipart';
import underPressure from '@fastify/under-pressure';
import { Static, Type, TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { TunekitError } from '../errors';
import { Inference, InferenceError } from './inference';
import { JobError, JobRunner } from './jobs';
import { EventRecord, FileRecord, FINISHED, JobRecord, newId, Store } from './store';

export interface ServerOptions {
  /** Where the database, uploaded files, jobs' outputs and named adapters live. */
  dataDir: string;
  /** Folders of base models: every subfolder with a config.json is served by its folder name (default: tunekit's models/). */
  modelsDir?: string;
  /** Bearer token -> tenant. Without it, every request is the one tenant "default" and none is refused. */
  tokens?: Record<string, string>;
  /** Fine-tuning jobs that run at once (default 1). */
  concurrency?: number;
  /** libtorch threads of each job's process (default half the cores; this process's own follow OMP_NUM_THREADS). */
  jobThreads?: number;
  /** Steps between a job's checkpoints (default 50). */
  checkpointEvery?: number;
  /** Adapters kept loaded per base (default 8). */
  maxAdapters?: number;
  /** Completions decoding at once before new ones get 503 (default 64). */
  maxOpen?: number;
  /** Largest upload (default 64 MiB) and largest JSON body (default 1 MiB). */
  maxFileBytes?: number;
  bodyLimit?: number;
  /** Event-loop delay (ms) beyond which requests get 503 (default 1000). */
  maxEventLoopDelay?: number;
  logger?: boolean;
}

const SERVER_OPTIONS = [
  'dataDir',
  'modelsDir',
  'tokens',
  'concurrency',
  'jobThreads',
  'checkpointEvery',
  'maxAdapters',
  'maxOpen',
  'maxFileBytes',
  'bodyLimit',
  'maxEventLoopDelay',
  'logger',
];

/** An error in OpenAI's shape, with its HTTP status; never a stack trace. */
class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly param: string | null = null,
  ) {
    super(message);
  }
}

declare module 'fastify' {
  interface FastifyRequest {
    tenant: string;
  }
}

const Id = (prefix: string) => Type.String({ pattern: `^${prefix}-[A-Za-z0-9]{1,64}$` });
const JobParams = Type.Object({ id: Id('ftjob') }, { additionalProperties: false });
const Paging = { after: Type.Optional(Type.String({ maxLength: 100 })), limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 100 })) };
// Values are checked against each flag's kind by the job runner: a union here would let the validator coerce true to 1.
const Hyperparameters = Type.Record(Type.String({ pattern: '^[a-z][a-z0-9_]*$' }), Type.Unknown());
const CreateJob = Type.Object(
  {
    model: Type.String({ minLength: 1, maxLength: 200 }),
    training_file: Id('file'),
    validation_file: Type.Optional(Type.Union([Id('file'), Type.Null()])),
    method: Type.Optional(
      Type.Object(
        { type: Type.String({ minLength: 1, maxLength: 40 }), hyperparameters: Type.Optional(Hyperparameters) },
        { additionalProperties: false },
      ),
    ),
    suffix: Type.Optional(Type.Union([Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$' }), Type.Null()])),
    seed: Type.Optional(Type.Union([Type.Integer({ minimum: 0, maximum: 2147483647 }), Type.Null()])),
  },
  { additionalProperties: false },
);
const Completion = Type.Object(
  {
    model: Type.String({ minLength: 1, maxLength: 300 }),
    prompt: Type.Union([Type.String(), Type.Array(Type.String(), { minItems: 1, maxItems: 64 })]),
    max_tokens: Type.Optional(Type.Integer({ minimum: 1, maximum: 4096 })),
    temperature: Type.Optional(Type.Number({ minimum: 0, maximum: 2 })),
    top_p: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 1 })),
    seed: Type.Optional(Type.Integer({ minimum: 0, maximum: 2147483647 })),
    stop: Type.Optional(
      Type.Union([Type.String({ minLength: 1 }), Type.Array(Type.String({ minLength: 1 }), { maxItems: 4 }), Type.Null()]),
    ),
    stream: Type.Optional(Type.Boolean()),
    user: Type.Optional(Type.String()),
  },
  { additionalProperties: false },
);
const Embedding = Type.Object(
  {
    model: Type.String({ minLength: 1, maxLength: 300 }),
    input: Type.Union([Type.String({ minLength: 1 }), Type.Array(Type.String({ minLength: 1 }), { minItems: 1, maxItems: 256 })]),
    encoding_format: Type.Optional(Type.Literal('float')),
    user: Type.Optional(Type.String()),
  },
  { additionalProperties: false },
);

function jobObject(j: JobRecord) {
  return {
    object: 'fine_tuning.job',
    id: j.id,
    model: j.model,
    created_at: j.created_at,
    finished_at: j.finished_at,
    fine_tuned_model: j.fine_tuned_model,
    organization_id: j.tenant,
    status: j.status,
    training_file: j.training_file,
    validation_file: j.validation_file,
    method: j.method,
    hyperparameters: j.method.hyperparameters,
    suffix: j.suffix,
    seed: j.seed,
    error: j.error,
    result_files: [],
  };
}

function eventObject(e: EventRecord) {
  return {
    object: 'fine_tuning.job.event',
    id: `ftevent-${e.seq}`,
    created_at: e.created_at,
    level: e.level,
    type: e.type,
    message: e.message,
    data: e.data ?? {},
  };
}

function fileObject(f: FileRecord) {
  return {
    object: 'file',
    id: f.id,
    bytes: f.bytes,
    created_at: f.created_at,
    filename: f.filename,
    purpose: f.purpose,
    status: 'processed',
  };
}

/** Checks every line of an uploaded JSONL file is a JSON object; returns the row count. */
async function checkJsonl(file: string): Promise<number> {
  const text = await fs.promises.readFile(file, 'utf8');
  let rows = 0;
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line === '') continue;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch (e) {
      throw new HttpError(400, `file: line ${i + 1} is not JSON (${(e as Error).message})`, 'file');
    }
    if (!v || typeof v !== 'object' || Array.isArray(v)) throw new HttpError(400, `file: line ${i + 1} is not a JSON object`, 'file');
    rows++;
  }
  if (rows === 0) throw new HttpError(400, 'file: no rows', 'file');
  return rows;
}

/** Server-sent events on a hijacked reply: `data: {...}` chunks, then `data: [DONE]`. */
function sse(req: FastifyRequest, reply: FastifyReply) {
  reply.hijack();
  reply.raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
  return {
    send: (data: unknown, id?: string) => reply.raw.write(`${id ? `id: ${id}\n` : ''}data: ${JSON.stringify(data)}\n\n`),
    end: () => {
      if (!reply.raw.writableEnded) reply.raw.end('data: [DONE]\n\n');
    },
    closed: () => req.raw.destroyed || reply.raw.writableEnded,
  };
}

/** An AbortSignal that fires when the client goes away before its answer is sent. */
function abortOnClose(reply: FastifyReply): AbortSignal {
  const ac = new AbortController();
  reply.raw.on('close', () => {
    if (!reply.raw.writableFinished) ac.abort();
  });
  return ac.signal;
}

export async function createServer(options: ServerOptions): Promise<FastifyInstance> {
  for (const k of Object.keys(options))
    if (!SERVER_OPTIONS.includes(k))
      throw new TunekitError('E_ARG', `createServer: unknown option ${JSON.stringify(k)} (expected ${SERVER_OPTIONS.join(', ')})`);
  const dataDir = path.resolve(options.dataDir);
  for (const d of ['files', 'jobs', 'adapters']) fs.mkdirSync(path.join(dataDir, d), { recursive: true });
  const modelsDir = path.resolve(options.modelsDir ?? path.join(__dirname, '..', '..', 'models'));
  const store = new Store(path.join(dataDir, 'tunekit.db'));
  const subfolders = (dir: string, marker: string) => {
    const m = new Map<string, string>();
    if (fs.existsSync(dir))
      for (const name of fs.readdirSync(dir).sort()) if (fs.existsSync(path.join(dir, name, marker))) m.set(name, path.join(dir, name));
    return m;
  };
  const bases = () => subfolders(modelsDir, 'config.json');
  const runner = new JobRunner({
    store,
    dataDir,
    modelDir: (name) => bases().get(name),
    concurrency: options.concurrency,
    checkpointEvery: options.checkpointEvery,
    jobThreads: options.jobThreads,
  });
  const inference = new Inference({
    bases,
    adapters: () => subfolders(path.join(dataDir, 'adapters'), 'adapter_config.json'),
    jobModel: (id) => {
      const job = store.jobByModel(id);
      if (!job || job.status !== 'succeeded') return undefined;
      const dir = runner.outDir(job.id);
      return { dir, base: job.model, adapter: fs.existsSync(path.join(dir, 'adapter_config.json')) };
    },
    maxAdapters: options.maxAdapters ?? 8,
    maxOpen: options.maxOpen ?? 64,
  });

  const app = Fastify({
    logger: options.logger ?? false,
    bodyLimit: options.bodyLimit ?? 2 ** 20,
    // Unknown fields are refused (a typo must not change a run), not dropped.
    ajv: { customOptions: { removeAdditional: false, allErrors: false } },
  }).withTypeProvider<TypeBoxTypeProvider>();
  app.decorateRequest('tenant', '');

  await app.register(underPressure, {
    maxEventLoopDelay: options.maxEventLoopDelay ?? 1000,
    retryAfter: 5,
    pressureHandler: (_req, reply) => {
      void reply
        .code(503)
        .header('retry-after', '5')
        .send({ error: { message: 'the server is overloaded; retry shortly', type: 'server_overloaded', param: null, code: null } });
    },
  });
  await app.register(multipart, { limits: { fileSize: options.maxFileBytes ?? 64 * 2 ** 20, files: 1, fields: 4 } });

  app.setErrorHandler(
    (err: Error & { statusCode?: number; validation?: unknown; validationContext?: string; code?: string }, _req, reply) => {
      let status = 500;
      let message = 'internal error';
      let param: string | null = null;
      if (err instanceof HttpError) [status, message, param] = [err.status, err.message, err.param];
      else if (err instanceof JobError) [status, message] = [400, err.message];
      else if (err instanceof InferenceError) [status, message] = [err.status, err.message];
      else if (err instanceof TunekitError) [status, message] = [400, err.message];
      else if (err.validation) {
        status = 400;
        message = `${err.validationContext ?? 'request'}${err.message.startsWith('/') ? '' : ' '}${err.message.replace(/^(body|querystring|params)\/?/, '')}`;
        param = (err.message.match(/^(?:body|querystring|params)\/([^ ]+)/)?.[1] ?? '').replace(/\//g, '.') || null;
      } else if (err.statusCode && err.statusCode < 500) [status, message] = [err.statusCode, err.message];
      else app.log.error(err);
      const type =
        status === 401
          ? 'authentication_error'
          : status === 403
            ? 'permission_error'
            : status === 404
              ? 'not_found'
              : status >= 500
                ? 'server_error'
                : 'invalid_request_error';
      void reply.code(status).send({ error: { message, type, param, code: null } });
    },
  );

  app.setNotFoundHandler((req, reply) => {
    void reply
      .code(404)
      .send({ error: { message: `no route ${req.method} ${req.url.split('?')[0]}`, type: 'not_found', param: null, code: null } });
  });

  const tokens = options.tokens;
  app.addHook('onRequest', async (req) => {
    if (!tokens) {
      req.tenant = 'default';
      return;
    }
    const m = /^Bearer (.+)$/.exec(req.headers.authorization ?? '');
    const tenant = m ? tokens[m[1]!] : undefined;
    if (tenant === undefined) throw new HttpError(401, 'missing or unknown bearer token (Authorization: Bearer <token>)');
    req.tenant = tenant;
  });

  /** The job, if it exists and the caller's tenant owns it. */
  const ownJob = (req: FastifyRequest, id: string): JobRecord => {
    const job = store.job(id);
    if (!job) throw new HttpError(404, `no fine-tuning job ${id}`, 'id');
    if (job.tenant !== req.tenant) throw new HttpError(403, `fine-tuning job ${id} belongs to another tenant`, 'id');
    return job;
  };
  const ownFile = (req: FastifyRequest, id: string, param: string): FileRecord => {
    const f = store.file(id);
    if (!f) throw new HttpError(404, `no file ${id}`, param);
    if (f.tenant !== req.tenant) throw new HttpError(403, `file ${id} belongs to another tenant`, param);
    return f;
  };
  /** A served model name the caller may use: a finished job's model must be its tenant's. */
  const usableModel = (req: FastifyRequest, model: string) => {
    if (model.startsWith('ft:')) {
      const job = store.jobByModel(model);
      if (job && job.tenant !== req.tenant) throw new HttpError(403, `model ${model} belongs to another tenant`, 'model');
    }
    return model;
  };

  // ---- files -------------------------------------------------------------------------------------------------------

  app.post('/v1/files', async (req, reply) => {
    if (!req.isMultipart()) throw new HttpError(400, 'expected multipart/form-data with fields purpose and file');
    const id = newId('file');
    const tmp = path.join(dataDir, 'files', `.${id}.part`);
    let purpose: string | undefined;
    let filename: string | undefined;
    try {
      for await (const part of req.parts()) {
        if (part.type === 'field') {
          if (part.fieldname !== 'purpose')
            throw new HttpError(400, `unknown form field ${JSON.stringify(part.fieldname)}`, part.fieldname);
          purpose = String(part.value);
        } else {
          if (part.fieldname !== 'file') throw new HttpError(400, `the upload must be the form field "file"`, part.fieldname);
          filename = path.basename(part.filename || 'upload.jsonl');
          await pipeline(part.file, fs.createWriteStream(tmp));
          if (part.file.truncated)
            throw new HttpError(413, `file: larger than the ${options.maxFileBytes ?? 64 * 2 ** 20} bytes this server accepts`, 'file');
        }
      }
      if (purpose !== 'fine-tune') throw new HttpError(400, `purpose: expected "fine-tune", got ${JSON.stringify(purpose)}`, 'purpose');
      if (filename === undefined) throw new HttpError(400, 'file: missing', 'file');
      if (!/\.jsonl$/i.test(filename)) throw new HttpError(400, `file: ${filename} is not a .jsonl file`, 'file');
      const rows = await checkJsonl(tmp);
      const bytes = fs.statSync(tmp).size;
      // On disk before the database names it: an acknowledged upload survives a crash or a power cut.
      const fd = fs.openSync(tmp, 'r');
      try {
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
      fs.renameSync(tmp, runner.filePath(id));
      return reply.send(fileObject(store.addFile({ id, tenant: req.tenant, filename, purpose, bytes, rows })));
    } finally {
      fs.rmSync(tmp, { force: true });
    }
  });

  app.get('/v1/files', async (req) => ({ object: 'list', data: store.files(req.tenant).map(fileObject), has_more: false }));

  app.get('/v1/files/:id', { schema: { params: Type.Object({ id: Id('file') }) } }, async (req) =>
    fileObject(ownFile(req, req.params.id, 'id')),
  );

  // ---- fine-tuning jobs ----------------------------------------------------------------------------------------------

  app.post('/v1/fine_tuning/jobs', { schema: { body: CreateJob } }, async (req) => {
    const b = req.body as Static<typeof CreateJob>;
    ownFile(req, b.training_file, 'training_file');
    if (b.validation_file) ownFile(req, b.validation_file, 'validation_file');
    const job = runner.create({
      id: newId('ftjob'),
      tenant: req.tenant,
      model: b.model,
      training_file: b.training_file,
      validation_file: b.validation_file ?? null,
      method: { type: b.method?.type ?? 'full', hyperparameters: b.method?.hyperparameters ?? {} },
      suffix: b.suffix ?? null,
      seed: b.seed ?? crypto.randomInt(0, 2 ** 31 - 1),
    });
    return jobObject(job);
  });

  app.get('/v1/fine_tuning/jobs', { schema: { querystring: Type.Object(Paging, { additionalProperties: false }) } }, async (req) => {
    const q = req.query as { after?: string; limit?: number };
    const page = store.jobs(req.tenant, q.limit ?? 20, q.after);
    return { object: 'list', data: page.data.map(jobObject), has_more: page.has_more };
  });

  app.get('/v1/fine_tuning/jobs/:id', { schema: { params: JobParams } }, async (req) => jobObject(ownJob(req, req.params.id)));

  app.post('/v1/fine_tuning/jobs/:id/cancel', { schema: { params: JobParams } }, async (req) => {
    ownJob(req, req.params.id);
    return jobObject(runner.cancel(req.params.id));
  });

  app.get(
    '/v1/fine_tuning/jobs/:id/events',
    {
      schema: {
        params: JobParams,
        querystring: Type.Object({ ...Paging, stream: Type.Optional(Type.Boolean()) }, { additionalProperties: false }),
      },
    },
    async (req, reply) => {
      const job = ownJob(req, req.params.id);
      const q = req.query as { after?: string; limit?: number; stream?: boolean };
      const cursor = (s: string | undefined, param: string) => {
        if (s === undefined) return undefined;
        const m = /^ftevent-(\d+)$/.exec(s);
        if (!m) throw new HttpError(400, `${param}: expected an event id (ftevent-N), got ${JSON.stringify(s)}`, param);
        return Number(m[1]);
      };
      const streaming = q.stream || (req.headers.accept ?? '').includes('text/event-stream');
      if (!streaming) {
        // OpenAI's list: newest first, `after` pages towards older events.
        const limit = q.limit ?? 20;
        const rows = store.events(job.id, { beforeSeq: cursor(q.after, 'after'), limit: limit + 1, order: 'desc' });
        return { object: 'list', data: rows.slice(0, limit).map(eventObject), has_more: rows.length > limit };
      }
      // The stream: every event after Last-Event-ID (or `after`), oldest first, then live ones until the job ends.
      let last = cursor((req.headers['last-event-id'] as string | undefined) ?? q.after, 'after') ?? 0;
      const out = sse(req, reply);
      // Every change is stored before it is announced, so each announcement sends what the store holds past `last`.
      let onEvent: (e: EventRecord) => void = () => undefined;
      await new Promise<void>((resolve) => {
        const flush = () => {
          if (out.closed()) return resolve();
          for (const e of store.events(job.id, { afterSeq: last, limit: 10_000, order: 'asc' })) {
            out.send(eventObject(e), `ftevent-${e.seq}`);
            last = e.seq;
          }
          if (FINISHED.includes(store.job(job.id)!.status)) resolve();
        };
        onEvent = (e) => {
          if (e.job_id === job.id) flush();
        };
        runner.events.on('event', onEvent);
        reply.raw.on('close', () => resolve());
        flush();
      });
      runner.events.off('event', onEvent);
      out.end();
    },
  );

  app.get('/v1/fine_tuning/jobs/:id/checkpoints', { schema: { params: JobParams } }, async (req) => {
    const job = ownJob(req, req.params.id);
    const metricsAt = new Map(
      store
        .events(job.id, { limit: 100_000, order: 'asc' })
        .filter((e) => e.type === 'metrics')
        .map((e) => [e.data!.step as number, e.data!]),
    );
    const data = runner.checkpoints(job.id).map((c) => ({
      object: 'fine_tuning.job.checkpoint',
      id: `ftckpt-${job.id.slice('ftjob-'.length)}-${c.step}`,
      created_at: c.createdAt,
      fine_tuning_job_id: job.id,
      step_number: c.step,
      metrics: metricsAt.get(c.step) ?? {},
    }));
    return { object: 'list', data, has_more: false };
  });

  // ---- inference -----------------------------------------------------------------------------------------------------

  // Not OpenAI's: what a load balancer or an operator asks.
  app.get('/health', async () => ({
    status: 'ok',
    ...inference.stats(),
    jobs: { queued: store.jobsWithStatus('queued').length, running: store.jobsWithStatus('running').length },
  }));

  app.get('/v1/models', async (req) => {
    const own = store.jobs(req.tenant, 100).data.filter((j) => j.status === 'succeeded' && j.fine_tuned_model);
    const ids = [...inference.models(), ...own.map((j) => j.fine_tuned_model!)];
    return {
      object: 'list',
      data: ids.map((id) => ({ id, object: 'model', created: 0, owned_by: id.startsWith('ft:') ? req.tenant : 'tunekit' })),
    };
  });

  app.post('/v1/completions', { schema: { body: Completion } }, async (req, reply) => {
    const b = req.body as Static<typeof Completion>;
    const model = usableModel(req, b.model);
    inference.resolve(model); // a 404 before any stream starts
    const prompts = typeof b.prompt === 'string' ? [b.prompt] : b.prompt;
    const stop = b.stop == null ? [] : typeof b.stop === 'string' ? [b.stop] : b.stop;
    const settings = (i: number) => ({
      maxTokens: b.max_tokens ?? 16,
      temperature: b.temperature ?? 1,
      topP: b.top_p ?? 1,
      seed: (b.seed ?? crypto.randomInt(0, 2 ** 31 - 1)) + i,
      stop,
    });
    const id = `cmpl-${crypto.randomBytes(12).toString('hex')}`;
    const created = Math.floor(Date.now() / 1000);
    const signal = abortOnClose(reply);
    const chunk = (choices: unknown[]) => ({ id, object: 'text_completion', created, model, choices });
    if (b.stream) {
      const out = sse(req, reply);
      try {
        await Promise.all(
          prompts.map(async (prompt, index) => {
            const c = await inference.complete(
              model,
              { prompt, ...settings(index) },
              (text) => out.send(chunk([{ text, index, logprobs: null, finish_reason: null }])),
              signal,
            );
            out.send(chunk([{ text: '', index, logprobs: null, finish_reason: c.finishReason }]));
          }),
        );
      } catch (e) {
        const status = e instanceof InferenceError ? e.status : 500;
        out.send({
          error: {
            message: status === 500 ? 'internal error' : (e as Error).message,
            type: status === 500 ? 'server_error' : 'invalid_request_error',
            param: null,
            code: null,
          },
        });
      }
      out.end();
      return;
    }
    const done = await Promise.all(
      prompts.map((prompt, index) => inference.complete(model, { prompt, ...settings(index) }, () => undefined, signal)),
    );
    const usage = done.reduce(
      (u, c) => ({ prompt_tokens: u.prompt_tokens + c.promptTokens, completion_tokens: u.completion_tokens + c.completionTokens }),
      { prompt_tokens: 0, completion_tokens: 0 },
    );
    return {
      ...chunk(done.map((c, index) => ({ text: c.text, index, logprobs: null, finish_reason: c.finishReason }))),
      usage: { ...usage, total_tokens: usage.prompt_tokens + usage.completion_tokens },
    };
  });

  app.post('/v1/embeddings', { schema: { body: Embedding } }, async (req) => {
    const b = req.body as Static<typeof Embedding>;
    const model = usableModel(req, b.model);
    const inputs = typeof b.input === 'string' ? [b.input] : b.input;
    const { vectors, tokens: used } = await inference.embed(model, inputs);
    return {
      object: 'list',
      model,
      data: vectors.map((v, index) => ({ object: 'embedding', index, embedding: Array.from(v) })),
      usage: { prompt_tokens: used, total_tokens: used },
    };
  });

  app.addHook('onClose', async () => {
    await runner.stop();
    await inference.close();
    store.close();
  });
  runner.start();
  return app;
}
