import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { launch, ProcessGroup, shardOf, Trainer, AdamW, Model } from '../lib';
import { freePort } from '../lib/launcher';
import type { LaunchOptions } from '../lib';
import { readTensors, relError, ROOT, tmpDir } from './helpers';
import { train, WorkerSpec } from './scripts/ddp-worker';

const WORKER = path.join(__dirname, 'scripts', 'ddp-worker.ts');
const NODE = [process.execPath, '--require', 'tsx/cjs', WORKER];
const CLI = path.join(ROOT, 'dist', 'cli', 'main.js');

/** Runs the workers quietly, keeping their stderr for the assertion messages. */
async function launchWorkers(o: Omit<LaunchOptions, 'log'>) {
  const lines: string[] = [];
  const result = await launch({ threadsPerWorker: 1, ...o, log: (l) => lines.push(l) });
  return { ...result, log: lines.join('\n') };
}

function weights(dir: string, step: number): Map<string, Float32Array> {
  return readTensors(path.join(dir, `checkpoint-${step}`, 'model.safetensors'));
}

/**
 * The worst relative error ||got - want|| / ||want|| over the tensors of two checkpoints. Entries `skip` names are left
 * out: GPT-2's key bias has a gradient that is zero in exact arithmetic (each query's softmax is unchanged by a shift
 * common to all its keys), so what it holds is float32 noise divided by Adam's eps, different in any two summation
 * orders, in DDP as in PyTorch's.
 */
function worstError(
  got: Map<string, Float32Array>,
  want: Map<string, Float32Array>,
  skip: (name: string, i: number) => boolean = () => false,
): { error: number; name: string } {
  let worst = { error: 0, name: '' };
  if ([...got.keys()].sort().join() !== [...want.keys()].sort().join()) throw new Error('the checkpoints hold different tensors');
  for (const [name, w] of want) {
    const g = got.get(name)!;
    let diff = 0;
    let norm = 0;
    for (let i = 0; i < w.length; i++) {
      if (skip(name, i)) continue;
      diff += (g[i] - w[i]) ** 2;
      norm += w[i] ** 2;
    }
    if (norm === 0) continue;
    const error = Math.sqrt(diff / norm);
    if (error > worst.error) worst = { error, name };
  }
  return worst;
}

/** The key third of every c_attn bias in the worker's gpt2 (n_embd 32): [q | k | v]. */
const keyBias = (name: string, i: number) => name.endsWith('attn.c_attn.bias') && i >= 32 && i < 64;

test('shardOf follows DistributedSampler: padded by repeating the start, every worldSize-th index', (t) => {
  t.deepEqual(shardOf([5, 3, 9, 1, 7], 0, 2), [5, 9, 7]);
  t.deepEqual(shardOf([5, 3, 9, 1, 7], 1, 2), [3, 1, 5]);
  t.deepEqual(shardOf([4, 2], 2, 3), [4]);
  t.deepEqual(shardOf([8, 6, 4], 0, 1), [8, 6, 4]);
});

test.serial('collectives across two processes: rendezvous, allreduce (sum, max, min), broadcast and barrier', async (t) => {
  const out = tmpDir('dist-coll');
  const masterPort = await freePort();
  // Each worker's stdout is its JSON result; they go to files so the two cannot interleave.
  const scripts = [0, 1].map((r) => path.join(out, `rank${r}.json`));
  const r = await launchWorkers({
    command: ['bash', '-c', `"$@" > ${out}/rank$RANK.json`, 'worker', ...NODE, 'collectives'],
    nprocPerNode: 2,
    masterPort,
  });
  t.true(r.ok, r.log);
  for (const [rank, file] of scripts.entries()) {
    const got = JSON.parse(fs.readFileSync(file, 'utf8'));
    t.deepEqual(got, { rank, worldSize: 2, sum: [3, 1.5], max: [2], min: [1], from0: { text: 'from rank 0', n: [1, 2, 3] } });
  }
});

