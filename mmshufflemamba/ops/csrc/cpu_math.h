// Elementwise math shared by the CPU kernels: branch-free exp for float32 (so loops over it
// vectorise), softplus as torch's (threshold 20, log1p accuracy), sigmoid, silu.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <type_traits>

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#define MMSHUFFLEMAMBA_HAS_MXCSR 1
#endif

// The 16-lane float32 forms below (exp2_decay_v16, exp_v16, ...) and the scans' chunk loops
// in intrinsics need AVX-512F and DQ (vreduceps); other builds run the generic loops.
#if defined(__AVX512F__) && defined(__AVX512DQ__)
#include <immintrin.h>
#define MMSHUFFLEMAMBA_HAS_AVX512 1
#endif

namespace mmshufflemamba_cpu {

// Flush denormals to zero (FTZ) and read denormal inputs as zero (DAZ) while in scope, on
// this thread. x86 handles subnormal floats in microcode, about 100 cycles per vector
// operation: a SiLU whose x * sigmoid(x) meets them ran 7x slower, and the scans' products
// of decays near exp(-87) make them too. Values below 1.2e-38 (float32) become 0. Each
// worker of a parallel region sets it for its own thread; the state is restored on exit.
class FlushDenormals {
 public:
#ifdef MMSHUFFLEMAMBA_HAS_MXCSR
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040); }
  ~FlushDenormals() { _mm_setcsr(saved_); }

 private:
  unsigned int saved_;
#endif
};

constexpr double kSoftplusLimit = 20;  // as torch.nn.functional.softplus(threshold=20)

// exp for float32 without branches, so that loops over it vectorise: Cody-Waite range
// reduction x = k ln2 + r and a degree-6 polynomial for exp(r) (Cephes' coefficients);
// relative error about 1e-7. Arguments are clamped to [-87, 88]: exp(-87) ~ 1.6e-38
// stands for zero as a decay factor. NaN propagates.
inline float exp_f32(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float k = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - k * 0.693359375f;
  r = r + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;  // 2^k
  return p * std::bit_cast<float>(bits);
}

// 2^t for the scans' decays exp(dt A) = 2^(dt A log2 e), with log2 e folded into A by the
// caller: n = round(t), 2^f for f = t - n in [-1/2, 1/2] by Cephes' degree-6 polynomial,
// times 2^n built in the exponent bits. t is clamped to [-125, 127] by min/max (single
// instructions). Measured in-cache inside the scan's recurrence: about 20% faster than
// exp_f32(dt A) (one multiply, the Cody-Waite reduction and the compare-blend clamps
// saved); relative error about 2e-6, from rounding t for large |t|, where the decay is
// already tiny.
inline float exp2_decay_f32(float t) {
  t = std::min(std::max(t, -125.0f), 127.0f);
  const float n = std::nearbyint(t);
  const float f = t - n;
  float p = 1.535336188319500e-4f;
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n
  return p * std::bit_cast<float>(bits);
}

constexpr double kLog2e = 1.44269504088896340736;

#ifdef MMSHUFFLEMAMBA_HAS_AVX512
// 2^t on 16 float32 lanes, the scans' decay where AVX-512 is compiled in: f = t - floor(t)
// in [0, 1) (vreduceps), 2^f by a degree-6 polynomial (fitted for relative error on
// [0, 1)), and 2^floor(t) applied by vscalefps, which also saturates: 0 below 2^-149
// (with FTZ, below 2^-126), inf above 2^127, NaN propagated. Nine instructions with the
// product dt * A log2 e, against about fourteen for exp2_decay_f32 auto-vectorised (its
// clamps, the rounding, and the exponent built in integer lanes); relative error below
// 1e-7 (measured over t in [-126, 10) in steps of 1.2e-4). The bare recurrence
// (bench_scan_ceiling.py's loop, standalone) ran 1.8x-2.6x as fast with it as with
// exp2_decay_f32 in six runs.
inline __m512 exp2_decay_v16(__m512 t) {
  const __m512 f = _mm512_reduce_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 p = _mm512_set1_ps(2.120031713275239e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.2580584734678268e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.664114564657211e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.549038201570511e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402283251285553e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931471228599548e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, t);
}

