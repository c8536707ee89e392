import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { ExecutionContext } from 'ava';
import { AdamW, SGD } from '../lib';
import type { BatchInput, ForwardOutput, Model } from '../lib';
import { readHeader } from '../lib/safetensors';

export const ROOT = path.resolve(__dirname, '..');
export const CACHE = path.join(ROOT, 'test', '.cache');
export const PYTHON = path.join(ROOT, '.venv', 'bin', 'python');
/** Parity tests run on this device; set TUNEKIT_TEST_DEVICE=cuda on a GPU machine. */
export const DEVICE = (process.env.TUNEKIT_TEST_DEVICE ?? 'cpu') as 'cpu' | 'cuda';

export function modelDir(name: string): string {
  const dir = path.join(CACHE, 'models', name);
  if (!fs.existsSync(dir)) throw new Error(`${dir} is missing: run .venv/bin/python test/reference/make_reference.py`);
  return dir;
}

export function reference<T = any>(name: string): T {
  return JSON.parse(fs.readFileSync(path.join(CACHE, 'ref', `${name}.json`), 'utf8'));
}

/** Largest absolute difference over the largest reference magnitude: one number per tensor, robust to near-zero entries. */
export function relError(got: ArrayLike<number>, want: ArrayLike<number>, keep?: (i: number) => boolean): number {
  if (got.length !== want.length) throw new Error(`length ${got.length} != ${want.length}`);
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < want.length; i++) {
    if (keep && !keep(i)) continue;
    diff = Math.max(diff, Math.abs(got[i] - want[i]));
    scale = Math.max(scale, Math.abs(want[i]));
  }
  if (!(scale > 0)) throw new Error('reference is all zero: the comparison would prove nothing');
  return diff / scale;
}

/** The folders tmpDir made in this test process, removed when it exits: left behind, every run of the suite added
 * thousands of them (the package test's alone holds 1 GB) to the system's temporary folder until the disk filled. */
const madeDirs: string[] = [];

