/**
 * `npm run fuzz [-- --seconds N --seed S --runs R]`: the long fuzzing runs (the suite runs a short seeded one).
 *  1. libFuzzer with AddressSanitizer and UBSan on the core's safetensors header reader (native/fuzz), for N seconds
 *     (default 120), from test/fuzz/safetensors; a crashing input is written there as crash-<sha1>, where the suite
 *     replays it from then on. Needs clang (Debian: apt install clang); without it this step says so and is skipped.
 *  2. R seeded mutations (default 5000) of each reader of untrusted files through the public API (test/fuzz/readers.ts).
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { fuzzReaders, SAFETENSORS_CORPUS } from '../test/fuzz/readers';
import { modelDir } from '../test/helpers';

const ROOT = path.resolve(__dirname, '..');
const { values } = parseArgs({ options: { seconds: { type: 'string' }, seed: { type: 'string' }, runs: { type: 'string' } } });
const seconds = Number(values.seconds ?? 120);
const seed = Number(values.seed ?? Date.now() % 2 ** 31);
const runs = Number(values.runs ?? 5000);
for (const [k, v] of Object.entries({ seconds, seed, runs })) {
  if (!Number.isInteger(v) || v < 0) throw new Error(`--${k} must be a non-negative integer`);
}

function sh(cmd: string, args: string[]): number {
  const r = spawnSync(cmd, args, { stdio: 'inherit', cwd: ROOT });
  return r.status ?? 1;
}

function nativeFuzz(): boolean {
  if (spawnSync('clang++', ['--version']).status !== 0) {
    console.log('fuzz: clang++ not found, skipping the libFuzzer run (Debian/Ubuntu: apt install clang)');
    return true;
  }
  const build = path.join(ROOT, 'build-fuzz');
  if (sh('cmake', ['-S', ROOT, '-B', build, '-DTUNEKIT_FUZZ=ON', '-DCMAKE_CXX_COMPILER=clang++']) !== 0) return false;
  if (sh('cmake', ['--build', build, '-j', String(os.cpus().length)]) !== 0) return false;
  // New interesting inputs go to a working corpus outside the repository; only crashes are kept in it.
  const work = path.join(build, 'corpus');
  fs.mkdirSync(work, { recursive: true });
  console.log(`fuzz: libFuzzer on the safetensors header reader for ${seconds} s (seed ${seed})`);
  return (
    sh(path.join(build, 'fuzz_safetensors_header'), [
      work,
      SAFETENSORS_CORPUS,
      `-max_total_time=${seconds}`,
      `-seed=${seed}`,
      '-max_len=4096',
      `-dict=${path.join(ROOT, 'test', 'fuzz', 'safetensors.dict')}`,
      `-artifact_prefix=${SAFETENSORS_CORPUS}/`,
    ]) === 0
  );
}

async function main(): Promise<void> {
  const nativeOk = nativeFuzz();
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'tunekit-fuzz-'));
  console.log(`fuzz: ${runs} mutations of each reader through the public API (seed ${seed})`);
  await fuzzReaders(
    { model: modelDir('gpt2-causal-lm'), tokenizer: modelDir('tokenizer-bpe'), work },
    { runs, seed, log: (s) => console.log(`  ${s}`) },
  );
  fs.rmSync(work, { recursive: true, force: true });
  if (!nativeOk) {
    console.error('fuzz: libFuzzer found a crash: its input is in test/fuzz/safetensors (commit it with the fix)');
    process.exitCode = 1;
  }
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exitCode = 1;
});
