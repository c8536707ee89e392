/**
 * Resumable training state, shared by the Trainer and the preference and RLHF trainers: a checkpoint is a folder with
 * the model (adapters and heads included), the optimizer's moments, the RNG and the trainer's own loop state, written
 * whole (a temporary folder renamed into place). A run keeps its newest checkpoints as checkpoint-<step> folders in
 * one directory, with latest.json naming the one to resume from.
 */
import fs from 'node:fs';
import path from 'node:path';
import { TunekitError } from './errors';
import type { ProcessGroup } from './distributed';
import type { Model } from './model';
import { addon, serial } from './native';
import type { Optimizer } from './optim';
import { readJsonFile, writeJsonAtomic } from './safetensors';
import { checkNumber, show } from './validate';

const STATE_FILE = 'trainer_state.json';

/** What a checkpoint folder holds once it is complete. */
const CHECKPOINT_FILES = ['config.json', 'model.safetensors', 'optimizer.safetensors', STATE_FILE];

/** The loop state a trainer saves beside the weights; `kind` names the trainer, so another trainer's is refused. */
export interface LoopState {
  kind: string;
  step: number;
  [key: string]: unknown;
}

/** Writes a checkpoint into `dir` (created; its parent must exist), atomically. */
export async function saveCheckpoint(dir: string, model: Model, optimizer: Optimizer, state: LoopState): Promise<void> {
  const tmp = path.join(path.dirname(dir), `.tmp-${path.basename(dir)}-${process.pid}`);
  fs.rmSync(tmp, { recursive: true, force: true });
  await model.savePretrained(tmp, { includeAdapters: true });
  await optimizer.save(path.join(tmp, 'optimizer.safetensors'));
  const rng = (await serial(() => addon.rngState())).toString('base64');
  await writeJsonAtomic(path.join(tmp, STATE_FILE), { ...state, rng, optimizerSteps: optimizer.stepCount });
  if (fs.existsSync(dir)) removeAtomically(path.dirname(dir), path.basename(dir));
  fs.renameSync(tmp, dir);
}

/**
 * Restores what saveCheckpoint wrote into a model and optimizer made as the saved ones were (same weights' shapes,
 * same adapters): weights, optimizer moments and the RNG. Returns the loop state; `check` vets the trainer's own
 * fields before anything is restored, so a bad file leaves the model as it was.
 */
export async function loadCheckpoint<S extends LoopState>(
  dir: string,
  model: Model,
  optimizer: Optimizer,
  kind: string,
  check: (state: S, file: string) => void = () => {},
): Promise<S> {
  const file = path.join(dir, STATE_FILE);
  const state = readJsonFile<S & { rng: string; optimizerSteps: number }>(file, 'not a tunekit checkpoint?');
  if (state?.kind !== kind) throw new TunekitError('E_FORMAT', `${file}: a checkpoint of ${JSON.stringify(state?.kind)}, not of ${kind}`);
  checkNumber(state.step, `${file}: step`, { integer: true, min: 0, code: 'E_FORMAT' });
  checkNumber(state.optimizerSteps, `${file}: optimizerSteps`, { integer: true, min: 0, code: 'E_FORMAT' });
  if (typeof state.rng !== 'string') throw new TunekitError('E_FORMAT', `${file}: rng must be a base64 string`);
  check(state, file);
  await model.loadWeights(dir);
  await optimizer.load(path.join(dir, 'optimizer.safetensors'), state.optimizerSteps);
  await serial(() => addon.setRngState(Buffer.from(state.rng, 'base64')));
  const { rng: _rng, optimizerSteps: _steps, ...loop } = state;
  return loop as unknown as S;
}

/** A checkpoint directory option's value, checked: a non-empty path. */
export function checkFolder(dir: unknown, name = 'checkpointDir'): string {
  if (typeof dir !== 'string' || dir === '') throw new TunekitError('E_ARG', `${name} must be a folder path, got ${show(dir)}`);
  return dir;
}

/** A run's checkpoint directory: checkpoint-<step> folders, latest.json, and the newest `keep` kept. */
export class CheckpointDir {
  constructor(
    readonly dir: string,
    readonly keep = 2,
  ) {}

