/**
 * Fine-tuning jobs: validated, queued, and each run as `tunekit <command>` in a child process of its own, so that a
 * crash, an out-of-memory kill or a native fault ends that job and not the server. The child reports its metrics
 * rows over IPC; the store keeps status and events, so a restarted server requeues what was running and the run
 * resumes from its last checkpoint.
 */
import { ChildProcess, fork } from 'node:child_process';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { COMMANDS } from '../cli/main';
import { Dataset } from '../data';
import { readPairs } from '../rl/pairs';
import { readJsonFile } from '../safetensors';
import { STRATEGIES } from '../strategies';
import { FINISHED, JobMethod, JobRecord, Store } from './store';

/** Method types: each training strategy of `tunekit finetune`, and the preference trainers. */
export const METHOD_TYPES = [...Object.keys(STRATEGIES), 'dpo', 'reward'];

/** Flags the server sets from the job itself, which hyperparameters may not name. */
const RESERVED = new Set([
  'model',
  'data',
  'out',
  'strategy',
  'validation-data',
  'resume',
  'overwrite',
  'checkpoint-every',
  'quiet',
  'help',
  'seed',
]);
/** OpenAI's hyperparameter names for the flags they mean. */
const ALIASES: Record<string, string> = { n_epochs: 'epochs', learning_rate: 'lr' };

const commandOf = (type: string) => (type === 'dpo' || type === 'reward' ? type : 'finetune');

/** The `--flag value` list for a method's hyperparameters, or an error naming the first one the command lacks. */
export function hyperparameterFlags(method: JobMethod): string[] {
  const options = COMMANDS[commandOf(method.type)]!.options;
  const flags: string[] = [];
  for (const [key, value] of Object.entries(method.hyperparameters)) {
    const flag = (ALIASES[key] ?? key).replace(/_/g, '-');
    const spec = options[flag];
    if (!spec || RESERVED.has(flag))
      throw new JobError(
        `method.hyperparameters.${key}: not a hyperparameter of ${method.type} (expected one of ${Object.keys(options)
          .filter((k) => !RESERVED.has(k))
          .map((k) => k.replace(/-/g, '_'))
          .join(', ')})`,
      );
    if (spec.type === 'boolean') {
      if (typeof value !== 'boolean') throw new JobError(`method.hyperparameters.${key}: expected true or false`);
      if (value) flags.push(`--${flag}`);
    } else {
      if (!(typeof value === 'number' && Number.isFinite(value)) && !(typeof value === 'string' && value.length <= 1000))
        throw new JobError(`method.hyperparameters.${key}: expected a number or a string`);
      flags.push(`--${flag}`, String(value));
    }
  }
  return flags;
}

/** A request the job API refuses (400). */
export class JobError extends Error {}

export interface JobRunnerOptions {
  store: Store;
  dataDir: string;
  /** A base model's folder by name, or undefined for an unknown name. */
  modelDir(name: string): string | undefined;
  /** Jobs that run at once (default 1: the cores are few). */
  concurrency?: number;
  /** Steps between checkpoints, which a job resumes from after a restart (default 50). */
  checkpointEvery?: number;
  /** Seconds a cancelled job's process has to stop before it is killed (default 5). */
  killAfter?: number;
  /** libtorch threads of each job's process (default half the cores, at least 1): the rest stay with inference. */
  jobThreads?: number;
}

interface Running {
  child: ChildProcess;
  /** When this attempt started, and at which step, for the time-left estimate. */
  startedMs: number;
  startStep: number;
  lastStep: number;
}

export class JobRunner {
  /** Every event as it is stored: the server's streams listen here. */
  readonly events = new EventEmitter();
  private readonly running = new Map<string, Running>();
  private readonly store: Store;
  private stopping = false;

  constructor(private readonly o: JobRunnerOptions) {
    this.store = o.store;
    this.events.setMaxListeners(0);
  }

  jobDir(id: string): string {
    return path.join(this.o.dataDir, 'jobs', id);
  }
  /** Where a job writes its model (or adapter), metrics and checkpoints. */
  outDir(id: string): string {
    return path.join(this.jobDir(id), 'out');
  }
  filePath(id: string): string {
    return path.join(this.o.dataDir, 'files', `${id}.jsonl`);
  }

