import { parseArgs, type ParseArgsConfig } from 'node:util';

export type Flags = Record<string, string | boolean | undefined>;

/**
 * The command line of a project script (pretraining, experiments, benchmarks), parsed strictly: a misspelt flag stops
 * the script with exit code 2 instead of silently running the default, which for a long job is an hour lost.
 */
export function scriptFlags(script: string, options: NonNullable<ParseArgsConfig['options']>): Flags {
  try {
    return parseArgs({ options, strict: true, allowPositionals: false }).values as Flags;
  } catch (e) {
    const known = Object.keys(options)
      .map((f) => `--${f}`)
      .join(' ');
    console.error(`${script}: ${(e as Error).message} (flags: ${known})`);
    process.exit(2);
  }
}
