/**
 * Completions and embeddings for the server: base models loaded on demand, their adapters kept in a least-recently
 * used set per base, and the open requests of a base decoded together, one token each per step.
 */
import path from 'node:path';
import { DecodeSession, Model } from '../model';
import { mulberry32 } from '../random';
import { readJsonFile } from '../safetensors';
import { Tokenizer } from '../tokenizer';

/** Where a served model name leads: a model folder, and an adapter folder over it. */
export interface Resolved {
  /** The name clients use. */
  id: string;
  baseDir: string;
  adapterDir?: string;
}

export interface CompletionRequest {
  prompt: string;
  maxTokens: number;
  temperature: number;
  topP: number;
  seed: number;
  stop: string[];
}

export interface Completion {
  text: string;
  finishReason: 'stop' | 'length';
  promptTokens: number;
  completionTokens: number;
}

/** A request the inference side refuses: `status` says how (400, 404, 503). */
export class InferenceError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

interface Sequence {
  adapter: string | null;
  session?: DecodeSession;
  /** The tokens the next step feeds: the prompt at first, then the last token drawn. */
  pending: number[];
  generated: number[];
  promptTokens: number;
  req: CompletionRequest;
  text: string;
  rand: () => number;
  onText(delta: string): void;
  signal?: AbortSignal;
  resolve(c: Completion): void;
  reject(e: Error): void;
}

/** The next token from one row of logits: greedy at temperature 0, else sampled within the top-p mass. */
export function sampleToken(logits: Float32Array, temperature: number, topP: number, rand: () => number): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
  if (temperature === 0) return best;
  const p = new Float64Array(logits.length);
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += p[i] = Math.exp((logits[i]! - logits[best]!) / temperature);
  let order: number[] = [];
  let mass = 0;
  if (topP < 1) {
    // The smallest set of most likely tokens whose probability reaches top_p (the most likely one always).
    const sorted = Array.from(p.keys()).sort((a, b) => p[b]! - p[a]!);
    for (const i of sorted) {
      if (mass >= topP * sum) break;
      order.push(i);
      mass += p[i]!;
    }
  } else {
    order = Array.from(p.keys());
    mass = sum;
  }
  let r = rand() * mass;
  for (const i of order) if ((r -= p[i]!) < 0) return i;
  return order[order.length - 1]!;
}

/**
 * One loaded base: its model, tokenizer, adapters (in least-recently-used order) and open sequences, which decode
 * together (continuous batching): every step advances every open sequence by one token in one decodeStep, a new
 * request joins at the next step and a finished or aborted one leaves.
 */
class Served {
  readonly adapters = new Map<string, string>(); // adapter folder -> name on the model
  readonly open: Sequence[] = [];
  private looping = false;
  private nextName = 0;
  private turn: Promise<unknown> = Promise.resolve();

  constructor(
    readonly model: Model,
    readonly tokenizer: Tokenizer,
    readonly causal: boolean,
    private readonly maxAdapters: number,
    private readonly countToken: () => void,
  ) {}

  /** The adapter's name on the model, loading it (and dropping the least recently used idle one) when needed. */
  async adapter(dir: string | undefined): Promise<string | null> {
    if (!dir) return null;
    const known = this.adapters.get(dir);
    if (known !== undefined) {
      this.adapters.delete(dir);
      this.adapters.set(dir, known);
      return known;
    }
    const inUse = new Set(this.open.map((s) => s.adapter));
    for (const [d, name] of this.adapters) {
      if (this.adapters.size < this.maxAdapters) break;
      if (inUse.has(name)) continue;
      await this.model.deleteAdapter(name);
      this.adapters.delete(d);
    }
    const name = `served-${this.nextName++}`;
    await this.model.loadAdapter(dir, { name, activate: false });
    this.adapters.set(dir, name);
    return name;
  }

  /** Runs `fn` through `adapter` with no other call between choosing the adapter and computing (embeddings). */
  exclusive<T>(adapter: string | null, fn: () => Promise<T>): Promise<T> {
    const run = this.turn.then(async () => {
      await this.model.setAdapter(adapter);
      return fn();
    });
    this.turn = run.catch(() => undefined);
    return run;
  }

  submit(s: Sequence): void {
    this.open.push(s);
    if (!this.looping) void this.loop();
  }