// PyTorch's DDP test: the same model trained by 2 ranks at batch 8 each and by 1 process at batch 16 must agree.
// Averaged gradients differ from the single process's only by float32 summation order (~1e-7 relative). Adam's first
// update, lr * g / (|g| + eps), is +-lr in every entry whose gradient stands well above eps, whatever the rounding;
// only entries whose gradient is within rounding of zero can move differently (by up to lr), so the comparison is of
// whole tensors in the 2-norm, and how far they differ depends on how many such entries a summation order meets and
// how the later steps carry the difference on: measured, the worst tensor differs by 2.5e-6 to 1.2e-5 over 5 steps on
// an idle machine, and by 1.15e-4 in one run on a busy one (same code and data: a zero-initialised bias, whose small
// norm makes a few moved entries a large relative change).
// A rank's data missing changes the update of every entry instead: the control (batch 8 alone against 16) differs by
// 0.8-1.4. The bound is the geometric middle of the two, two orders of magnitude from each.
const DDP_BOUND = 1e-2;
for (const c of [
  {
    kind: 'lm',
    gradAccumulation: 2,
    steps: 5,
    what: 'full finetuning of a causal LM, batch 8 per rank against 16, 2 batches accumulated per step',
  },
  { kind: 'lora', gradAccumulation: 1, steps: 5, what: 'LoRA on a sequence classifier, batch 8 per rank against 16' },
  { kind: 'unused', gradAccumulation: 1, steps: 3, what: 'LoRA beside a trainable adapter no loss reaches: found, left unreduced' },
  { kind: 'dpo', gradAccumulation: 1, steps: 2, what: 'DPO of a LoRA policy on 24 pairs' },
  { kind: 'grpo', gradAccumulation: 1, steps: 3, what: "GRPO updates, one prompt's group per rank" },
  { kind: 'ppo', gradAccumulation: 1, steps: 2, what: 'PPO steps (2 epochs each), the same rollout on both ranks' },
] as const) {
  const steps = c.steps;
  test.serial(`DDP parity: 2 ranks equal 1 process on both ranks' data after each of ${steps} AdamW steps (${c.what})`, async (t) => {
    const single = tmpDir('ddp-single');
    const ddp = tmpDir('ddp-two');
    const spec = (out: string, batchSize: number): WorkerSpec => ({
      kind: c.kind,
      out,
      steps,
      batchSize,
      gradAccumulation: c.gradAccumulation,
    });
    await train(spec(single, 16), false);
    if (c.kind !== 'grpo' && c.kind !== 'ppo') {
      // RL updates here see the same samples at any batch size; elsewhere half the batch is half the data.
      const half = tmpDir('ddp-half');
      await train(spec(half, 8), false);
      t.true(
        worstError(weights(half, 1), weights(single, 1), keyBias).error > 0.1,
        "the control (one rank's data alone) is not told apart",
      );
    }
    const r = await launchWorkers({
      command: [...NODE, 'train', JSON.stringify(spec(ddp, 8))],
      nprocPerNode: 2,
      masterPort: await freePort(),
    });
    t.true(r.ok, r.log);
    for (let step = 1; step <= steps; step++) {
      const { error, name } = worstError(weights(ddp, step), weights(single, step), keyBias);
      t.true(error < DDP_BOUND, `step ${step}: ${name} differs by ${error.toExponential(2)}`);
    }
    // The weights moved: a run that trained nothing would also "agree".
    t.true(worstError(weights(single, steps), weights(single, 1)).error > 1e-3);
  });
}

test.serial('two nodes on the loopback address: two launchers with --nnodes 2 train as one group', async (t) => {
  const single = tmpDir('ddp-nodes-ref');
  const ddp = tmpDir('ddp-nodes');
  const spec = (out: string, batchSize: number): WorkerSpec => ({ kind: 'lora', out, steps: 3, batchSize, gradAccumulation: 1 });
  await train(spec(single, 16), false);
  const masterPort = await freePort();
  const [a, b] = await Promise.all(
    [0, 1].map((nodeRank) =>
      launchWorkers({ command: [...NODE, 'train', JSON.stringify(spec(ddp, 8))], nprocPerNode: 1, nnodes: 2, nodeRank, masterPort }),
    ),
  );
  t.true(a.ok && b.ok, `${a.log}\n${b.log}`);
  const { error, name } = worstError(weights(ddp, 3), weights(single, 3), keyBias);
  t.true(error < DDP_BOUND, `${name} differs by ${error.toExponential(2)}`);
});

test.serial(
  'a rank killed with SIGKILL: reported, and with maxRestarts 1 the group resumes to the weights of an uninterrupted run',
  async (t) => {
    const clean = tmpDir('ddp-clean');
    const faulty = tmpDir('ddp-kill');
    const spec = (out: string): WorkerSpec => ({ kind: 'lm', out, steps: 6, batchSize: 8, gradAccumulation: 1 });
    const ok = await launchWorkers({
      command: [...NODE, 'train', JSON.stringify(spec(clean))],
      nprocPerNode: 2,
      masterPort: await freePort(),
    });
    t.true(ok.ok, ok.log);
    const killed = { ...spec(faulty), fault: { rank: 1, step: 3, signal: 'SIGKILL' as const } };
    const noRestart = await launchWorkers({
      command: [...NODE, 'train', JSON.stringify(killed)],
      nprocPerNode: 2,
      masterPort: await freePort(),
    });
    t.false(noRestart.ok);
    t.is(noRestart.failure?.rank, 1);
    t.is(noRestart.failure?.signal, 'SIGKILL');
    t.regex(noRestart.log, /worker rank 1 \(local rank 1, pid \d+\) was killed by SIGKILL/);

    const resumedDir = tmpDir('ddp-restart');
    const restarted = await launchWorkers({
      command: [...NODE, 'train', JSON.stringify({ ...killed, out: resumedDir })],
      nprocPerNode: 2,
      masterPort: await freePort(),
      maxRestarts: 1,
    });
    t.true(restarted.ok, restarted.log);
    t.is(restarted.restarts, 1);
    t.regex(restarted.log, /restarting the group \(restart 1 of 1\)/);
    // Resumed from its last checkpoint, the run ends on the uninterrupted run's weights: the same arithmetic in the same
    // order, so only a thread-count difference could move a bit, and there is none (one thread per worker in both).
    const { error, name } = worstError(weights(resumedDir, 6), weights(clean, 6));
    t.true(error < 1e-6, `${name} differs by ${error.toExponential(2)}`);
  },
);

