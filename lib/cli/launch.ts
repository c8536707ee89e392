/** `tunekit launch`: torchrun for tunekit (and for any worker that reads torchrun's variables). */
import { Command, num, Opts, UsageError } from './args';
import { launchedDistributed } from '../distributed';
import { freePort, launch } from '../launcher';

/** The --nproc flag of the commands that train data-parallel. */
export const NPROC_FLAG = {
  options: { nproc: { type: 'string' } },
  help: { nproc: 'train data-parallel in N processes on this machine (tunekit launch; the batch size is per process)' },
} as const;

/**
 * A training command's part in a data-parallel job: with --nproc N > 1, `relaunch` runs the command again as N
 * workers; in a worker that tunekit launch (or torchrun) started, every rank trains and rank 0 (`lead`) alone prints
 * and writes --out.
 */
export function workerRole(o: Opts): { relaunch?: number; distributed: boolean; lead: boolean } {
  const nproc = num(o, 'nproc', 1, 'int')!;
  const distributed = launchedDistributed();
  if (nproc > 1 && distributed) throw new UsageError('--nproc: this process is already a worker of a launched job');
  return { ...(nproc > 1 ? { relaunch: nproc } : {}), distributed, lead: !distributed || process.env.RANK === '0' };
}

/** This CLI's own command line with other arguments: how a worker runs tunekit without it on PATH. */
function thisCli(args: string[]): string[] {
  return [process.execPath, ...process.execArgv, process.argv[1], ...args];
}

/** Runs this CLI's own command line again under `launch` with nproc workers (what `--nproc N` does). */
export async function relaunch(nproc: number): Promise<number> {
  const args = process.argv.slice(2);
  const own: string[] = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--nproc') i++;
    else if (!args[i].startsWith('--nproc=')) own.push(args[i]);
  }
  // One machine, as torchrun --standalone: any free port will do.
  const result = await launch({ command: thisCli(own), nprocPerNode: nproc, masterPort: await freePort() });
  return result.ok ? 0 : 1;
}

export const LAUNCH_COMMANDS: Record<string, Command> = {
  launch: {
    summary: "run a command as the workers of a data-parallel job (torchrun's contract)",
    usage:
      'tunekit launch --nproc-per-node N [--nnodes M --node-rank R --master-addr A --master-port P] [--max-restarts K] -- <command> [args...]',
    positionals: true,
    options: {
      'nproc-per-node': { type: 'string' },
      nnodes: { type: 'string' },
      'node-rank': { type: 'string' },
      'master-addr': { type: 'string' },
      'master-port': { type: 'string' },
      'max-restarts': { type: 'string' },
      'threads-per-worker': { type: 'string' },
      'rdzv-id': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    help: {
      'nproc-per-node': 'workers to start on this node',
      nnodes: 'nodes in the job (default 1); start one launcher per node, each with its --node-rank',
      'node-rank': "this node's index, 0 .. nnodes - 1 (default 0)",
      'master-addr': 'the address of node 0, where rank 0 serves the rendezvous (default 127.0.0.1)',
      'master-port': 'its TCP port (default 29500)',
      'max-restarts': 'times to start the whole group again after a worker fails (default 0); workers resume from their last checkpoint',
      'threads-per-worker': "each worker's OMP_NUM_THREADS (default: cores / workers on this node)",
      'rdzv-id': 'the run id, the same on every node (TORCHELASTIC_RUN_ID; default none)',
    },
    async run(o, command) {
      if (command.length === 0)
        throw new UsageError('no command to launch: put it after --, e.g. tunekit launch --nproc-per-node 2 -- tunekit finetune ...');
      if (o['nproc-per-node'] === undefined) throw new UsageError('--nproc-per-node is required');
      const int = (key: string) => num(o, key, undefined, 'int');
      const result = await launch({
        command: command[0] === 'tunekit' ? thisCli(command.slice(1)) : command,
        // An absent flag is undefined, which launch() reads as its default.
        nprocPerNode: int('nproc-per-node')!,
        nnodes: int('nnodes'),
        nodeRank: int('node-rank'),
        masterAddr: o['master-addr'] as string | undefined,
        masterPort: int('master-port'),
        maxRestarts: int('max-restarts'),
        threadsPerWorker: int('threads-per-worker'),
        runId: o['rdzv-id'] as string | undefined,
      });
      return result.ok ? 0 : 1;
    },
  },
};