  /** After a restart: jobs that were running (their processes ended with the server) and those mid-validation go again. */
  start(): void {
    for (const job of this.store.jobsWithStatus('running'))
      this.store.updateJob(
        job.id,
        { status: 'queued' },
        {
          level: 'warn',
          type: 'message',
          message: `The server restarted while the job ran; it resumes from its last checkpoint (step ${this.lastCheckpoint(job.id) ?? 0})`,
          data: null,
        },
      );
    for (const job of this.store.jobsWithStatus('validating_files')) void this.validate(job);
    this.pump();
  }

  /** Stops taking jobs and ends the running ones' processes; they stay `running` in the store and resume on restart. */
  async stop(): Promise<void> {
    this.stopping = true;
    await Promise.all(
      [...this.running.values()].map(
        (r) =>
          new Promise<void>((resolve) => {
            if (r.child.exitCode !== null || r.child.signalCode !== null) return resolve();
            r.child.once('exit', () => resolve());
            r.child.kill('SIGTERM');
          }),
      ),
    );
  }

  /** Creates a job (400 for bad requests), then validates its files and queues it in the background. */
  create(
    req: Omit<
      JobRecord,
      'status' | 'created_at' | 'started_at' | 'finished_at' | 'fine_tuned_model' | 'error' | 'attempts' | 'cancel_requested'
    >,
  ): JobRecord {
    if (!METHOD_TYPES.includes(req.method.type))
      throw new JobError(`method.type: ${JSON.stringify(req.method.type)} is not one of ${METHOD_TYPES.join(', ')}`);
    hyperparameterFlags(req.method);
    if (!this.o.modelDir(req.model))
      throw new JobError(`model: ${JSON.stringify(req.model)} is not a base model this server has (GET /v1/models)`);
    if (req.method.type === 'dpo' || req.method.type === 'reward') {
      if (req.validation_file)
        throw new JobError(`validation_file: ${req.method.type} jobs hold out a tenth of the training pairs instead`);
    }
    const job = this.store.addJob(req);
    this.store.addEvent(job.id, { level: 'info', type: 'message', message: `Created fine-tuning job: ${job.id}`, data: null });
    void this.validate(job);
    return job;
  }

  /** Reads the job's files as its command will, so that bad data fails here, before the job takes its turn. */
  private async validate(job: JobRecord): Promise<void> {
    const fail = (message: string) => {
      this.finish(job.id, { status: 'failed', error: { code: 'invalid_training_file', message } }, message);
    };
    try {
      if (!this.o.modelDir(job.model)) return fail(`model ${JSON.stringify(job.model)}: no such base model`);
      const files = [job.training_file, ...(job.validation_file ? [job.validation_file] : [])];
      for (const id of files) {
        const file = this.filePath(id);
        if (!this.store.file(id) || !fs.existsSync(file)) return fail(`file ${id}: no such file`);
        if (job.method.type === 'dpo' || job.method.type === 'reward') await readPairs(file);
        else await Dataset.fromFile(file, { fields: fieldsOf(file) });
      }
    } catch (e) {
      return fail((e as Error).message);
    }
    if (this.store.job(job.id)!.status !== 'validating_files') return; // cancelled meanwhile
    this.store.updateJob(
      job.id,
      { status: 'queued' },
      { level: 'info', type: 'message', message: 'Files validated; the job is queued', data: null },
    );
    this.emitLatest(job.id);
    this.pump();
  }

  cancel(id: string): JobRecord {
    const job = this.store.job(id)!;
    if (FINISHED.includes(job.status)) return job;
    const r = this.running.get(id);
    if (!r) return this.finish(id, { status: 'cancelled' }, 'The job was cancelled');
    this.store.updateJob(id, { cancel_requested: true });
    r.child.kill('SIGTERM');
    const timer = setTimeout(() => r.child.kill('SIGKILL'), (this.o.killAfter ?? 5) * 1000);
    r.child.once('exit', () => clearTimeout(timer));
    return this.store.job(id)!;
  }

