// Elementwise math shared by the CPU kernels: branch-free exp/log for float32 (so loops
// over them vectorise), softplus as torch's (threshold 20, log1p accuracy), sigmoid, silu.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#define MMSHUFFLEMAMBA_HAS_MXCSR 1
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

// log for positive normal float32, branch-free: x = m 2^e with m in [sqrt(1/2), sqrt(2)),
// log(m) from Cephes' polynomial; relative error about 1e-7.
inline float log_f32(float x) {
  const int32_t bits = std::bit_cast<int32_t>(x);
  float e = static_cast<float>(((bits >> 23) & 0xff) - 126);
  float m = std::bit_cast<float>((bits & 0x007fffff) | 0x3f000000);  // in [0.5, 1)
  const bool small = m < 0.707106781186547524f;
  e = small ? e - 1.0f : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * z * m - 2.12194440e-4f * e - 0.5f * z;
  return m + y + 0.693359375f * e;
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

inline float exp_t(float x) { return exp_f32(x); }
inline float exp2_decay(float t) { return exp2_decay_f32(t); }
inline double exp2_decay(double t) { return std::exp2(t); }
inline double exp_t(double x) { return std::exp(x); }
inline float log_t(float x) { return log_f32(x); }
inline double log_t(double x) { return std::log(x); }

template <typename T>
inline void exp_inplace(T* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] = exp_t(x[i]);
}

// Per row, vectorised over time: step sizes dt = softplus(delta + bias) (or delta + bias),
// optionally their derivative, as torch's softplus (threshold 20, log1p accuracy).
template <typename T>
void step_sizes(const T* delta, T bias, bool softplus, int64_t len, T* dt, T* dt_grad) {
  if (!softplus) {
#pragma omp simd
    for (int64_t t = 0; t < len; ++t) dt[t] = delta[t] + bias;
    if (dt_grad) std::fill(dt_grad, dt_grad + len, T(1));
    return;
  }
#pragma omp simd
  for (int64_t t = 0; t < len; ++t) {
    const T x = delta[t] + bias;
    const T e = exp_t(-std::abs(x));  // in (0, 1]
    const T one_e = T(1) + e;
    const T log1p_e = one_e == T(1) ? e : log_t(one_e) * e / (one_e - T(1));
    const bool linear = x > T(kSoftplusLimit);
    dt[t] = linear ? x : (x > T(0) ? x : T(0)) + log1p_e;
    if (dt_grad) dt_grad[t] = linear ? T(1) : (x >= T(0) ? T(1) : e) / one_e;  // sigmoid
  }
}

template <typename T>
void sigmoid_row(const T* x, int64_t len, T* out) {
#pragma omp simd
  for (int64_t t = 0; t < len; ++t) out[t] = T(1) / (T(1) + exp_t(-x[t]));
}

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + exp_t(-x));
}

template <typename T>
inline T silu(T x) {
  return x * sigmoid(x);
}

// softplus(x) and its derivative sigmoid(x), as torch's softplus(threshold=20).
template <typename T>
inline T softplus(T x, T* grad) {
  const T e = exp_t(-std::abs(x));  // in (0, 1]
  const T one_e = T(1) + e;
  const T log1p_e = one_e == T(1) ? e : log_t(one_e) * e / (one_e - T(1));
  const bool linear = x > T(kSoftplusLimit);
  *grad = linear ? T(1) : (x >= T(0) ? T(1) : e) / one_e;
  return linear ? x : (x > T(0) ? x : T(0)) + log1p_e;
}

}  // namespace mmshufflemamba_cpu