export function tmpDir(prefix: string): string {
  if (madeDirs.length === 0) process.on('exit', () => madeDirs.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tunekit-${prefix}-`));
  madeDirs.push(dir);
  return dir;
}

/**
 * MKL's products depend on the memory alignment of their operands unless conditional numerical reproducibility is
 * on, so a reference run in a fresh process (fresh address layout) could land on another rounding: measured, about
 * one houlsby.py run in eight moved a gpt2 logit by 1.3e-5 relative. References run with it on.
 */
const REFERENCE_ENV = { ...process.env, MKL_CBWR: 'COMPATIBLE' };

const REFERENCE_DIR = path.join(ROOT, 'test', 'reference');

/**
 * The reference server of this test process (test/reference/zygote.py: the reference stack imported once, each script
 * run in a fork of it), started at the first reference run; null where it could not start, and scripts then run as
 * plain processes.
 */
type Zygote = { dir: string; pid: number };
let zygote: Zygote | null | undefined;
const sleeper = new Int32Array(new SharedArrayBuffer(4));
const sleep = (ms: number) => Atomics.wait(sleeper, 0, 0, ms);

function startZygote(): Zygote | null {
  const dir = tmpDir('zygote');
  // Its stdin is a pipe from this process: when this process ends, the pipe closes and the server exits.
  const server = spawn(PYTHON, [path.join(REFERENCE_DIR, 'zygote.py'), dir], { stdio: ['pipe', 'ignore', 'ignore'], env: REFERENCE_ENV });
  server.unref();
  (server.stdin as unknown as { unref(): void }).unref();
  for (const deadline = Date.now() + 120_000; !fs.existsSync(path.join(dir, 'ready')); sleep(50)) {
    // A server that cannot start (no python, an import error) has ended, or is a zombie, before it is ready.
    if (Date.now() > deadline || !running(server.pid)) {
      server.kill();
      fs.rmSync(dir, { recursive: true, force: true });
      return null;
    }
  }
  return { dir, pid: server.pid! };
}

/** Whether a process runs (not ended, nor a zombie waiting for this process to reap it). */
function running(pid: number | undefined): boolean {
  try {
    return !/^\d+ \(.*\) [ZX]/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

/** The script's exit status, run by the server; null if the server is gone before taking the request. */
function runOnZygote(server: Zygote, file: string, args: string[], stdout: string, stderr: string): number | null {
  const reply = path.join(server.dir, 'reply');
  fs.rmSync(reply, { force: true });
  // Non-blocking, so that a server that has died cannot leave this process waiting for a reader forever; between two
  // requests the server may not be reading yet (ENXIO), so it is retried while the server runs.
  let fd: number | undefined;
  while (fd === undefined) {
    try {
      fd = fs.openSync(path.join(server.dir, 'request'), fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
    } catch (e: any) {
      if (e.code !== 'ENXIO' || !running(server.pid)) return null;
      sleep(1);
    }
  }
  fs.writeSync(fd, JSON.stringify({ script: file, args, stdout, stderr }));
  fs.closeSync(fd);
  while (!fs.existsSync(reply)) {
    if (!running(server.pid)) throw new Error(`the reference server died running ${path.basename(file)}`);
    sleep(2);
  }
  return Number(fs.readFileSync(reply, 'utf8'));
}

/** Runs a reference script in .venv and returns its JSON output. */
export function python(script: string, args: string[]): any {
  const file = path.join(REFERENCE_DIR, script);
  // Telling a dead server from a live one reads /proc: Linux only.
  if (zygote === undefined) zygote = process.platform === 'linux' ? startZygote() : null;
  if (zygote) {
    const stdout = path.join(zygote.dir, 'stdout'),
      stderr = path.join(zygote.dir, 'stderr');
    const status = runOnZygote(zygote, file, args, stdout, stderr);
    if (status === 0) return lastJsonLine(fs.readFileSync(stdout, 'utf8'));
    if (status !== null) throw new Error(`${script} ${args.join(' ')} exited with ${status}:\n${fs.readFileSync(stderr, 'utf8')}`);
    zygote = null;
  }
  const out = execFileSync(PYTHON, [file, ...args], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    maxBuffer: 1 << 28,
    env: REFERENCE_ENV,
  });
  return lastJsonLine(out);
}

const lastJsonLine = (out: string) => JSON.parse(out.trim().split('\n').pop()!);

export const INPUT_IDS = [
  [5, 17, 33, 2, 90, 41, 7],
  [11, 3, 64, 29, 8, 0, 0],
  [0, 0, 0, 44, 12, 70, 9],
];
export const ATTENTION_MASK = [
  [1, 1, 1, 1, 1, 1, 1],
  [1, 1, 1, 1, 1, 0, 0],
  [0, 0, 0, 1, 1, 1, 1],
];
export const CLASS_LABELS = [0, 1, 1];
export const LM_LABELS = INPUT_IDS.map((r, i) => r.map((t, j) => (ATTENTION_MASK[i][j] ? t : -100)));

/** Every float32 tensor of a safetensors file, by name. */
export function readTensors(file: string): Map<string, Float32Array> {
  const buf = fs.readFileSync(file);
  const out = new Map<string, Float32Array>();
  for (const [name, e] of readHeader(file).tensors) {
    out.set(name, new Float32Array(buf.buffer.slice(buf.byteOffset + e.begin, buf.byteOffset + e.end)));
  }
  return out;
}

/** Reads every parameter back through savePretrained, the public way out of the core. */
export async function savedParams(model: Model): Promise<Map<string, Float32Array>> {
  const dir = tmpDir('params');
  await model.savePretrained(dir);
  const out = readTensors(path.join(dir, 'model.safetensors'));
  fs.rmSync(dir, { recursive: true, force: true });
  return out;
}

/** The active adapter's tensors under their PEFT keys, read back through saveAdapter (into `dir` when given). */
export async function adapterTensors(model: Model, dir = tmpDir('adapter-read')): Promise<Map<string, Float32Array>> {
  await model.saveAdapter(dir);
  return readTensors(path.join(dir, 'adapter_model.safetensors'));
}

/** The test batch with class labels or language-model labels. */
export const fullBatch = (classify: boolean) => ({
  inputIds: INPUT_IDS,
  attentionMask: ATTENTION_MASK,
  labels: classify ? CLASS_LABELS : LM_LABELS,
});

/** For logits of the test batch ([batch, labels] or [batch, seq, vocab]): whether flat index i is at a real (unpadded) position. */
export const realPosition = (shape: number[]) => (i: number) =>
  shape.length === 2 || ATTENTION_MASK[Math.floor(i / (shape[1] * shape[2]))][Math.floor(i / shape[2]) % shape[1]] === 1;

/** Three AdamW steps (lr 1e-2) of the model's active adapter on `batch`, then its eval-mode outputs on the same batch
 * and the adapter saved to a fresh folder: what the PEFT interop tests hand to PEFT. */
export async function trainThenSaveAdapter(model: Model, batch: BatchInput, prefix: string): Promise<{ mine: ForwardOutput; dir: string }> {
  const opt = new AdamW(model, { lr: 1e-2 });
  await model.train();
  for (let i = 0; i < 3; i++) {
    await model.backward(batch);
    await opt.step();
    await opt.zeroGrad();
  }
  await model.eval();
  const mine = await model.forward(batch);
  const dir = tmpDir(prefix);
  await model.saveAdapter(dir);
  return { mine, dir };
}

/**
 * One SGD step at lr 1 on `batch` moves each adapter tensor by minus its gradient: checks that only the adapter's own
 * parameters (`own`) got a gradient and that each tensor's step equals the reference gradient (`grads`, by PEFT key).
 * `before`: the adapter's tensors before the step (adapterTensors).
 */
export async function expectGradients(
  t: ExecutionContext,
  model: Model,
  batch: BatchInput,
  before: Map<string, Float32Array>,
  grads: Record<string, number[]>,
  own: RegExp,
): Promise<void> {
  const opt = new SGD(model, { lr: 1, weightDecay: 0 });
  await model.backward(batch);
  t.deepEqual(
    (await model.parametersWithGradients()).filter((n) => !own.test(n)),
    [],
    'the frozen base holds no gradient',
  );
  await opt.step();
  const after = await adapterTensors(model);
  t.deepEqual([...after.keys()].sort(), Object.keys(grads).sort());
  for (const [k, g] of Object.entries(grads)) {
    const step = after.get(k)!.map((v, i) => before.get(k)![i] - v);
    if (g.every((v) => v === 0))
      t.true(
        step.every((v) => v === 0),
        `${k}: zero gradient`,
      );
    else t.true(relError(step, g) < 1e-4, `${k}: gradient rel. error ${relError(step, g)}`);
  }
}
