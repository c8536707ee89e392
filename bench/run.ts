/**
 * npm run bench [-- --quick | --smoke] [--workloads a,b]
 *
 * tunekit against transformers 5.17 + peft 0.21 on the same torch, workload by workload: the same config, the same
 * random weights (written once by Python, loaded by both), the same batch, in separate processes run A B A B, warm-up
 * steps excluded. Before any time is compared, the first-step losses (or logits) of the two sides must agree.
 * Writes bench/results/latest.json and latest.md.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { defaultTask, familyOf, HFConfig, toSpec } from '../lib/families';
import { addon } from '../lib/native';
import { scriptFlags } from '../scripts/flags';
import { median } from './stats';

const ROOT = path.resolve(__dirname, '..');
const PY = path.join(ROOT, '.venv', 'bin', 'python');
const ALL = JSON.parse(fs.readFileSync(path.join(__dirname, 'workloads.json'), 'utf8')) as Record<string, Workload>;
const flags = scriptFlags('bench', {
  smoke: { type: 'boolean' },
  quick: { type: 'boolean' },
  workloads: { type: 'string' },
  out: { type: 'string' },
});
const smoke = Boolean(flags.smoke);
const quick = Boolean(flags.quick);
const argOf = (n: 'workloads' | 'out') => flags[n] as string | undefined;
const names = argOf('workloads')?.split(',') ?? (smoke ? ['smoke-gpt2'] : Object.keys(ALL).filter((k) => k !== 'smoke-gpt2'));
const rounds = smoke ? 1 : quick ? 2 : 3;
const outDir = argOf('out') ?? path.join(__dirname, 'results');

interface Workload {
  kind: 'train' | 'forward' | 'generate' | 'ppo' | 'grpo';
  base?: string;
  batch: number;
  seq: number;
  classify?: boolean;
  /** A masked LM's workload: this fraction of positions carries a target (-100 elsewhere), as BERT's 15%. */
  mask?: number;
  new_tokens?: number;
  ppo_epochs?: number;
  generations?: number;
  config?: Record<string, unknown>;
  lora?: { r: number; alpha: number; target_modules: string[] };
  /** Both sides in bfloat16: 'bf16-mixed' (tunekit's precision; Python's torch.autocast), 'bf16-true' (bf16 weights). */
  precision?: 'bf16-mixed' | 'bf16-true';
}
interface Side {
  side: string;
  first: unknown;
  times: number[];
  threads: number;
  torch: string;
  peakRssMiB: number;
  params: number;
}

const quantile = (xs: number[], q: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))];

function plan(w: Workload): { steps: number; warmup: number } {
  if (smoke) return { steps: 2, warmup: 1 };
  if (w.kind === 'generate') return { steps: quick ? 1 : 2, warmup: 1 };
  if (w.kind === 'forward') return { steps: quick ? 20 : 50, warmup: 5 };
  if (w.kind === 'ppo' || w.kind === 'grpo') return { steps: quick ? 2 : 4, warmup: 1 };
  return { steps: quick ? 5 : 10, warmup: 2 };
}

