/**
 * Starts the workers of a data-parallel run on this node with torchrun's environment contract, watches them, and
 * stops the group when one fails: its rank, exit status and last error are reported, and with maxRestarts the whole
 * group starts again (each worker resumes from the run's last checkpoint).
 */
import { ChildProcess, spawn } from 'node:child_process';
import net from 'node:net';
import os from 'node:os';
import { TunekitError } from './errors';
import { checkNumber, checkOptions, show } from './validate';

export interface LaunchOptions {
  /** The worker's command line: program and arguments. */
  command: string[];
  nprocPerNode: number;
  nnodes?: number;
  nodeRank?: number;
  masterAddr?: string;
  masterPort?: number;
  /** Times the whole group is started again after a worker fails (default 0). */
  maxRestarts?: number;
  /** OMP_NUM_THREADS of each worker (default: this machine's cores / nprocPerNode; an OMP_NUM_THREADS set wins). */
  threadsPerWorker?: number;
  /** torchrun's --rdzv-id: the same on every node of one run (default 'none', as torchrun's). */
  runId?: string;
  /** Milliseconds between SIGTERM and SIGKILL when the others are stopped (default 5000). */
  stopGraceMs?: number;
  /** Where the launcher's own messages and each worker's stderr lines (prefixed by rank) go; default stderr. */
  log?: (line: string) => void;
}

export interface WorkerFailure {
  rank: number;
  localRank: number;
  pid: number;
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  /** The worker's last lines on stderr. */
  lastError: string;
}

export interface LaunchResult {
  ok: boolean;
  restarts: number;
  /** The first worker to fail in the last attempt: the root cause the others died of. */
  failure?: WorkerFailure;
}

const TAIL_LINES = 20;