test.serial('a hung rank: the others fail within the timeout with an error naming their rank, and the launcher stops it', async (t) => {
  const spec: WorkerSpec = {
    kind: 'lm',
    out: tmpDir('ddp-hang'),
    steps: 6,
    batchSize: 8,
    gradAccumulation: 1,
    fault: { rank: 1, step: 2, signal: 'SIGSTOP' },
  };
  process.env.TUNEKIT_DIST_TIMEOUT = '3';
  try {
    const r = await launchWorkers({
      command: [...NODE, 'train', JSON.stringify(spec)],
      nprocPerNode: 2,
      masterPort: await freePort(),
      stopGraceMs: 500,
    });
    t.false(r.ok);
    t.is(r.failure?.rank, 0, r.log);
    t.regex(r.failure?.lastError ?? '', /rank 0 of 2: .* failed: .*collectives wait 3 s/s);
  } finally {
    delete process.env.TUNEKIT_DIST_TIMEOUT;
  }
});

test('bad input: options, ranks and commands are checked before anything starts', async (t) => {
  await t.throwsAsync(ProcessGroup.init({ rank: 2, worldSize: 2 }), { code: 'E_ARG', message: /rank/ } as any);
  await t.throwsAsync(ProcessGroup.init({ worldSize: 2, rank: 0, bogus: 1 } as any), { code: 'E_ARG', message: /bogus/ } as any);
  await t.throwsAsync(launch({ command: [], nprocPerNode: 2 }), { code: 'E_ARG', message: /command/ } as any);
  await t.throwsAsync(launch({ command: ['true'], nprocPerNode: 2, nnodes: 2, nodeRank: 2 }), {
    code: 'E_ARG',
    message: /nodeRank/,
  } as any);
  const model = await Model.fromConfig({ model_type: 'gpt2', vocab_size: 16, n_positions: 8, n_embd: 8, n_layer: 1, n_head: 2 });
  t.throws(() => new Trainer(model, { optimizer: new AdamW(model), distributed: 'yes' as any }), { code: 'E_ARG' } as any);
  t.throws(() => new Trainer(model, { optimizer: new AdamW(model), distributed: { bucketMb: 0 } }), {
    code: 'E_ARG',
    message: /bucketMb/,
  } as any);
  model.dispose();
});

test.serial('tunekit finetune --nproc 2: two workers train, rank 0 alone prints and writes --out', async (t) => {
  const out = path.join(tmpDir('ddp-cli'), 'run');
  const r = spawnSync(
    process.execPath,
    [CLI, 'finetune', '--nproc', '2', '--strategy', 'lora', '--max-steps', '4', '--epochs', '1', '--batch-size', '8'].concat([
      '--checkpoint-every',
      '2',
      '--out',
      out,
      '--quiet',
    ]),
    { encoding: 'utf8' },
  );
  t.is(r.status, 0, r.stderr);
  t.is(r.stdout.match(/trainable parameters/g)?.length, 1, r.stdout);
  const results = JSON.parse(fs.readFileSync(path.join(out, 'results.json'), 'utf8'));
  t.is(results.steps, 4);
  t.true(fs.existsSync(path.join(out, 'adapter_model.safetensors')));
  t.deepEqual(fs.readdirSync(path.join(out, 'checkpoints')).sort(), ['checkpoint-2', 'checkpoint-4', 'latest.json']);
  // Four metrics rows, written once (by rank 0).
  t.is(fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').length, 4);
});

test.serial("torchrun starts tunekit's workers too (its agent serves the store)", async (t) => {
  const torchrun = path.join(ROOT, '.venv', 'bin', 'torchrun');
  const out = tmpDir('ddp-torchrun');
  const r = spawnSync(
    torchrun,
    ['--no-python', '--nproc-per-node', '2', '--master-port', String(await freePort())].concat([
      'bash',
      '-c',
      `"$@" > ${out}/rank$RANK.json`,
      'worker',
      ...NODE,
      'collectives',
    ]),
    { encoding: 'utf8', env: { ...process.env, OMP_NUM_THREADS: '1' } },
  );
  t.is(r.status, 0, r.stderr);
  for (const rank of [0, 1]) t.like(JSON.parse(fs.readFileSync(path.join(out, `rank${rank}.json`), 'utf8')), { rank, sum: [3, 1.5] });
});