  /**
   * The checkpoint to resume from: the one latest.json names, or (with a warning) the newest complete one when that
   * is missing or incomplete; undefined when there is none. A fresh run (resume false) into a directory holding
   * checkpoints is refused: it must not mix its checkpoints with an earlier run's.
   */
  latest(resume: boolean): string | undefined {
    const dir = this.dir;
    if (!fs.existsSync(dir)) return undefined;
    if (!fs.statSync(dir).isDirectory()) throw new TunekitError('E_FILE', `checkpoint directory ${dir} is not a folder`);
    removeStale(dir);
    const found = checkpointsIn(dir);
    if (found.length === 0) return undefined;
    if (!resume)
      throw new TunekitError(
        'E_STATE',
        `checkpoint directory ${dir} already holds checkpoints of an earlier run (${found.map((c) => c.name).join(', ')}); ` +
          'resume it or give the new run an empty folder',
      );
    const latestFile = path.join(dir, 'latest.json');
    let named: string | undefined;
    try {
      named = JSON.parse(fs.readFileSync(latestFile, 'utf8')).checkpoint;
    } catch {
      named = undefined;
    }
    if (typeof named === 'string' && /^checkpoint-\d+$/.test(named) && isComplete(path.join(dir, named))) return path.join(dir, named);
    const complete = found.filter((c) => isComplete(path.join(dir, c.name)));
    if (complete.length === 0) throw new TunekitError('E_STATE', `checkpoint directory ${dir} holds no complete checkpoint to resume from`);
    const newest = complete[complete.length - 1].name;
    process.emitWarning(
      `${latestFile} ${named ? `names ${named}, which is missing or incomplete` : 'is missing or unreadable'}; resuming from ${newest}, the newest complete checkpoint`,
      'TunekitWarning',
    );
    return path.join(dir, newest);
  }

  /**
   * latest(), for every rank of a data-parallel group: rank 0 picks (and tidies the folder), every rank gets its pick.
   */
  async resumeFrom(resume: boolean, group?: ProcessGroup): Promise<string | undefined> {
    if (!group) return this.latest(resume);
    const picked = group.rank === 0 ? this.latest(resume) : undefined;
    return (await group.broadcast(picked ?? null)) ?? undefined;
  }

  /**
   * Writes checkpoint-<step> through `save` (saveCheckpoint, or a trainer's save method built on it), points
   * latest.json at it, then prunes to the newest `keep`. In a data-parallel group rank 0 alone writes, and every rank
   * returns once the checkpoint is in place.
   */
  async write(step: number, save: (dir: string) => Promise<void>, group?: ProcessGroup): Promise<void> {
    if (group) {
      if (group.rank === 0) await this.write(step, save);
      return group.barrier();
    }
    const dir = this.dir;
    fs.mkdirSync(dir, { recursive: true });
    const name = `checkpoint-${step}`;
    await save(path.join(dir, name));
    await writeJsonAtomic(path.join(dir, 'latest.json'), { checkpoint: name, step });
    // Keep this one (latest.json names it) and the newest earlier ones; later-numbered folders are from a future this
    // run has abandoned by resuming before them.
    const earlier = checkpointsIn(dir).filter((c) => c.step < step);
    const keep = new Set([name, ...earlier.slice(Math.max(0, earlier.length - (this.keep - 1))).map((c) => c.name)]);
    for (const c of checkpointsIn(dir)) if (!keep.has(c.name)) removeAtomically(dir, c.name);
  }
}

function checkpointsIn(dir: string): { name: string; step: number }[] {
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir)
    .filter((f) => /^checkpoint-\d+$/.test(f))
    .map((name) => ({ name, step: Number(name.slice('checkpoint-'.length)) }))
    .sort((a, b) => a.step - b.step);
}

function isComplete(dir: string): boolean {
  return CHECKPOINT_FILES.every((f) => fs.existsSync(path.join(dir, f)));
}

export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Out of the checkpoint namespace by one rename, then deleted: a kill in between leaves only a .trash folder. */
function removeAtomically(dir: string, name: string): void {
  const trash = path.join(dir, `.trash-${name}-${process.pid}`);
  fs.renameSync(path.join(dir, name), trash);
  fs.rmSync(trash, { recursive: true, force: true });
}

/** Deletes what killed runs left behind: half-written checkpoints and half-deleted ones (their writer is gone). */
function removeStale(dir: string): void {
  for (const f of fs.readdirSync(dir)) {
    const m = f.match(/^\.(?:tmp|trash)-checkpoint-\d+-(\d+)$/);
    if (m && Number(m[1]) !== process.pid && !processAlive(Number(m[1]))) fs.rmSync(path.join(dir, f), { recursive: true, force: true });
  }
}
