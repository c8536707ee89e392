/**
 * Mutation fuzzing of the readers of untrusted files, shared by the suite (a short seeded run: test/fuzz.test.ts) and
 * `npm run fuzz` (long runs): safetensors files (the core's header reader, also under libFuzzer in native/fuzz),
 * config.json, adapter_config.json and tokenizer.json. The rule for every input: the reader returns, or throws a
 * TunekitError; anything else (a crash, a raw TypeError, a hang) is a finding.
 */
import fc from 'fast-check';
import fs from 'node:fs';
import path from 'node:path';
import { LoRA, Model, Tokenizer, TunekitError } from '../../lib';
import { readHeader } from '../../lib/safetensors';

export const SAFETENSORS_CORPUS = path.join(__dirname, 'safetensors');

const nasty = fc.oneof(
  fc.constantFrom(NaN, Infinity, -1, 0, 0.5, 1e9, 2 ** 31, 2 ** 53, -(2 ** 63), null, true, '', 'x', [], {}, [1, 2], { a: 1 }),
  fc.integer({ min: -5, max: 100 }),
  fc.string({ maxLength: 8 }),
);

/** A returned value or a TunekitError; anything else is rethrown as the finding it is. */
async function tolerated(f: () => Promise<unknown>): Promise<boolean> {
  try {
    await f();
  } catch (e) {
    if (!(e instanceof TunekitError)) {
      if (process.env.FUZZ_DEBUG) console.error(e);
      throw e;
    }
  }
  return true;
}

/** Byte-level mutations of a file: overwrite, insert, truncate, and the 8-byte length prefix set to any value. */
const byteEdit = fc.oneof(
  fc.record({ kind: fc.constant('set' as const), at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ maxLength: 16 }) }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('length' as const), value: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }) }),
);
type ByteEdit = typeof byteEdit extends fc.Arbitrary<infer T> ? T : never;

function applyBytes(src: Buffer, edits: ByteEdit[]): Buffer {
  let b = Buffer.from(src);
  for (const e of edits) {
    if (b.length === 0) break;
    if (e.kind === 'set') b[e.at % b.length] = e.byte;
    else if (e.kind === 'insert') b = Buffer.concat([b.subarray(0, e.at % b.length), Buffer.from(e.bytes), b.subarray(e.at % b.length)]);
    else if (e.kind === 'truncate') b = b.subarray(0, e.at % b.length);
    else if (b.length >= 8) b.writeBigUInt64LE(e.value, 0);
  }
  return b;
}

/** Every place in a JSON value where a mutation can land (objects' keys and arrays' slots), up to `limit`. */
function paths(v: unknown, limit: number, at: (string | number)[] = [], out: (string | number)[][] = []): (string | number)[][] {
  if (out.length >= limit || v === null || typeof v !== 'object') return out;
  const keys = Array.isArray(v) ? Array.from({ length: v.length }, (_, i) => i) : Object.keys(v);
  // A few entries of a long container (a vocabulary) stand for all of them.
  for (const k of keys.slice(0, 12)) {
    out.push([...at, k]);
    paths((v as Record<string | number, unknown>)[k], limit, [...at, k], out);
  }
  return out;
}

const jsonEdit = fc.record({
  where: fc.nat(),
  op: fc.constantFrom('set', 'delete', 'add', 'truncate-text'),
  value: nasty,
  key: fc.constantFrom('precison', 'extra', '__proto__', 'constructor'),
});
type JsonEdit = typeof jsonEdit extends fc.Arbitrary<infer T> ? T : never;

function applyJson(json: unknown, edits: JsonEdit[]): string {
  const copy = JSON.parse(JSON.stringify(json));
  let truncate: number | undefined;
  for (const e of edits) {
    if (e.op === 'truncate-text') {
      truncate = e.where;
      continue;
    }
    const all = paths(copy, 400);
    if (all.length === 0) break;
    const p = all[e.where % all.length];
    let parent = copy;
    for (const k of p.slice(0, -1)) parent = parent[k];
    const last = p[p.length - 1];
    if (e.op === 'set') parent[last] = e.value;
    else if (e.op === 'delete') Array.isArray(parent) ? parent.splice(Number(last), 1) : delete parent[last];
    else if (typeof parent[last] === 'object' && parent[last] !== null && !Array.isArray(parent[last])) parent[last][e.key] = e.value;
  }
  const text = JSON.stringify(copy);
  return truncate === undefined ? text : text.slice(0, truncate % (text.length + 1));
}

