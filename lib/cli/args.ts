/** What every command of the CLI shares: its shape, usage errors, and readers of its flags. */
import fs from 'node:fs';
import path from 'node:path';
import type { ParseArgsConfig } from 'node:util';
import { Device, Model, Precision, PRECISIONS } from '../model';

export const ROOT = path.resolve(__dirname, '..', '..');
export const DEFAULT_MODEL = path.join(ROOT, 'models', 'tiny-distilbert');

/** A mistake in how the command was called: one line, exit code 2. */
export class UsageError extends Error {}

export type Opts = Record<string, string | boolean | undefined>;

export interface Command {
  summary: string;
  usage: string;
  options: NonNullable<ParseArgsConfig['options']>;
  help: Record<string, string>;
  /** Whether the command takes operands after its flags (files). */
  positionals?: boolean;
  /** Resolves to the exit status (default 0). */
  run(o: Opts, positionals: string[]): Promise<void | number>;
}

export function num(o: Opts, key: string, fallback: number | undefined, kind: 'int' | 'float' = 'float'): number | undefined {
  const v = o[key];
  if (v === undefined) return fallback;
  const n = Number(v);
  if (typeof v !== 'string' || v.trim() === '' || !Number.isFinite(n) || (kind === 'int' && !Number.isInteger(n))) {
    throw new UsageError(`--${key} must be ${kind === 'int' ? 'an integer' : 'a number'}, got ${JSON.stringify(v)}`);
  }
  if (n < 0) throw new UsageError(`--${key} must not be negative, got ${v}`);
  return n;
}

export function modelDir(o: Opts): string {
  const dir = path.resolve(String(o.model ?? DEFAULT_MODEL));
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new UsageError(`--model ${o.model ?? DEFAULT_MODEL}: no such folder`);
  if (!fs.existsSync(path.join(dir, 'config.json'))) throw new UsageError(`--model ${dir}: not a model folder (no config.json)`);
  return dir;
}

/**
 * --out must be a folder that is new or empty, unless the run continues it (--resume, training strategies only) or
 * replaces it (--overwrite): a rerun never leaves an old model beside a new run's metrics.
 */
export function prepareOut(out: string, o: Opts, canResume: boolean): void {
  if (o.resume && o.overwrite) throw new UsageError('--resume continues --out and --overwrite replaces it: give one');
  if (o.resume && !canResume) throw new UsageError('--resume: this command writes no checkpoints');
  if (!fs.existsSync(out)) {
    if (o.resume) throw new UsageError(`--resume: ${out} does not exist (nothing to continue)`);
    return;
  }
  if (!fs.statSync(out).isDirectory()) throw new UsageError(`--out ${out} is a file, not a folder`);
  if (fs.readdirSync(out).length === 0) return;
  if (o.overwrite) fs.rmSync(out, { recursive: true, force: true });
  else if (o.resume) {
    if (!fs.existsSync(path.join(out, 'checkpoints')))
      throw new UsageError(`--resume: ${out} holds no checkpoints (was it run with --checkpoint-every?)`);
  } else
    throw new UsageError(
      `--out ${out} is not empty: add --resume to continue its run from the last checkpoint, or --overwrite to replace it`,
    );
}

/** The flags of every command that trains: periodic checkpoints in OUT/checkpoints, and resuming from them. */
export const CHECKPOINT_FLAGS = {
  options: { 'checkpoint-every': { type: 'string' }, resume: { type: 'boolean' } },
  help: {
    'checkpoint-every': 'save a checkpoint (weights, optimizer, RNG, loop position) to OUT/checkpoints every N steps',
    resume: 'continue the run in --out from its last checkpoint (same flags as the run it continues)',
  },
} as const;

/** The checkpointDir, checkpointEvery and resume options those flags ask for (none when neither is given). */
export function checkpointing(o: Opts, out: string): { checkpointDir?: string; checkpointEvery?: number; resume?: boolean } {
  const resume = Boolean(o.resume);
  if (o['checkpoint-every'] === undefined && !resume) return {};
  return { checkpointDir: path.join(out, 'checkpoints'), checkpointEvery: num(o, 'checkpoint-every', undefined, 'int'), resume };
}

/** Where and how a command's models compute: --device and --precision, checked. */
export function computeOptions(o: Opts): { device: Device; precision: Precision } {
  const device = (o.device ?? 'cpu') as Device;
  if (device !== 'cpu' && device !== 'cuda') throw new UsageError(`--device must be cpu or cuda, got ${JSON.stringify(o.device)}`);
  const precision = (o.precision ?? '32-true') as Precision;
  if (!PRECISIONS.includes(precision))
    throw new UsageError(`--precision must be one of ${PRECISIONS.join(', ')}, got ${JSON.stringify(o.precision)}`);
  return { device, precision };
}

export const PRECISION_HELP = `${PRECISIONS.join(' | ')} (default 32-true); bf16-mixed computes products and attention in bfloat16 under autocast, keeping float32 weights`;

/**
 * Writes a trained model into --out with the tokenizer files of the folder it came from: as a PEFT adapter over that
 * folder, or as a whole model.
 */
export async function saveTrained(model: Model, dir: string, out: string, asAdapter: boolean): Promise<void> {
  if (asAdapter) await model.saveAdapter(out, { baseModelNameOrPath: dir });
  else await model.savePretrained(out);
  for (const f of ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json'])
    if (fs.existsSync(path.join(dir, f))) fs.copyFileSync(path.join(dir, f), path.join(out, f));
}
