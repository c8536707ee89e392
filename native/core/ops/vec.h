// Building blocks for the CPU kernels in ops/ that are plain C++ loops for the compiler to vectorise: bfloat16
// conversions and exp written on the bits and branch-free, so that a loop over them becomes SIMD code, and the
// processor features that pick a kernel's compiled twin at run time.
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace tunekit::vec {

using BF16 = c10::BFloat16;

#define TUNEKIT_INLINE __attribute__((always_inline)) inline

// As c10::BFloat16's conversions: round to nearest even, NaN kept.
TUNEKIT_INLINE float widen(float v) { return v; }
TUNEKIT_INLINE float widen(BF16 v) {
  uint32_t bits = uint32_t(v.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
TUNEKIT_INLINE float round_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  bits = f != f ? 0x7fc00000u : (bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
// v rounded to T's precision, kept in float.
template <typename T>
TUNEKIT_INLINE float round_to(float v) {
  if constexpr (std::is_same_v<T, BF16>) return round_bf16(v);
  return v;
}
template <typename T>
TUNEKIT_INLINE T narrow(float v) {
  if constexpr (std::is_same_v<T, BF16>) {
    uint32_t bits;
    float r = round_bf16(v);
    std::memcpy(&bits, &r, sizeof bits);
    return BF16(uint16_t(bits >> 16), BF16::from_bits());
  } else {
    return v;
  }
}

// e^x within 1 ulp of float32 on [-87.33, 88] (Cephes' expf: x = n ln2 + r with |r| <= ln2 / 2, a polynomial for e^r,
// then 2^n written into the exponent bits); beyond it the argument is clamped, so the result saturates at about 1e-38
// and 1.6e38 instead of reaching 0 and infinity. NaN stays NaN. n is rounded by adding and subtracting 1.5 * 2^23,
// which vectorises where floor() would not. Loops that call it need the optimize flags of TUNEKIT_VECTORISE.
TUNEKIT_INLINE float exp(float x) {
  x = x < -87.33f ? -87.33f : x;
  x = x > 88.0f ? 88.0f : x;  // 2^n stays a normal float
  float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  uint32_t bits = uint32_t(int32_t(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// For the section of a file that holds its kernels' loops. O3: -O2's cheap cost model leaves loops of unknown trip
// count scalar. no-trapping-math: lets a comparison (exp's clamps) become a select; it changes no result.
// no-thread-jumps: jump threading would otherwise split a loop body at a clamp into a path per outcome and compute
// them all for every lane, including a division whose discarded lanes come out denormal, which cost a microcode
// assist each (a GELU forward ran 5-15 times slower, the more so the smaller its inputs).
#define TUNEKIT_VECTORISE _Pragma("GCC optimize(\"O3\", \"no-trapping-math\", \"no-thread-jumps\")")

#if defined(__x86_64__)
// Read at load time, possibly before libgcc's own constructor has filled in the CPU model: hence the explicit init.
inline const bool kAvx2 = (__builtin_cpu_init(), __builtin_cpu_supports("avx2"));
inline const bool kAvx512 = (__builtin_cpu_init(), __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                                                       __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("fma"));
// A kernel's AVX-512 twin: 16 lanes, and bfloat16 loads and stores in one instruction.
#define TUNEKIT_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,fma,prefer-vector-width=512")))
#endif

}  // namespace tunekit::vec