export interface FuzzSources {
  /** A model folder (config.json + model.safetensors) whose config.json is mutated. */
  model: string;
  /** A folder holding tokenizer.json. */
  tokenizer: string;
  /** Scratch space. */
  work: string;
}

/** Runs `runs` mutations of each reader, seeded; resolves when all held, rejects with the first finding. */
export async function fuzzReaders(src: FuzzSources, opts: { runs: number; seed: number; log?: (s: string) => void }) {
  const settings = { seed: opts.seed, numRuns: opts.runs, verbose: process.env.FUZZ_DEBUG ? 2 : 0 };
  const scratch = (name: string) => {
    const d = path.join(src.work, name);
    fs.rmSync(d, { recursive: true, force: true });
    fs.mkdirSync(d, { recursive: true });
    return d;
  };

  const seeds = fs.readdirSync(SAFETENSORS_CORPUS).map((f) => fs.readFileSync(path.join(SAFETENSORS_CORPUS, f)));
  const file = path.join(scratch('safetensors'), 'x.safetensors');
  await fc.assert(
    fc.asyncProperty(fc.nat({ max: seeds.length - 1 }), fc.array(byteEdit, { minLength: 1, maxLength: 4 }), async (i, edits) => {
      fs.writeFileSync(file, applyBytes(seeds[i], edits));
      return tolerated(async () => readHeader(file));
    }),
    settings,
  );
  opts.log?.(`safetensors: ${opts.runs} mutated files`);

  const config = JSON.parse(fs.readFileSync(path.join(src.model, 'config.json'), 'utf8'));
  const modelDir = scratch('model');
  fs.copyFileSync(path.join(src.model, 'model.safetensors'), path.join(modelDir, 'model.safetensors'));
  await fc.assert(
    fc.asyncProperty(fc.array(jsonEdit, { minLength: 1, maxLength: 3 }), async (edits) => {
      fs.writeFileSync(path.join(modelDir, 'config.json'), applyJson(config, edits));
      return tolerated(async () => (await Model.fromPretrained(modelDir)).dispose());
    }),
    settings,
  );
  opts.log?.(`config.json: ${opts.runs} mutated configs`);

  const base = await Model.fromPretrained(src.model);
  await new LoRA({ r: 2 }).apply(base);
  const adapterDir = scratch('adapter');
  await base.saveAdapter(adapterDir);
  base.dispose();
  const adapterConfig = JSON.parse(fs.readFileSync(path.join(adapterDir, 'adapter_config.json'), 'utf8'));
  const host = await Model.fromPretrained(src.model);
  let n = 0;
  await fc.assert(
    fc.asyncProperty(fc.array(jsonEdit, { minLength: 1, maxLength: 3 }), async (edits) => {
      fs.writeFileSync(path.join(adapterDir, 'adapter_config.json'), applyJson(adapterConfig, edits));
      const name = `a${n++}`;
      return tolerated(async () => {
        await host.loadAdapter(adapterDir, { name });
        await host.deleteAdapter(name);
      });
    }),
    settings,
  );
  host.dispose();
  opts.log?.(`adapter_config.json: ${opts.runs} mutated configs`);

  const tokJson = JSON.parse(fs.readFileSync(path.join(src.tokenizer, 'tokenizer.json'), 'utf8'));
  const tokDir = scratch('tokenizer');
  await fc.assert(
    fc.asyncProperty(fc.array(jsonEdit, { minLength: 1, maxLength: 3 }), async (edits) => {
      fs.writeFileSync(path.join(tokDir, 'tokenizer.json'), applyJson(tokJson, edits));
      return tolerated(async () => (await Tokenizer.fromPretrained(tokDir)).encode('a short test, with punctuation!'));
    }),
    settings,
  );
  opts.log?.(`tokenizer.json: ${opts.runs} mutated tokenizers`);
}
