import { parseArgs, type ParseArgsConfig } from 'node:util';
import type { Opts } from '../lib/cli/args';

/**
 * The command line of a project script (pretraining, experiments, benchmarks), parsed strictly: a misspelt flag stops
 * the script with exit code 2 instead of silently running the default, which for a long job is an hour lost.
 */
export function scriptFlags(script: string, options: NonNullable<ParseArgsConfig['options']>): Opts {
  try {
    return parseArgs({ options, strict: true, allowPositionals: false }).values as Opts;
  } catch (e) {
    const known = Object.keys(options)
      .map((f) => `--${f}`)
      .join(' ');
    console.error(`${script}: ${(e as Error).message} (flags: ${known})`);
    process.exit(2);
  }
}