function json(cmd: string, args: string[]): Side {
  const r = spawnSync(cmd, args, { cwd: ROOT, encoding: 'utf8', maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`${cmd} ${args[1] ?? ''} failed: ${r.stderr.trim().split('\n').slice(-3).join(' | ')}`);
  const line = r.stdout
    .trim()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .pop();
  if (!line) throw new Error(`no result from ${cmd}`);
  return JSON.parse(line);
}

/** The weights and batch, written once by transformers from a seed, reused while the config is unchanged. */
function prepare(name: string, w: Workload): string {
  const baseName = w.base ?? name;
  const base = { ...ALL[baseName], batch: Math.max(w.batch, ALL[baseName].batch), seq: Math.max(w.seq, ALL[baseName].seq) };
  const key = crypto.createHash('sha256').update(JSON.stringify(base)).digest('hex').slice(0, 12);
  const dir = path.join(__dirname, '.cache', `${baseName}-${key}`);
  if (!fs.existsSync(path.join(dir, 'batch.json'))) {
    execFileSync(PY, [path.join(__dirname, 'python_side.py'), 'prepare', JSON.stringify(base), dir, '1234'], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
  }
  return dir;
}

/**
 * The same first step on both sides, or the benchmark stops: timing two different computations proves nothing. In
 * bfloat16 (8 significant bits) the sides agree to bf16 rounding, 1e-2, rather than float32's 1e-4.
 */
function agree(w: Workload, a: unknown, b: unknown): { ok: boolean; detail: string } {
  const tol = w.precision ? 1e-2 : 1e-4;
  if (w.kind === 'train') {
    const rel = Math.abs((a as number) - (b as number)) / Math.abs(b as number);
    return {
      ok: rel < tol,
      detail: `first-step loss ${(a as number).toFixed(6)} vs ${(b as number).toFixed(6)} (rel. ${rel.toExponential(1)})`,
    };
  }
  if (w.kind === 'forward') {
    const x = a as number[];
    const y = b as number[];
    const rel = Math.max(...x.map((v, i) => Math.abs(v - y[i]))) / Math.max(...y.map(Math.abs));
    return { ok: rel < tol, detail: `last-position logits rel. ${rel.toExponential(1)}` };
  }
  if (w.kind === 'grpo') {
    const rel = Math.abs((a as number) - (b as number)) / Math.abs(b as number);
    return {
      ok: rel < tol,
      detail: `fixed completion log-probability ${(a as number).toFixed(4)} vs ${(b as number).toFixed(4)} (rel. ${rel.toExponential(1)})`,
    };
  }
  if (w.kind === 'ppo') {
    const rel = Math.abs((a as number) - (b as number)) / Math.abs(b as number);
    return {
      ok: rel < tol,
      detail: `check step's entropy ${(a as number).toFixed(5)} vs ${(b as number).toFixed(5)} (rel. ${rel.toExponential(1)})`,
    };
  }
  const same = JSON.stringify(a) === JSON.stringify(b);
  // Greedy decoding on random weights can flip a near-tie by rounding; report it, time anyway.
  return { ok: true, detail: same ? 'greedy tokens identical' : 'greedy tokens differ (near-tie on random weights)' };
}

/** FLOPs per step counted as 6 x N x tokens (+ attention 12 x L x d x T x tokens), N = parameters in matmuls. */
function modelFlops(name: string, w: Workload, params: number): number {
  const c = (ALL[w.base ?? name].config ?? {}) as HFConfig;
  const family = familyOf(c, name);
  const task = defaultTask(family, c);
  const s = toSpec(family, task, c, name, { numLabels: 2, device: 'cpu', dtype: 'float32', initSeed: 0 });
  const [d, L] = [s.hiddenSize, s.numLayers];
  // Lookup tables are not matmuls: position and token-type tables never (rotary positions have none); the token
  // table only when it is not also the LM head.
  const tokenTableIsHead = s.tieWordEmbeddings && (task === 'causal-lm' || task === 'masked-lm');
  const lookups = ((s.ropeTheta > 0 ? 0 : s.maxPositions) + s.typeVocabSize + (tokenTableIsHead ? 0 : s.vocabSize)) * d;
  const n = params - lookups;
  const tokens = w.batch * w.seq;
  // LoRA's useful work: forward (2N) and the input gradients (2N); frozen weights need no weight gradients.
  const perToken = (w.lora ? 4 : 6) * n + 12 * L * d * w.seq;
  return perToken * tokens;
}

async function main() {
  if (!fs.existsSync(PY)) throw new Error(`${PY} is missing: run npm install first`);
  // This shared machine's matmul throughput drifts by tens of percent within minutes, so the ceiling is the best of
  // several measurements spread over the run (three now, one after each workload), and MFU uses the final figure.
  const ceilings: number[] = [];
  const bf16Ceilings: number[] = [];
  const measureCeiling = async (times: number) => {
    for (let i = 0; i < times; i++) {
      ceilings.push(await addon.benchMatmul(smoke ? 256 : 2048, smoke ? 2 : 10, 'float32'));
      bf16Ceilings.push(await addon.benchMatmul(smoke ? 256 : 2048, smoke ? 2 : 10, 'bfloat16'));
    }
  };
  await measureCeiling(smoke ? 1 : 3);
  const info = JSON.parse(addon.torchInfo());
  const results: Record<string, unknown>[] = [];
  for (const name of names) {
    const w = ALL[name];
    if (!w) throw new Error(`unknown workload ${name} (have: ${Object.keys(ALL).join(', ')})`);
    const dir = prepare(name, w);
    const { steps, warmup } = plan(w);
    const tk: Side[] = [];
    const py: Side[] = [];
    for (let r = 0; r < rounds; r++) {
      tk.push(
        json(process.execPath, [
          '--require',
          'tsx/cjs',
          path.join(__dirname, 'tunekit_side.ts'),
          JSON.stringify(w),
          dir,
          String(steps),
          String(warmup),
        ]),
      );
      py.push(json(PY, [path.join(__dirname, 'python_side.py'), 'run', JSON.stringify(w), dir, String(steps), String(warmup)]));
      if (r === 0) {
        const check = agree(w, tk[0].first, py[0].first);
        if (!check.ok) throw new Error(`${name}: the two sides disagree before timing (${check.detail}); aborting`);
        console.error(`${name}: ${check.detail}`);
      }
    }
    const tkTimes = tk.flatMap((s) => s.times);
    const pyTimes = py.flatMap((s) => s.times);
    const tkMed = median(tkTimes);
    const pyMed = median(pyTimes);
    const row: Record<string, unknown> = {
      workload: name,
      kind: w.kind,
      ...(w.precision ? { precision: w.precision } : {}),
      batch: w.batch,
      seq: w.seq,
      params: tk[0].params,
      tunekit: {
        median_s: tkMed,
        p10_s: quantile(tkTimes, 0.1),
        p90_s: quantile(tkTimes, 0.9),
        samples: tkTimes.length,
        peakRssMiB: Math.max(...tk.map((s) => s.peakRssMiB)),
      },
      python: {
        median_s: pyMed,
        p10_s: quantile(pyTimes, 0.1),
        p90_s: quantile(pyTimes, 0.9),
        samples: pyTimes.length,
        peakRssMiB: Math.max(...py.map((s) => s.peakRssMiB)),
      },
      ratio_python_over_tunekit: pyMed / tkMed,
      check: agree(w, tk[0].first, py[0].first).detail,
    };
    if (w.kind === 'train') row.model_flops_per_step = modelFlops(name, w, Number(tk[0].params));
    if (w.kind === 'generate') {
      row.tokens_per_s_tunekit = (w.batch * (w.new_tokens ?? 0)) / tkMed;
      row.tokens_per_s_python = (w.batch * (w.new_tokens ?? 0)) / pyMed;
    }
    results.push(row);
    if (!smoke) await measureCeiling(1);
    console.error(
      `${name}: tunekit ${(tkMed * 1000).toFixed(1)} ms, python ${(pyMed * 1000).toFixed(1)} ms, ratio ${(pyMed / tkMed).toFixed(2)}`,
    );
  }
  const ceiling = Math.max(...ceilings);
  const bf16Ceiling = Math.max(...bf16Ceilings);
  const tkSeconds = (r: Record<string, unknown>) => (r.tunekit as { median_s: number }).median_s;
  for (const r of results) {
    const flops = r.model_flops_per_step as number | undefined;
    if (!flops) continue;
    // Each row against the ceiling of the dtype its products run in.
    const c = r.precision ? bf16Ceiling : ceiling;
    r.mfu_tunekit = flops / tkSeconds(r) / 1e9 / c;
    r.mfu_python = flops / (r.python as { median_s: number }).median_s / 1e9 / c;
  }
  for (const r of results) {
    const w = ALL[r.workload as string];
    const suffix = w.precision ? '-bf16' : '';
    // LoRA as a fraction of tunekit's own full step on the same model, at the same precision.
    const full = results.find((x) => x.workload === `${w.base}${suffix}`);
    if (w.lora && full) r.lora_over_full_tunekit = tkSeconds(r) / tkSeconds(full);
    // bf16 against tunekit's own float32 run of the same workload.
    const f32 = results.find((x) => `${x.workload}-bf16` === r.workload);
    if (w.precision && f32) r.f32_over_bf16_tunekit = tkSeconds(f32) / tkSeconds(r);
  }
  let commit = 'unknown';
  try {
    commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim();
  } catch {
    /* not a checkout */
  }
  const report = {
    date: new Date().toISOString(),
    commit,
    machine: `${os.cpus().length} x ${os.cpus()[0]?.model ?? 'cpu'}`,
    memoryGiB: os.totalmem() / 2 ** 30,
    threads: info.threads,
    libtorch: info.torch,
    mode: smoke ? 'smoke' : quick ? 'quick' : 'full',
    rounds,
    matmul_gflops: ceiling,
    matmul_gflops_samples: ceilings,
    bf16_matmul_gflops: bf16Ceiling,
    bf16_matmul_gflops_samples: bf16Ceilings,
    flop_formula: 'training: (6 N + 12 L d T) per token, N = parameters used in matmuls (LoRA: 4 N)',
    results,
  };
  fs.mkdirSync(outDir, { recursive: true });
  fs.writeFileSync(path.join(outDir, 'latest.json'), JSON.stringify(report, null, 2) + '\n');
  const md = table(report);
  fs.writeFileSync(path.join(outDir, 'latest.md'), md);
  console.log(md);
}

function table(r: {
  date: string;
  commit: string;
  machine: string;
  threads: number;
  libtorch: string;
  mode: string;
  matmul_gflops: number;
  bf16_matmul_gflops: number;
  results: Record<string, any>[];
}): string {
  const ms = (s: number) => (s * 1000).toFixed(s < 0.1 ? 2 : 1);
  const lines = r.results.map((x) => {
    const extra =
      x.kind === 'train'
        ? `MFU ${(100 * x.mfu_tunekit).toFixed(0)}% vs ${(100 * x.mfu_python).toFixed(0)}%${x.lora_over_full_tunekit ? `; ${x.lora_over_full_tunekit.toFixed(2)}x tunekit's full step` : ''}`
        : x.kind === 'generate'
          ? `${x.tokens_per_s_tunekit.toFixed(0)} vs ${x.tokens_per_s_python.toFixed(0)} tok/s`
          : '';
    const bf16 = x.precision
      ? `${x.precision}${x.f32_over_bf16_tunekit ? `, ${x.f32_over_bf16_tunekit.toFixed(2)}x tunekit's float32` : ''}; `
      : '';
    return `| ${x.workload} | ${ms(x.tunekit.median_s)} (${ms(x.tunekit.p10_s)}-${ms(x.tunekit.p90_s)}) | ${ms(x.python.median_s)} (${ms(x.python.p10_s)}-${ms(x.python.p90_s)}) | **${x.ratio_python_over_tunekit.toFixed(2)}** | ${x.tunekit.peakRssMiB.toFixed(0)} / ${x.python.peakRssMiB.toFixed(0)} | ${bf16}${extra} | ${x.check} |`;
  });
  return `Benchmark ${r.mode} run, ${r.date.slice(0, 16)}, commit ${r.commit}; ${r.machine}, ${r.threads} threads, libtorch ${r.libtorch}; matmul ceiling ${r.matmul_gflops.toFixed(0)} GFLOP/s float32, ${r.bf16_matmul_gflops.toFixed(0)} bfloat16 (MFU of bf16 rows against the latter).

| workload | tunekit ms (p10-p90) | Python ms (p10-p90) | Python / tunekit | peak RSS MiB tunekit / Python | notes | same first step |
|---|---|---|---|---|---|---|
${lines.join('\n')}
`;
}

main().catch((e) => {
  console.error(`bench: ${e instanceof Error ? e.message : String(e)}`);
  process.exit(1);
});
