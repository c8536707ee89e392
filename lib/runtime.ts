/**
 * What the native runtime is using, and the one knob on its memory. tunekit keeps freed CPU blocks of 64 KiB and
 * more for reuse (a steady training loop then takes no page faults); `TUNEKIT_CPU_ALLOCATOR=system` turns that off and
 * `TUNEKIT_CPU_CACHE_MB` (default 2048) caps the idle memory kept. Dense layers use oneDNN where it beats MKL;
 * `TUNEKIT_GEMM=aten` sends them through aten's own matmul. All three are read once, when the addon loads.
 */
import { addon, serial } from './native';

export interface RuntimeInfo {
  /** libtorch version. */
  torch: string;
  /** Intra-op threads libtorch uses. */
  threads: number;
  /** Threads tunekit's own CPU kernels (native/core/ops/) spread their work over: `threads` in a correct build. */
  kernelThreads: number;
  cpuAllocator: 'caching' | 'system';
  /** Large blocks (64 KiB and more) only; all zero with the system allocator. */
  cpuCache: { inUseMiB: number; cachedMiB: number; peakMiB: number; hits: number; misses: number };
  gemm: 'onednn+mkl' | 'aten';
}

export function runtimeInfo(): RuntimeInfo {
  return JSON.parse(addon.torchInfo()) as RuntimeInfo;
}

/** Returns every idle cached block to the system, e.g. after training and before a long idle phase. */
export function releaseCpuCache(): Promise<void> {
  return serial(() => addon.emptyCpuCache());
}