  /** The checkpoints a job's run keeps, newest first. */
  checkpoints(id: string): { step: number; dir: string; createdAt: number }[] {
    const dir = path.join(this.outDir(id), 'checkpoints');
    if (!fs.existsSync(dir)) return [];
    return fs
      .readdirSync(dir)
      .filter((f) => /^checkpoint-\d+$/.test(f))
      .map((f) => ({
        step: Number(f.slice('checkpoint-'.length)),
        dir: path.join(dir, f),
        createdAt: Math.floor(fs.statSync(path.join(dir, f)).mtimeMs / 1000),
      }))
      .sort((a, b) => b.step - a.step);
  }

  private lastCheckpoint(id: string): number | undefined {
    return this.checkpoints(id)[0]?.step;
  }

  private pump(): void {
    if (this.stopping) return;
    const limit = this.o.concurrency ?? 1;
    for (const job of this.store.jobsWithStatus('queued')) {
      if (this.running.size >= limit) return;
      this.launch(job);
    }
  }

  private argv(job: JobRecord): string[] {
    const type = job.method.type;
    const out = this.outDir(job.id);
    const data = this.filePath(job.training_file);
    const args = [commandOf(type), '--model', this.o.modelDir(job.model)!, '--data', data, '--out', out, '--seed', String(job.seed)];
    if (commandOf(type) === 'finetune') {
      args.push('--strategy', type, '--validation-data', job.validation_file ? this.filePath(job.validation_file) : 'none');
      for (const [field, name] of Object.entries(fieldsOf(data))) args.push(`--${field}-field`, name);
    }
    const resume = this.lastCheckpoint(job.id) !== undefined;
    args.push('--checkpoint-every', String(this.o.checkpointEvery ?? 50), '--quiet', resume ? '--resume' : '--overwrite');
    return [...args, ...hyperparameterFlags(job.method)];
  }

  private launch(job: JobRecord): void {
    const attempt = job.attempts + 1;
    let argv: string[];
    try {
      argv = this.argv(job);
    } catch (e) {
      this.finish(
        job.id,
        { status: 'failed', error: { code: 'invalid_training_file', message: (e as Error).message } },
        (e as Error).message,
      );
      return;
    }
    fs.mkdirSync(this.jobDir(job.id), { recursive: true });
    const log = fs.openSync(path.join(this.jobDir(job.id), 'log.txt'), 'a');
    const main = path.join(__dirname, `job-process${path.extname(__filename)}`);
    // Threads beyond the cores make every one of them wait (OpenMP spins): a job takes its share and leaves the rest.
    const threads = this.o.jobThreads ?? Math.max(1, Math.floor(os.cpus().length / 2));
    const child = fork(main, argv, {
      stdio: ['ignore', log, log, 'ipc'],
      execArgv: main.endsWith('.ts') ? ['--require', 'tsx/cjs'] : [],
      env: { ...process.env, OMP_NUM_THREADS: String(threads) },
    });
    fs.closeSync(log);
    const lastStep = this.store.lastStep(job.id);
    const entry: Running = { child, startedMs: Date.now(), startStep: lastStep, lastStep };
    this.running.set(job.id, entry);
    this.store.updateJob(
      job.id,
      { status: 'running', started_at: job.started_at ?? Math.floor(Date.now() / 1000), attempts: attempt },
      {
        level: 'info',
        type: 'message',
        message: attempt === 1 ? 'Fine-tuning job started' : `Fine-tuning job started again (attempt ${attempt})`,
        data: null,
      },
    );
    this.emitLatest(job.id);
    child.on('message', (m: { type?: string; row?: Record<string, unknown> }) => {
      if (m?.type === 'metrics' && m.row) this.metrics(job.id, entry, m.row);
    });
    // 'close', not 'exit': it comes after the last message, so the job ends after its last metrics event.
    child.on('close', (code, signal) => this.exited(job.id, code, signal));
  }

