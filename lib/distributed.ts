/**
 * Data-parallel training on PyTorch's c10d: a process group (TCPStore rendezvous, Gloo collectives) and the
 * environment contract of torchrun, so that a worker can be started by `tunekit launch` or by torchrun itself.
 */
import { TunekitError } from './errors';
import { addon, Handle, serial } from './native';
import { checkBoolean, checkChoice, checkNumber, checkOptions, show } from './validate';

export interface ProcessGroupOptions {
  rank?: number;
  worldSize?: number;
  localRank?: number;
  localWorldSize?: number;
  masterAddr?: string;
  masterPort?: number;
  /**
   * Seconds a collective (or the rendezvous) waits for a peer before it fails with E_DIST naming this rank. A peer
   * that exits is noticed at once; this bounds a peer that hangs. Default: TUNEKIT_DIST_TIMEOUT, else 300.
   */
  timeoutSeconds?: number;
  backend?: 'gloo';
}

/** torchrun's variables, read as torch.distributed's env:// rendezvous reads them. */
function fromEnv(env: NodeJS.ProcessEnv): ProcessGroupOptions {
  const int = (name: string) => {
    const v = env[name];
    if (v === undefined || v === '') return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) throw new TunekitError('E_ARG', `${name}=${v} is not a non-negative integer`);
    return n;
  };
  const timeout = env.TUNEKIT_DIST_TIMEOUT;
  return {
    rank: int('RANK'),
    worldSize: int('WORLD_SIZE'),
    localRank: int('LOCAL_RANK'),
    localWorldSize: int('LOCAL_WORLD_SIZE'),
    masterAddr: env.MASTER_ADDR || undefined,
    masterPort: int('MASTER_PORT'),
    ...(timeout ? { timeoutSeconds: Number(timeout) } : {}),
  };
}

/** Whether this process was started as one of several workers (WORLD_SIZE > 1). */
export function launchedDistributed(env: NodeJS.ProcessEnv = process.env): boolean {
  return Number(env.WORLD_SIZE ?? 1) > 1;
}

/**
 * The ranks of one data-parallel run and their collectives. `ProcessGroup.init()` with no options joins the group
 * torchrun's variables describe (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, ...), as init_process_group('env://').
 */
export class ProcessGroup {
  readonly rank: number;
  readonly worldSize: number;
  readonly localRank: number;
  readonly localWorldSize: number;
  readonly timeoutSeconds: number;
  private handle: Handle | null;

  private constructor(handle: Handle, o: Required<Omit<ProcessGroupOptions, 'masterAddr' | 'masterPort' | 'backend'>>) {
    this.handle = handle;
    this.rank = o.rank;
    this.worldSize = o.worldSize;
    this.localRank = o.localRank;
    this.localWorldSize = o.localWorldSize;
    this.timeoutSeconds = o.timeoutSeconds;
  }

  static async init(options: ProcessGroupOptions = {}): Promise<ProcessGroup> {
    checkOptions(
      options,
      ['rank', 'worldSize', 'localRank', 'localWorldSize', 'masterAddr', 'masterPort', 'timeoutSeconds', 'backend'],
      'ProcessGroup.init',
    );
    const o = { ...fromEnv(process.env), ...options };
    const worldSize = checkNumber(o.worldSize, 'worldSize (WORLD_SIZE)', { integer: true, min: 1 }, 1);
    const rank = checkNumber(o.rank, 'rank (RANK)', { integer: true, min: 0, max: worldSize - 1 }, 0);
    const localRank = checkNumber(o.localRank, 'localRank (LOCAL_RANK)', { integer: true, min: 0 }, rank);
    const localWorldSize = checkNumber(o.localWorldSize, 'localWorldSize (LOCAL_WORLD_SIZE)', { integer: true, min: 1 }, worldSize);
    const masterPort = checkNumber(o.masterPort, 'masterPort (MASTER_PORT)', { integer: true, min: 1, max: 65535 }, 29500);
    const timeoutSeconds = checkNumber(o.timeoutSeconds, 'timeoutSeconds (TUNEKIT_DIST_TIMEOUT)', { min: 0, minExclusive: true }, 300);
    const masterAddr = o.masterAddr ?? '127.0.0.1';
    if (typeof masterAddr !== 'string' || masterAddr === '')
      throw new TunekitError('E_ARG', `masterAddr must be a host, got ${show(masterAddr)}`);
    const backend = checkChoice(o.backend, ['gloo'] as const, 'backend', 'gloo');
    // A restarted group (torchrun's TORCHELASTIC_RESTART_COUNT) keys its rendezvous apart from the attempt before.
    const runId = `${process.env.TORCHELASTIC_RUN_ID ?? 'none'}/${process.env.TORCHELASTIC_RESTART_COUNT ?? '0'}`;
    // Under torchrun, its agent serves the store at MASTER_PORT already, as torch.distributed then assumes.
    const agentStore = process.env.TORCHELASTIC_USE_AGENT_STORE === 'True';
    const handle = await serial(() =>
      addon.initProcessGroup({ masterAddr, masterPort, rank, worldSize, timeoutSeconds, backend, runId, agentStore }),
    );
    return new ProcessGroup(handle, { rank, worldSize, localRank, localWorldSize, timeoutSeconds });
  }

