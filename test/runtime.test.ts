// The native runtime's speed paths (caching CPU allocator, oneDNN dense layers) change no result, reuse memory in a
// steady loop, and can be switched off.
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import test from 'ava';
import { releaseCpuCache, runtimeInfo } from '../lib';
import { trainSteps } from './scripts/train-steps';

const SCRIPT = path.join(__dirname, 'scripts', 'train-steps.ts');

function child(env: Record<string, string>, steps = 4) {
  const r = spawnSync(process.execPath, ['--require', 'tsx/cjs', SCRIPT, String(steps)], {
    env: { ...process.env, ...env },
    encoding: 'utf8',
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test.serial('a steady training loop takes every large block from the cache after its first steps', async (t) => {
  const r = await trainSteps(6);
  t.is(r.info.cpuAllocator, 'caching');
  t.is(r.info.kernelThreads, r.info.threads, "tunekit's own kernels run on every intra-op thread");
  t.true(r.info.cpuCache.hits > 0, 'no large block was ever reused');
  // Steps 3 to 6 allocate exactly what steps 1 and 2 freed: no new block.
  t.log(`misses after each step: ${r.misses.join(', ')}; hits ${r.info.cpuCache.hits}`);
  t.is(r.misses[5], r.misses[2], `misses per step: ${r.misses.join(', ')}`);
  t.true(r.info.cpuCache.inUseMiB >= 0 && r.info.cpuCache.peakMiB >= r.info.cpuCache.cachedMiB);
  await releaseCpuCache();
  t.is(runtimeInfo().cpuCache.cachedMiB, 0);
});

test.serial('the system allocator and aten matmuls give the same training to float32 rounding', async (t) => {
  const fast = await trainSteps(4);
  t.is(fast.info.gemm, 'onednn+mkl');
  const r = child({ TUNEKIT_CPU_ALLOCATOR: 'system', TUNEKIT_GEMM: 'aten' });
  t.is(r.status, 0, r.stderr);
  const plain = JSON.parse(r.stdout);
  t.is(plain.info.cpuAllocator, 'system');
  t.is(plain.info.gemm, 'aten');
  t.is(plain.info.cpuCache.hits + plain.info.cpuCache.misses, 0);
  t.log(`losses ${fast.losses.map((l: number, i: number) => `${l} / ${plain.losses[i]}`).join(', ')}`);
  fast.losses.forEach((l: number, i: number) =>
    t.true(Math.abs(l - plain.losses[i]) / plain.losses[i] < 1e-5, `step ${i}: ${l} vs ${plain.losses[i]}`),
  );
  t.true(Math.abs(fast.gradNorm - plain.gradNorm) / plain.gradNorm < 1e-4, `grad norm ${fast.gradNorm} vs ${plain.gradNorm}`);
  t.true(fast.losses[3] < fast.losses[0], 'the run must train for the comparison to mean anything');
});

test('a malformed TUNEKIT_CPU_CACHE_MB is refused when tunekit loads, with the variable named', (t) => {
  const r = child({ TUNEKIT_CPU_CACHE_MB: 'lots' }, 1);
  t.not(r.status, 0);
  t.regex(r.stderr, /TUNEKIT_CPU_CACHE_MB must be a whole number/);
  t.notRegex(r.stderr, /not built/);
});