  private metrics(id: string, r: Running, row: Record<string, unknown>): void {
    const step = Number(row.step);
    // A resumed run repeats the steps after its checkpoint: those were reported by the run before.
    if (!Number.isFinite(step) || step <= r.lastStep) return;
    r.lastStep = step;
    const total = Number(row.totalSteps);
    const perStep = (Date.now() - r.startedMs) / 1000 / Math.max(1, step - r.startStep);
    const loss = Number(row.loss);
    const data: Record<string, unknown> = {
      step,
      total_steps: Number.isFinite(total) ? total : null,
      train_loss: loss,
      learning_rate: row.lr ?? null,
      tokens_per_second: row.tokensPerSecond ?? null,
      eta_seconds: Number.isFinite(total) ? Math.max(0, Math.round((total - step) * perStep)) : null,
    };
    this.events.emit(
      'event',
      this.store.addEvent(id, {
        level: 'info',
        type: 'metrics',
        message: `Step ${step}${Number.isFinite(total) ? `/${total}` : ''}: training loss=${loss.toFixed(4)}`,
        data,
      }),
    );
  }

  private exited(id: string, code: number | null, signal: NodeJS.Signals | null): void {
    this.running.delete(id);
    if (this.stopping) return; // the server is going down: the job stays running and resumes on restart
    const job = this.store.job(id)!;
    if (job.cancel_requested) this.finish(id, { status: 'cancelled' }, 'The job was cancelled');
    else if (code === 0) {
      const name = `ft:${job.model}${job.suffix ? `:${job.suffix}` : ''}:${job.id}`;
      this.finish(
        id,
        { status: 'succeeded', fine_tuned_model: name },
        `The job has successfully completed: ${name}`,
        finalScores(this.outDir(id)),
      );
    } else {
      const message = signal
        ? `the job's process was killed by ${signal}${signal === 'SIGKILL' ? ' (out of memory, or killed from outside)' : ''}`
        : (lastError(path.join(this.jobDir(id), 'log.txt')) ?? `the job's process exited with code ${code}`);
      this.finish(
        id,
        { status: 'failed', error: { code: signal ? 'process_killed' : 'training_failed', message } },
        `The job failed: ${message}`,
      );
    }
    this.pump();
  }

  private finish(id: string, fields: Partial<JobRecord>, message: string, data: Record<string, unknown> | null = null): JobRecord {
    const failed = fields.status === 'failed';
    const job = this.store.updateJob(
      id,
      { ...fields, finished_at: Math.floor(Date.now() / 1000) },
      { level: failed ? 'error' : 'info', type: 'message', message, data },
    );
    this.emitLatest(id);
    return job;
  }

  /** Tells the streams of a job's newest event (stored with the change it reports). */
  private emitLatest(id: string): void {
    const [last] = this.store.events(id, { limit: 1, order: 'desc' });
    if (last) this.events.emit('event', last);
  }
}

/** The field names to pass for OpenAI's prompt/completion rows (tunekit's own are prompt/response). */
function fieldsOf(file: string): Record<string, string> {
  const fd = fs.openSync(file, 'r');
  try {
    const buffer = Buffer.alloc(65536);
    const first = buffer
      .subarray(0, fs.readSync(fd, buffer, 0, buffer.length, 0))
      .toString('utf8')
      .split('\n')[0]!;
    const row = JSON.parse(first);
    return row && typeof row === 'object' && 'completion' in row && !('response' in row) ? { response: 'completion' } : {};
  } catch {
    return {}; // the file's own reader names the fault
  } finally {
    fs.closeSync(fd);
  }
}

/** The validation (and held-out) scores a finished run wrote to its results.json, for the job's last event. */
function finalScores(out: string): Record<string, unknown> | null {
  try {
    const r = readJsonFile(path.join(out, 'results.json'));
    const scores = Object.fromEntries(['validation', 'test', 'before', 'after'].filter((k) => r[k] !== undefined).map((k) => [k, r[k]]));
    return Object.keys(scores).length > 0 ? scores : null;
  } catch {
    return null;
  }
}

/** The CLI's last error line (`tunekit: ...`) in a job's log. */
function lastError(log: string): string | undefined {
  if (!fs.existsSync(log)) return undefined;
  const lines = fs
    .readFileSync(log, 'utf8')
    .split('\n')
    .filter((l) => l.startsWith('tunekit: '));
  return lines.at(-1)?.slice('tunekit: '.length);
}
