/**
 * `npm run bench:ddp`: data parallelism on this machine's cores. The benchmark's GPT-2 training step (workloads.json's
 * train-gpt2, AdamW) at 16 x 128 tokens per step, as 1 process x T threads (batch 16) and as N processes x T/N
 * threads under DDP (batch 16 / N each), plus, inside the DDP run, the time an allreduce of all the gradients takes
 * alone and the step with gradient sync off (no_sync), from which the overlap follows:
 *   exposed communication = step(sync) - step(no_sync);  overlap = 1 - exposed / allreduce.
 *   npm run bench:ddp [-- --nproc 2 --steps 8 --out bench/results]
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { AdamW, launch, Model, ProcessGroup } from '../lib';
import { addon } from '../lib/native';
import { median } from './stats';

const WORKLOAD = JSON.parse(fs.readFileSync(path.join(__dirname, 'workloads.json'), 'utf8'))['train-gpt2'];
const GLOBAL_BATCH = 16;

function batchOf(rows: number, offset: number) {
  const inputIds = Array.from({ length: rows }, (_, i) =>
    Array.from({ length: WORKLOAD.seq }, (_, j) => (((offset + i) * 7919 + j * 104729) % (WORKLOAD.config.vocab_size - 1)) + 1),
  );
  return { inputIds, labels: inputIds };
}

/** Median seconds of `fn` over `steps` runs after `warmup`. */
async function timeSteps(fn: () => Promise<unknown>, steps: number, warmup: number): Promise<number> {
  const times: number[] = [];
  for (let i = 0; i < warmup + steps; i++) {
    const t = process.hrtime.bigint();
    await fn();
    if (i >= warmup) times.push(Number(process.hrtime.bigint() - t) / 1e9);
  }
  return median(times);
}

/** One process, or one rank of the DDP group: the step's median seconds, and for a rank the communication figures. */
async function worker(steps: number, warmup: number) {
  const group = Number(process.env.WORLD_SIZE ?? 1) > 1 ? await ProcessGroup.init() : undefined;
  const world = group?.worldSize ?? 1;
  const model = await Model.fromConfig(WORKLOAD.config, { task: 'causal-lm', seed: 1 });
  await model.train();
  const opt = new AdamW(model, { lr: 1e-4, weightDecay: 0.01, maxGradNorm: 1.0 });
  const batch = batchOf(GLOBAL_BATCH / world, (group?.rank ?? 0) * (GLOBAL_BATCH / world));
  const step = async () => {
    await model.backward(batch);
    await opt.step();
    await opt.zeroGrad();
  };
  const result: Record<string, number> = { threads: JSON.parse(addon.torchInfo()).threads };
  if (!group) return { ...result, step: await timeSteps(step, steps, warmup) };
  await model.attachDistributed(group, { bucketMb: 25 });
  result.step = await timeSteps(step, steps, warmup);
  await model.syncGradients(false);
  result.stepNoSync = await timeSteps(step, steps, warmup);
  // The same bytes as every float32 gradient, reduced alone (as float64, half as many values).
  const params = model.countParameters({ trainableOnly: true });
  const values = new Float64Array(Math.ceil(params / 2));
  result.allreduce = await timeSteps(() => addon.allReduce(group.h, values, 'sum'), steps, warmup);
  result.gradientMiB = (params * 4) / 2 ** 20;
  await model.detachDistributed();
  return result;
}

async function main() {
  const { values } = parseArgs({
    options: {
      nproc: { type: 'string' },
      steps: { type: 'string' },
      warmup: { type: 'string' },
      out: { type: 'string' },
      worker: { type: 'boolean' },
    },
  });
  const steps = Number(values.steps ?? 8);
  const warmup = Number(values.warmup ?? 2);
  if (values.worker) {
    const r = await worker(steps, warmup);
    if ((process.env.RANK ?? '0') === '0') console.log(JSON.stringify(r));
    return;
  }
  const nproc = Number(values.nproc ?? 2);
  const cores = os.cpus().length;
  const self = [process.execPath, '--require', 'tsx/cjs', __filename, '--worker', '--steps', String(steps), '--warmup', String(warmup)];
  const tokens = GLOBAL_BATCH * WORKLOAD.seq;
  // Alternating runs, so that a drift of the machine's speed hits both sides alike.
  const single: number[] = [];
  const ddp: Record<string, number>[] = [];
  for (let round = 0; round < 2; round++) {
    const s = JSON.parse(
      execFileSync(self[0], self.slice(1), { encoding: 'utf8', env: { ...process.env, OMP_NUM_THREADS: String(cores) } }).trim(),
    );
    single.push(s.step);
    const out = path.join(os.tmpdir(), `tunekit-bench-ddp-${process.pid}.json`);
    const r = await launch({ command: ['bash', '-c', `"$@" > ${out}`, 'bench', ...self], nprocPerNode: nproc, masterPort: 29400 + round });
    if (!r.ok) throw new Error('the DDP run failed');
    ddp.push(JSON.parse(fs.readFileSync(out, 'utf8').trim().split('\n').pop()!));
    fs.rmSync(out, { force: true });
  }
  const best = (xs: number[]) => Math.min(...xs);
  const d = (k: string) => best(ddp.map((r) => r[k]));
  const exposed = Math.max(0, d('step') - d('stepNoSync'));
  const report = {
    workload: `train-gpt2 (${WORKLOAD.config.n_layer} layers, width ${WORKLOAD.config.n_embd}), ${GLOBAL_BATCH} x ${WORKLOAD.seq} tokens per step, AdamW`,
    cores,
    single: { processes: 1, threadsEach: cores, stepMs: best(single) * 1e3, tokensPerSecond: tokens / best(single) },
    ddp: {
      processes: nproc,
      threadsEach: ddp[0].threads,
      stepMs: d('step') * 1e3,
      tokensPerSecond: tokens / d('step'),
      stepNoSyncMs: d('stepNoSync') * 1e3,
      allreduceMs: d('allreduce') * 1e3,
      gradientMiB: ddp[0].gradientMiB,
      exposedCommunicationMs: exposed * 1e3,
      overlap: 1 - exposed / d('allreduce'),
    },
    ddpOverSingle: best(single) / d('step'),
  };
  console.log(JSON.stringify(report, null, 2));
  if (values.out) {
    fs.mkdirSync(values.out, { recursive: true });
    fs.writeFileSync(path.join(values.out, 'ddp.json'), JSON.stringify(report, null, 2) + '\n');
  }
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