  private async loop(): Promise<void> {
    this.looping = true;
    try {
      while (this.open.length > 0) {
        for (const s of [...this.open]) this.finished(s);
        const batch = [...this.open];
        if (batch.length === 0) continue;
        try {
          for (const s of batch) s.session ??= await this.model.openSession({ adapter: s.adapter });
          const logits = await this.model.decodeStep(
            batch.map((s) => s.session!),
            batch.map((s) => s.pending),
          );
          const vocab = logits.shape[1]!;
          batch.forEach((s, i) => this.advance(s, logits.data.subarray(i * vocab, (i + 1) * vocab)));
        } catch (e) {
          for (const s of batch) this.settle(s, () => s.reject(e as Error));
        }
      }
    } finally {
      this.looping = false;
    }
  }

  /** Ends a sequence that is aborted or out of budget before it takes a step; true when it ended. */
  private finished(s: Sequence): boolean {
    if (s.signal?.aborted) return this.finish(s, 'stop');
    if (s.generated.length >= s.req.maxTokens || s.promptTokens + s.generated.length >= this.model.dims.maxPositions)
      return this.finish(s, 'length');
    return false;
  }

  private advance(s: Sequence, logits: Float32Array): void {
    const next = sampleToken(logits, s.req.temperature, s.req.topP, s.rand);
    this.countToken();
    if (next === this.tokenizer.eosTokenId) return void this.finish(s, 'stop');
    s.generated.push(next);
    s.pending = [next];
    const text = this.tokenizer.decode(s.generated, { skipSpecialTokens: true });
    const stopAt = Math.min(...s.req.stop.map((x) => text.indexOf(x)).filter((i) => i >= 0));
    if (Number.isFinite(stopAt)) {
      if (stopAt > s.text.length) s.onText(text.slice(s.text.length, stopAt));
      s.text = text.slice(0, stopAt);
      return void this.finish(s, 'stop');
    }
    // A character split across tokens decodes to U+FFFD until its last byte arrives: hold it back until then.
    if (!text.endsWith('\ufffd') && text.length > s.text.length) {
      s.onText(text.slice(s.text.length));
      s.text = text;
    }
  }

  private finish(s: Sequence, reason: Completion['finishReason']): true {
    this.settle(s, () =>
      s.resolve({ text: s.text, finishReason: reason, promptTokens: s.promptTokens, completionTokens: s.generated.length }),
    );
    return true;
  }

  /** Takes a sequence out of the open set, frees its cache, and answers its request. */
  private settle(s: Sequence, answer: () => void): void {
    const i = this.open.indexOf(s);
    if (i < 0) return;
    this.open.splice(i, 1);
    s.session?.dispose();
    answer();
  }
}

export interface InferenceOptions {
  /** Folders of base models, by the name clients use. */
  bases(): Map<string, string>;
  /** Named adapters (a PEFT folder each; its adapter_config.json names the base it was trained on). */
  adapters(): Map<string, string>;
  /** A finished job's model: its output folder, and the base it was trained on. */
  jobModel(id: string): { dir: string; base: string; adapter: boolean } | undefined;
  maxAdapters: number;
  /** Open sequences over all bases beyond which completions are refused with 503. */
  maxOpen: number;
}

export class Inference {
  private readonly served = new Map<string, Promise<Served>>();

  constructor(private readonly o: InferenceOptions) {}

  /** Every name a client may use: bases, `base:adapter`, finished jobs' models. */
  models(): string[] {
    const bases = this.o.bases();
    const names = [...bases.keys()];
    for (const [name, dir] of this.o.adapters()) {
      const base = adapterBase(dir, bases);
      if (base) names.push(`${base}:${name}`);
    }
    return names;
  }

  resolve(id: string): Resolved {
    const bases = this.o.bases();
    if (id.startsWith('ft:')) {
      const job = this.o.jobModel(id);
      if (!job) throw new InferenceError(404, `model ${JSON.stringify(id)}: no finished job made it`);
      return job.adapter ? { id, baseDir: bases.get(job.base)!, adapterDir: job.dir } : { id, baseDir: job.dir };
    }
    const [base, adapter, ...rest] = id.split(':');
    const baseDir = bases.get(base!);
    if (!baseDir || rest.length > 0)
      throw new InferenceError(404, `model ${JSON.stringify(id)}: no such model (GET /v1/models lists them)`);
    if (adapter === undefined) return { id, baseDir };
    const adapterDir = this.o.adapters().get(adapter);
    if (!adapterDir) throw new InferenceError(404, `model ${JSON.stringify(id)}: no adapter named ${JSON.stringify(adapter)}`);
    return { id, baseDir, adapterDir };
  }