  /** @internal */
  get h(): Handle {
    if (!this.handle) throw new TunekitError('E_DISPOSED', 'this process group was destroyed');
    return this.handle;
  }

  /** Element-wise reduction of `values` over every rank (float64). */
  async allReduce(values: number[], op: 'sum' | 'max' | 'min' = 'sum'): Promise<number[]> {
    const out = await serial(() => addon.allReduce(this.h, Float64Array.from(values), op));
    return Array.from(out);
  }

  /** Rank 0's `value` (anything JSON can carry), on every rank. */
  async broadcast<T>(value: T): Promise<T> {
    const bytes = this.rank === 0 ? new TextEncoder().encode(JSON.stringify(value)) : new Uint8Array(0);
    const out = await serial(() => addon.broadcastBytes(this.h, bytes));
    return JSON.parse(new TextDecoder().decode(out)) as T;
  }

  /** Each field's mean over the ranks (every rank must pass the same fields). */
  async average(values: Record<string, number>): Promise<Record<string, number>> {
    const keys = Object.keys(values).sort();
    const sums = await this.allReduce(keys.map((k) => values[k]));
    return Object.fromEntries(keys.map((k, i) => [k, sums[i] / this.worldSize]));
  }

  barrier(): Promise<void> {
    return serial(() => addon.barrier(this.h));
  }

  /** Leaves the group; a model still attached to it keeps it alive until it detaches. */
  destroy(): void {
    if (this.handle) addon.dispose(this.handle);
    this.handle = null;
  }
}

let defaultGroup: Promise<ProcessGroup> | undefined;

/** The process's group from torchrun's variables, joined once and shared (torch.distributed's default group). */
export function defaultProcessGroup(): Promise<ProcessGroup> {
  defaultGroup ??= ProcessGroup.init().catch((e) => {
    defaultGroup = undefined;
    throw e;
  });
  return defaultGroup;
}

/** DistributedDataParallel's knobs. */
export interface DistributedOptions {
  /** Default: the process's group from torchrun's variables. */
  group?: ProcessGroup;
  /** DDP's bucket_cap_mb (default 25). */
  bucketMb?: number;
  /**
   * DDP's find_unused_parameters: walk each loss's graph for trainable parameters it leaves out (a PEFT method or head
   * can), so that the reduction does not wait for their gradients. Default: on only if the first step's loss leaves
   * one out on some rank.
   */
  findUnusedParameters?: boolean;
}

/** Checks `distributed: true | ProcessGroup | DistributedOptions` without joining anything. */
export function checkDistributed(d: unknown): void {
  if (d === undefined || typeof d === 'boolean' || d instanceof ProcessGroup) return;
  if (typeof d !== 'object' || d === null)
    throw new TunekitError(
      'E_ARG',
      `distributed must be true, a ProcessGroup or { group, bucketMb, findUnusedParameters }, got ${show(d)}`,
    );
  const o = d as DistributedOptions;
  checkOptions(o, ['group', 'bucketMb', 'findUnusedParameters'], 'distributed');
  if (o.group !== undefined && !(o.group instanceof ProcessGroup))
    throw new TunekitError('E_ARG', `distributed.group must be a ProcessGroup, got ${show(o.group)}`);
  checkNumber(o.bucketMb, 'bucketMb', { min: 0, minExclusive: true }, 25);
  if (o.findUnusedParameters !== undefined) checkBoolean(o.findUnusedParameters, 'findUnusedParameters', false);
}

/** What `distributed` asks for, resolved (joining the default group if need be); undefined when not distributed. */
export async function resolveDistributed(
  d: boolean | ProcessGroup | DistributedOptions | undefined,
): Promise<{ group: ProcessGroup; bucketMb: number; findUnusedParameters?: boolean } | undefined> {
  checkDistributed(d);
  if (d === undefined || d === false) return undefined;
  const o: DistributedOptions = d === true ? {} : d instanceof ProcessGroup ? { group: d } : d;
  return {
    group: o.group ?? (await defaultProcessGroup()),
    bucketMb: o.bucketMb ?? 25,
    ...(o.findUnusedParameters !== undefined ? { findUnusedParameters: o.findUnusedParameters } : {}),
  };
}

/**
 * DistributedSampler's share of one epoch's order: the order padded (by repeating its start) to a multiple of the
 * world size, then every worldSize-th index from this rank's. Every rank gets the same number of examples.
 */
export function shardOf(order: number[], rank: number, worldSize: number): number[] {
  if (worldSize === 1) return order;
  const total = Math.ceil(order.length / worldSize) * worldSize;
  const out: number[] = [];
  for (let i = rank; i < total; i += worldSize) out.push(order[i % order.length]);
  return out;
}