interface Worker {
  rank: number;
  localRank: number;
  child: ChildProcess;
  tail: string[];
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export function describeFailure(f: WorkerFailure): string {
  const how = f.signal ? `was killed by ${f.signal}` : `exited with code ${f.exitCode}`;
  return `worker rank ${f.rank} (local rank ${f.localRank}, pid ${f.pid}) ${how}${f.lastError ? `; its last error:\n${f.lastError}` : ''}`;
}

export async function launch(options: LaunchOptions): Promise<LaunchResult> {
  checkOptions(
    options,
    [
      'command',
      'nprocPerNode',
      'nnodes',
      'nodeRank',
      'masterAddr',
      'masterPort',
      'maxRestarts',
      'threadsPerWorker',
      'runId',
      'stopGraceMs',
      'log',
    ],
    'launch',
  );
  const o = options;
  if (!Array.isArray(o.command) || o.command.length === 0 || o.command.some((a) => typeof a !== 'string'))
    throw new TunekitError('E_ARG', `command must be a non-empty array of strings, got ${show(o.command)}`);
  const nproc = checkNumber(o.nprocPerNode, 'nprocPerNode', { integer: true, min: 1 });
  const nnodes = checkNumber(o.nnodes, 'nnodes', { integer: true, min: 1 }, 1);
  const nodeRank = checkNumber(o.nodeRank, 'nodeRank', { integer: true, min: 0, max: nnodes - 1 }, 0);
  const masterPort = checkNumber(o.masterPort, 'masterPort', { integer: true, min: 1, max: 65535 }, 29500);
  const maxRestarts = checkNumber(o.maxRestarts, 'maxRestarts', { integer: true, min: 0 }, 0);
  const threads = checkNumber(
    o.threadsPerWorker,
    'threadsPerWorker',
    { integer: true, min: 1 },
    Math.max(1, Math.floor(os.cpus().length / nproc)),
  );
  const grace = checkNumber(o.stopGraceMs, 'stopGraceMs', { integer: true, min: 0 }, 5000);
  const masterAddr = o.masterAddr ?? '127.0.0.1';
  const log = o.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const worldSize = nnodes * nproc;

  let current: Worker[] = [];
  // The launcher's own SIGINT/SIGTERM stop the workers, as torchrun's do.
  let interrupted: NodeJS.Signals | undefined;
  const onSignal = (sig: NodeJS.Signals) => {
    interrupted = sig;
    for (const w of current) if (w.child.exitCode === null) w.child.kill(sig);
  };
  process.on('SIGINT', onSignal).on('SIGTERM', onSignal);
  try {
    for (let attempt = 0; ; attempt++) {
      // What every worker of this attempt shares; each adds its RANK and LOCAL_RANK.
      const env: NodeJS.ProcessEnv = {
        OMP_NUM_THREADS: String(threads),
        ...process.env,
        GROUP_RANK: String(nodeRank),
        WORLD_SIZE: String(worldSize),
        LOCAL_WORLD_SIZE: String(nproc),
        MASTER_ADDR: masterAddr,
        MASTER_PORT: String(masterPort),
        TORCHELASTIC_RESTART_COUNT: String(attempt),
        TORCHELASTIC_MAX_RESTARTS: String(maxRestarts),
        TORCHELASTIC_RUN_ID: o.runId ?? 'none',
      };
      current = Array.from({ length: nproc }, (_, localRank) => startWorker(o.command, nodeRank * nproc + localRank, localRank, env, log));
      const failure = await watch(current, grace);
      if (!failure) return { ok: true, restarts: attempt };
      log(`tunekit launch: ${describeFailure(failure)}`);
      if (interrupted || attempt >= maxRestarts) return { ok: false, restarts: attempt, failure };
      log(`tunekit launch: restarting the group (restart ${attempt + 1} of ${maxRestarts})`);
    }
  } finally {
    process.off('SIGINT', onSignal).off('SIGTERM', onSignal);
  }
}

/** A TCP port on the loopback address that nothing listens on now (a one-machine job's MASTER_PORT). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

/** Starts one worker; its stderr goes to `log` line by line, prefixed by its rank, and its last lines are kept. */
function startWorker(command: string[], rank: number, localRank: number, env: NodeJS.ProcessEnv, log: (line: string) => void): Worker {
  const child = spawn(command[0], command.slice(1), {
    stdio: ['ignore', 'inherit', 'pipe'],
    env: { ...env, RANK: String(rank), LOCAL_RANK: String(localRank) },
  });
  const tail: string[] = [];
  const keep = (line: string) => {
    log(`[rank ${rank}] ${line}`);
    tail.push(line);
    if (tail.length > TAIL_LINES) tail.shift();
  };
  let partial = '';
  child
    .stderr!.setEncoding('utf8')
    .on('data', (chunk: string) => {
      const lines = (partial + chunk).split('\n');
      partial = lines.pop()!;
      lines.forEach(keep);
    })
    .on('end', () => partial && keep(partial));
  // 'close', not 'exit': by then every line the worker wrote is in `tail`.
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.on('close', (code, signal) => resolve({ code, signal }));
    child.on('error', (e) => {
      tail.push(e.message);
      resolve({ code: 127, signal: null });
    });
  });
  return { rank, localRank, child, tail, exited };
}

/** Waits for every worker; at the first failure, stops the rest. Resolves to that failure, or undefined. */
async function watch(workers: Worker[], graceMs: number): Promise<WorkerFailure | undefined> {
  let first: WorkerFailure | undefined;
  await Promise.all(
    workers.map(async (w) => {
      const { code, signal } = await w.exited;
      if (code === 0 || first) return;
      first = { rank: w.rank, localRank: w.localRank, pid: w.child.pid ?? -1, exitCode: code, signal, lastError: w.tail.join('\n').trim() };
      for (const other of workers) {
        if (other === w || other.child.exitCode !== null || other.child.signalCode !== null) continue;
        other.child.kill('SIGTERM');
        const kill = setTimeout(() => other.child.kill('SIGKILL'), graceMs);
        void other.exited.then(() => clearTimeout(kill));
      }
    }),
  );
  return first;
}