  private load(dir: string): Promise<Served> {
    let s = this.served.get(dir);
    if (!s) {
      s = (async () => {
        const config = readJsonFile(path.join(dir, 'config.json'));
        const causal = (config.architectures ?? []).some((a: string) => a.endsWith('ForCausalLM') || a.endsWith('LMHeadModel'));
        const model = await Model.fromPretrained(dir, { task: causal ? 'causal-lm' : 'feature-extraction' });
        return new Served(model, await Tokenizer.fromPretrained(dir), causal, this.o.maxAdapters, () => this.generated++);
      })();
      this.served.set(dir, s);
      s.catch(() => this.served.delete(dir));
    }
    return s;
  }

  private openNow = 0;
  private generated = 0;

  /** Requests decoding now, and tokens generated since the server started. */
  stats(): { decoding: number; generatedTokens: number } {
    return { decoding: this.openNow, generatedTokens: this.generated };
  }

  async complete(id: string, req: CompletionRequest, onText: (delta: string) => void, signal?: AbortSignal): Promise<Completion> {
    const r = this.resolve(id);
    if (this.openNow >= this.o.maxOpen)
      throw new InferenceError(503, `the server is decoding ${this.openNow} requests, its limit; retry shortly`);
    const s = await this.load(r.baseDir);
    if (!s.causal) throw new InferenceError(400, `model ${JSON.stringify(id)} is not a causal language model: it serves embeddings only`);
    const ids = s.tokenizer.encode(req.prompt);
    if (ids.length === 0) throw new InferenceError(400, 'prompt: empty after tokenisation');
    if (ids.length >= s.model.dims.maxPositions)
      throw new InferenceError(400, `prompt: ${ids.length} tokens leave no room in the model's context of ${s.model.dims.maxPositions}`);
    const adapter = await s.adapter(r.adapterDir).catch((e: Error) => {
      throw new InferenceError(400, `model ${JSON.stringify(id)}: its adapter does not load: ${e.message}`);
    });
    this.openNow++;
    try {
      return await new Promise<Completion>((resolve, reject) =>
        s.submit({
          adapter,
          pending: ids,
          generated: [],
          promptTokens: ids.length,
          req,
          text: '',
          rand: mulberry32(req.seed),
          onText,
          signal,
          resolve,
          reject,
        }),
      );
    } finally {
      this.openNow--;
    }
  }

  async embed(id: string, inputs: string[]): Promise<{ vectors: Float32Array[]; tokens: number }> {
    const r = this.resolve(id);
    const s = await this.load(r.baseDir);
    const name = await s.adapter(r.adapterDir);
    const rows = inputs.map((t) => s.tokenizer.encode(t).slice(0, s.model.dims.maxPositions));
    if (rows.some((x) => x.length === 0)) throw new InferenceError(400, 'input: a text is empty after tokenisation');
    const vectors: Float32Array[] = [];
    // One row per call: batching would pad, and a padded batch must not change a text's embedding.
    for (const ids of rows) vectors.push((await s.exclusive(name, () => s.model.embed({ inputIds: [ids] }))).data);
    return { vectors, tokens: rows.reduce((a, x) => a + x.length, 0) };
  }

  async close(): Promise<void> {
    for (const s of this.served.values()) (await s.catch(() => undefined))?.model.dispose();
    this.served.clear();
  }
}

/** The base an adapter folder was trained on, by the name of the matching base folder. */
export function adapterBase(dir: string, bases: Map<string, string>): string | undefined {
  try {
    const cfg = readJsonFile(path.join(dir, 'adapter_config.json'));
    const wanted = path.resolve(String(cfg.base_model_name_or_path ?? ''));
    for (const [name, d] of bases) if (path.resolve(d) === wanted || name === cfg.base_model_name_or_path) return name;
  } catch {
    return undefined;
  }
  return undefined;
}