// exp on 16 float32 lanes: exp_f32's reduction and polynomial, with 2^k applied by
// vscalefps instead of clamps and exponent bits (so 0 below e^-104 (with FTZ, e^-87), inf
// above e^88.7, NaN propagated).
inline __m512 exp_v16(__m512 x) {
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fmadd_ps(k, _mm512_set1_ps(2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, k);
}

inline __m512 sigmoid_v16(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  return _mm512_div_ps(one, _mm512_add_ps(one, exp_v16(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

inline __m512 silu_v16(__m512 x) { return _mm512_mul_ps(x, sigmoid_v16(x)); }
#endif

inline float exp_t(float x) { return exp_f32(x); }
inline float exp2_decay(float t) { return exp2_decay_f32(t); }
inline double exp2_decay(double t) { return std::exp2(t); }
inline double exp_t(double x) { return std::exp(x); }

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + exp_t(-x));
}

template <typename T>
inline T silu(T x) {
  return x * sigmoid(x);
}

// softplus(x) = max(x, 0) + log1p(e) with e = exp(-|x|) in (0, 1], as torch's
// softplus(threshold=20), and with kSlope its derivative sigmoid(x) into *slope. float32:
// log1p(e) = 2 atanh(q), q = e / (2 + e) in (0, 1/3], by the series to q^13 (truncation
// below 2e-8 relative): no log, and one division serves q and the sigmoid. float64:
// std::log1p.
template <bool kSlope>
inline float softplus(float x, float* slope) {
  const float e = exp_f32(-std::abs(x));
  const float r = 1.0f / ((2.0f + e) * (1.0f + e));
  const float q = e * (1.0f + e) * r, q2 = q * q;
  float p = 1.0f / 13;
  p = p * q2 + 1.0f / 11;
  p = p * q2 + 1.0f / 9;
  p = p * q2 + 1.0f / 7;
  p = p * q2 + 1.0f / 5;
  p = p * q2 + 1.0f / 3;
  p = p * q2 + 1.0f;
  const bool linear = x > float(kSoftplusLimit);
  if constexpr (kSlope) *slope = linear ? 1.0f : (x >= 0.0f ? 1.0f : e) * (2.0f + e) * r;
  return linear ? x : (x > 0.0f ? x : 0.0f) + 2.0f * q * p;
}

#ifdef MMSHUFFLEMAMBA_HAS_AVX512
// softplus<kSlope> on 16 float32 lanes, the same formulas.
template <bool kSlope>
inline __m512 softplus_v16(__m512 x, __m512* slope) {
  const __m512 one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f);
  const __m512 e = exp_v16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(x)));
  const __m512 two_e = _mm512_add_ps(two, e), one_e = _mm512_add_ps(one, e);
  const __m512 r = _mm512_div_ps(one, _mm512_mul_ps(two_e, one_e));
  const __m512 q = _mm512_mul_ps(_mm512_mul_ps(e, one_e), r), q2 = _mm512_mul_ps(q, q);
  __m512 p = _mm512_set1_ps(1.0f / 13);
  p = _mm512_fmadd_ps(p, q2, _mm512_set1_ps(1.0f / 11));
  p = _mm512_fmadd_ps(p, q2, _mm512_set1_ps(1.0f / 9));
  p = _mm512_fmadd_ps(p, q2, _mm512_set1_ps(1.0f / 7));
  p = _mm512_fmadd_ps(p, q2, _mm512_set1_ps(1.0f / 5));
  p = _mm512_fmadd_ps(p, q2, _mm512_set1_ps(1.0f / 3));
  p = _mm512_fmadd_ps(p, q2, one);
  const __mmask16 linear =
      _mm512_cmp_ps_mask(x, _mm512_set1_ps(float(kSoftplusLimit)), _CMP_GT_OQ);
  if constexpr (kSlope) {
    const __mmask16 nonneg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GE_OQ);
    const __m512 s = _mm512_mul_ps(_mm512_mul_ps(_mm512_mask_blend_ps(nonneg, e, one), two_e), r);
    *slope = _mm512_mask_blend_ps(linear, s, one);
  }
  const __m512 y = _mm512_fmadd_ps(_mm512_mul_ps(two, q), p, _mm512_max_ps(x, _mm512_setzero_ps()));
  return _mm512_mask_blend_ps(linear, y, x);
}
#endif

template <bool kSlope>
inline double softplus(double x, double* slope) {
  const double e = std::exp(-std::abs(x));
  const bool linear = x > kSoftplusLimit;
  if constexpr (kSlope) *slope = linear ? 1.0 : (x >= 0.0 ? 1.0 : e) / (1.0 + e);
  return linear ? x : (x > 0.0 ? x : 0.0) + std::log1p(e);
}

// x[i] = silu(x[i]) for i < n.
template <typename T>
inline void silu_inplace(T* __restrict__ x, int64_t n) {
#ifdef MMSHUFFLEMAMBA_HAS_AVX512
  if constexpr (std::is_same_v<T, float>) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, silu_v16(_mm512_loadu_ps(x + i)));
    if (i < n) {
      const __mmask16 tail = static_cast<__mmask16>((1u << (n - i)) - 1);
      _mm512_mask_storeu_ps(x + i, tail, silu_v16(_mm512_maskz_loadu_ps(tail, x + i)));
    }
    return;
  }
#endif
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] = silu(x[i]);
}

}  // namespace mmshufflemamba_cpu
