// Vim's bidirectional mixer between its GEMMs, fused on CPU: the two causal depthwise
// convolutions with their SiLU, the selective scans of both directions, D, the z gate and
// the (y_f + y_b) / 2 combine; forward and backward. The step sizes' projection dt_proj is
// made here too, per chunk, from x_proj's output (a (len, D) delta would be written by one
// thin GEMM and read back by the scan, twice per pass). The other GEMMs (x_proj, the in/out
// projections) stay in torch (MKL); ops/bimamba.py strings the two together. The
// scans themselves are scan_core.h's, the same as the one-direction entry's; this file
// says where the mixer's rows live (TokenMajorIO) and what happens to the outputs.
//
// Everything is token-major, as the GEMMs produce it: (batch, len, channels) with the
// channels contiguous (rows may be strided: x and z are the two halves of in_proj's
// output xz, B and C columns of x_proj's output). The backward direction is not flipped:
// its convolution is anti-causal in the original order, and its scan walks t from L-1
// down to 0:
//   u_f[t] = silu(b_f + sum_k w_f[k] x[t - K + 1 + k])   u_b[t] = silu(b_b + sum_k w_b[k] x[t + K - 1 - k])
//   h_t = exp(dt_t A) h_{t -+ 1} + dt_t u_t B_t,  s_t = C_t . h_t + D u_t,  dt = softplus(delta + bias)
//   delta[t] = W_dt x_dbl[t, :R]   (x_dbl = x_proj(u): R step-size inputs, then B, then C)
//   y[t] = (s_f[t] + s_b[t]) silu(z[t]) / 2
// B_t and C_t are shared by all channels, so the scans broadcast them to the lanes.
//
// The element type of xz is X: the compute type T, or bfloat16 when T is float32 (in_proj's
// output under bf16 autocast), read as it is and widened exactly in the loads, so that the
// mixer neither makes nor keeps a float32 copy of it. Everything computed (u, y, the
// states, dxz) is T.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "cpu_math.h"
#include "kernels.h"
#include "scan_core.h"

namespace mmshufflemamba_cpu {
namespace {

// A (batch, len, channels) sequence with contiguous channels.
template <typename T>
struct Seq {
  T* p;
  int64_t sb, st;
  T* row(int64_t b, int64_t t) const { return p + b * sb + t * st; }
};

template <typename T>
Seq<T> seq(const at::Tensor& x, int64_t offset = 0) {
  return {x.data_ptr<T>() + offset, x.stride(0), x.stride(1)};
}

template <typename T>
Seq<const T> cseq(const at::Tensor& x, int64_t offset = 0) {
  return {x.data_ptr<T>() + offset, x.stride(0), x.stride(1)};
}

// ------------------------------------------------------------------------ convolutions
// wT: (K, D) weights transposed so that loops over channels read them contiguously.

// Channels d0 .. d0 + n of row t's pre-activations, both directions (bias + causal /
// anti-causal taps), into pf, pb. kN > 0: n is kN, a compile-time vector width, so the two
// sums stay in registers through the taps (summing into the output rows instead, a load
// and a store per tap, took about half of the convolution's time).
template <int64_t kN, typename T, typename X>
inline void conv_channels(Seq<const X> x, const T* __restrict__ wT_f, const T* __restrict__ b_f,
                          const T* __restrict__ wT_b, const T* __restrict__ b_b, int64_t b,
                          int64_t t, int64_t L, int64_t D, int64_t K, int64_t d0, int64_t n,
                          T* __restrict__ pf, T* __restrict__ pb) {
  constexpr int64_t kMax = kN > 0 ? kN : kLanes<T>;
  if constexpr (kN > 0) n = kN;
  alignas(64) T sf[kMax], sb[kMax];
#pragma omp simd
  for (int64_t l = 0; l < kMax; ++l) {
    sf[l] = l < n ? b_f[d0 + l] : T(0);
    sb[l] = l < n ? b_b[d0 + l] : T(0);
  }
  for (int64_t k = 0; k < K; ++k) {
    const int64_t tf = t - (K - 1) + k, tb = t + (K - 1) - k;
    if (tf >= 0) {
      const X* __restrict__ xr = x.row(b, tf) + d0;
      const T* __restrict__ w = wT_f + k * D + d0;
#pragma omp simd
      for (int64_t l = 0; l < kMax; ++l) sf[l] += l < n ? w[l] * static_cast<T>(xr[l]) : T(0);
    }
    if (tb < L) {
      const X* __restrict__ xr = x.row(b, tb) + d0;
      const T* __restrict__ w = wT_b + k * D + d0;
#pragma omp simd
      for (int64_t l = 0; l < kMax; ++l) sb[l] += l < n ? w[l] * static_cast<T>(xr[l]) : T(0);
    }
  }
  std::copy(sf, sf + n, pf + d0);
  std::copy(sb, sb + n, pb + d0);
}

// Row t of both directions' pre-activations into pf, pb (D each).
template <typename T, typename X>
inline void conv_preactivations(Seq<const X> x, const T* wT_f, const T* b_f, const T* wT_b,
                                const T* b_b, int64_t b, int64_t t, int64_t L, int64_t D,
                                int64_t K, T* __restrict__ pf, T* __restrict__ pb) {
  constexpr int64_t W = kLanes<T>;
  int64_t d0 = 0;
  for (; d0 + W <= D; d0 += W)
    conv_channels<W>(x, wT_f, b_f, wT_b, b_b, b, t, L, D, K, d0, W, pf, pb);
  if (d0 < D) conv_channels<0>(x, wT_f, b_f, wT_b, b_b, b, t, L, D, K, d0, D - d0, pf, pb);
}

template <typename T, typename X>
void conv_forward(Seq<const X> x, const T* wT_f, const T* b_f, const T* wT_b, const T* b_b,
                  int64_t B, int64_t L, int64_t D, int64_t K, T* u_f, T* u_b) {
  at::parallel_for(0, B * L, 16, [&](int64_t begin, int64_t end) {
    const FlushDenormals ftz;
    for (int64_t row = begin; row < end; ++row) {
      T* __restrict__ of = u_f + row * D;
      T* __restrict__ ob = u_b + row * D;
      conv_preactivations(x, wT_f, b_f, wT_b, b_b, row / L, row % L, L, D, K, of, ob);
      silu_inplace(of, D);
      silu_inplace(ob, D);
    }
  });
}

// conv_backward for rows t0 .. t1 of batch entry b on channels d0 .. d0 + n
// (kN > 0: n is kN, a vector width): dL/dx rows (the taps summed in registers, one store per
// row) and the weight and bias gradients' sums over these rows, kept in `sums` (2 (K + 1)
// vectors, L1) and added to the task's gw_f, gw_b ((K + 1, D) each) once. (Summing into dx
// and gw row by row and tap by tap, two loads and a store per tap, took about half of the
// backward convolution's time.)
constexpr int64_t kConvRows = 32;

// gp = dL/d(pre-activation) of both directions for rows a0 .. (row a at f + (a - a0) D).
template <typename T>
struct GpRows {
  const T* f;
  const T* b;
  int64_t a0;
};

template <int64_t kN, typename T, typename X>
inline void conv_grad_channels(Seq<const X> x, const T* __restrict__ wT_f,
                               const T* __restrict__ wT_b, GpRows<T> gp, int64_t b, int64_t t0,
                               int64_t t1,
                               int64_t L, int64_t D, int64_t K, int64_t d0, int64_t n, Seq<T> dx,
                               T* __restrict__ gw_f, T* __restrict__ gw_b, T* __restrict__ sums) {
  constexpr int64_t kMax = kN > 0 ? kN : kLanes<T>;
  if constexpr (kN > 0) n = kN;
  T* __restrict__ sf = sums;                  // (K + 1, kMax): taps, then bias
  T* __restrict__ sb = sums + (K + 1) * kMax;
  std::fill(sums, sums + 2 * (K + 1) * kMax, T(0));
  const T* __restrict__ gpf = gp.f + d0;  // row t at (t - gp.a0) D
  const T* __restrict__ gpb = gp.b + d0;
  for (int64_t t = t0; t < t1; ++t) {
    const T* __restrict__ gf = gpf + (t - gp.a0) * D;
    const T* __restrict__ gb = gpb + (t - gp.a0) * D;
    alignas(64) T o[kMax];
#pragma omp simd
    for (int64_t l = 0; l < kMax; ++l) {
      o[l] = T(0);
      sf[K * kMax + l] += l < n ? gf[l] : T(0);
      sb[K * kMax + l] += l < n ? gb[l] : T(0);
    }
    for (int64_t k = 0; k < K; ++k) {
      // x[t] feeds pre_f[t + K - 1 - k] and pre_b[t - K + 1 + k]
      const int64_t tf = t + (K - 1) - k, tb = t - (K - 1) + k;
      if (tf < L) {
        const T* __restrict__ g = gpf + (tf - gp.a0) * D;
        const T* __restrict__ w = wT_f + k * D + d0;
#pragma omp simd
        for (int64_t l = 0; l < kMax; ++l) o[l] += l < n ? w[l] * g[l] : T(0);
      }
      if (tb >= 0) {
        const T* __restrict__ g = gpb + (tb - gp.a0) * D;
        const T* __restrict__ w = wT_b + k * D + d0;
#pragma omp simd
        for (int64_t l = 0; l < kMax; ++l) o[l] += l < n ? w[l] * g[l] : T(0);
      }
      // dw_f[k] += gp_f[t] x[t - K + 1 + k]; dw_b[k] += gp_b[t] x[t + K - 1 - k]
      const int64_t xf = t - (K - 1) + k, xb = t + (K - 1) - k;
      if (xf >= 0) {
        const X* __restrict__ xr = x.row(b, xf) + d0;
#pragma omp simd
        for (int64_t l = 0; l < kMax; ++l)
          sf[k * kMax + l] += l < n ? gf[l] * static_cast<T>(xr[l]) : T(0);
      }
      if (xb < L) {
        const X* __restrict__ xr = x.row(b, xb) + d0;
#pragma omp simd
        for (int64_t l = 0; l < kMax; ++l)
          sb[k * kMax + l] += l < n ? gb[l] * static_cast<T>(xr[l]) : T(0);
      }
    }
    std::copy(o, o + n, dx.row(b, t) + d0);
  }
  for (int64_t k = 0; k <= K; ++k)
    for (int64_t l = 0; l < n; ++l) {
      gw_f[k * D + d0 + l] += sf[k * kMax + l];
      gw_b[k * D + d0 + l] += sb[k * kMax + l];
    }
}

// From dL/du_f and dL/du_b: dL/dx (into dx, a strided view), and per-task partial sums of
// the weight and bias gradients, partial: (tasks, 2, K + 1, D) (K weight rows, then bias).
// A task takes its rows kConvRows at a time: gp = du * silu'(pre) for those rows and the
// K - 1 on either side (the pre-activations recomputed; gp kept in a per-thread buffer of
// kConvRows + 2 (K - 1) rows, not in (B, L, D) tensors), then conv_grad_channels per vector
// of channels.
template <typename T, typename X>
void conv_backward(Seq<const X> x, const T* wT_f, const T* b_f, const T* wT_b, const T* b_b,
                   const T* du_f, const T* du_b, int64_t B, int64_t L, int64_t D, int64_t K,
                   Seq<T> dx, T* partial, int64_t tasks) {
  constexpr int64_t W = kLanes<T>;
  const int64_t rows_per_task = ceil_div(B * L, tasks), span = kConvRows + 2 * (K - 1);
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    const FlushDenormals ftz;
    Scratch<T> gp(2 * span * D), pre(2 * D), sums(2 * (K + 1) * W);
    T* __restrict__ gp_f = gp.data();
    T* __restrict__ gp_b = gp_f + span * D;
    T* __restrict__ pf = pre.data();
    T* __restrict__ pb = pf + D;
    for (int64_t task = begin; task < end; ++task) {
      T* __restrict__ gw_f = partial + task * 2 * (K + 1) * D;
      T* __restrict__ gw_b = gw_f + (K + 1) * D;
      std::fill(gw_f, gw_f + 2 * (K + 1) * D, T(0));
      const int64_t r1 = std::min(B * L, (task + 1) * rows_per_task);
      for (int64_t row = task * rows_per_task; row < r1;) {
        const int64_t b = row / L, t0 = row % L;
        const int64_t t1 = std::min({L, t0 + kConvRows, t0 + r1 - row});  // one batch entry
        const int64_t a0 = std::max<int64_t>(0, t0 - (K - 1));
        const int64_t a1 = std::min(L, t1 + (K - 1));
        for (int64_t a = a0; a < a1; ++a) {  // through the SiLUs
          conv_preactivations(x, wT_f, b_f, wT_b, b_b, b, a, L, D, K, pf, pb);
          const T* __restrict__ gf = du_f + (b * L + a) * D;
          const T* __restrict__ gb = du_b + (b * L + a) * D;
          T* __restrict__ of = gp_f + (a - a0) * D;
          T* __restrict__ ob = gp_b + (a - a0) * D;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) {
            const T sf = sigmoid(pf[d]), sb = sigmoid(pb[d]);
            of[d] = gf[d] * sf * (T(1) + pf[d] * (T(1) - sf));
            ob[d] = gb[d] * sb * (T(1) + pb[d] * (T(1) - sb));
          }
        }
        const GpRows<T> g{gp_f, gp_b, a0};
        int64_t d0 = 0;
        for (; d0 + W <= D; d0 += W)
          conv_grad_channels<W>(x, wT_f, wT_b, g, b, t0, t1, L, D, K, d0, W, dx, gw_f, gw_b,
                                sums.data());
        if (d0 < D)
          conv_grad_channels<0>(x, wT_f, wT_b, g, b, t0, t1, L, D, K, d0, D - d0, dx, gw_f,
                                gw_b, sums.data());
        row += t1 - t0;
      }
    }
  });
}


// ------------------------------------------------------------------------------- scans
// The step sizes' pre-activations of n <= kStepBlock steps on kG vectors of channels:
// out[g][j] = sum_r x[j R + r] w[g][r ld] (r < R; out[g] (n, W)). x holds kStepBlock rows of
// R values (rows past n are read, their sums dropped). The kG x kStepBlock sums stay in
// registers while w's rows stream through: per r, kG loads and kStepBlock broadcasts
// feed kG kStepBlock FMAs.
constexpr int64_t kStepBlock = 8;

template <int kG, typename T>
inline void project_steps(const T* __restrict__ x, int64_t R, const T* const* w, int64_t ld,
                          int64_t n, T* const* out) {
  constexpr int64_t W = kLanes<T>, J = kStepBlock;
#ifdef MMSHUFFLEMAMBA_HAS_AVX512
  if constexpr (std::is_same_v<T, float>) {
    __m512 acc[kG][J];
    for (int g = 0; g < kG; ++g)
      for (int64_t j = 0; j < J; ++j) acc[g][j] = _mm512_setzero_ps();
    for (int64_t r = 0; r < R; ++r) {
      __m512 wr[kG];
      for (int g = 0; g < kG; ++g) wr[g] = _mm512_loadu_ps(w[g] + r * ld);
#pragma GCC unroll 8
      for (int64_t j = 0; j < J; ++j) {
        const __m512 xj = _mm512_set1_ps(x[j * R + r]);
        for (int g = 0; g < kG; ++g) acc[g][j] = _mm512_fmadd_ps(xj, wr[g], acc[g][j]);
      }
    }
    for (int g = 0; g < kG; ++g)
      for (int64_t j = 0; j < n; ++j) _mm512_storeu_ps(out[g] + j * W, acc[g][j]);
    return;
  }
#endif
  for (int g = 0; g < kG; ++g) {
    std::fill(out[g], out[g] + n * W, T(0));
    for (int64_t r = 0; r < R; ++r)
      for (int64_t j = 0; j < n; ++j) {
        const T xr = x[j * R + r];
#pragma omp simd
        for (int64_t l = 0; l < W; ++l) out[g][j * W + l] += xr * w[g][r * ld + l];
      }
  }
}

// One direction of the mixer's scan, for scan_core.h's drivers. Rows are (batch, len, D)
// (u, y, z, dy, the gradients) or columns of x_dbl (batch, len, R + 2 N) (the step-size
// inputs, B, C); z, the second half of xz, is X (see the top).
template <typename T, typename X>
struct TokenMajorIO {
  static constexpr int64_t W = kLanes<T>;
  Seq<const T> u, xdt, Bm, Cm;  // xdt: x_dbl[..., :R]
  const T* dtw;                 // W_dt^T (R, dtw_ld), zero past D
  int64_t rank, dtw_ld;
  Seq<const X> z;
  ScanParams<T> params;
  bool reverse;  // the backward direction: scan step i is token L - 1 - i
  int64_t L, D, N;
  T* ckpt;       // (batch, nchunks, N, D)
  Seq<T> y;      // the first direction stores s, the second combines (backward: optional)
  // backward
  const T* dy;   // (batch, len, D), contiguous
  Seq<T> dz;     // dxz[..., D:]: the first direction stores, the second adds
  T *du, *ddelta, *dBC;  // (batch, len, D) twice; per task (batch, tasks, len, 2 N)
  ParamGrads<T> grads;
  int64_t tpb;

  int64_t time(int64_t i) const { return reverse ? L - 1 - i : i; }

  template <bool kBcast>
  BCView<T> load_bc(int64_t b, const LaneGroup&, int64_t i0, int64_t, T*) const {
    static_assert(kBcast, "the mixer's B and C are shared by all channels");
    const int64_t t = time(i0);
    return {Bm.row(b, t), Cm.row(b, t), reverse ? -Bm.st : Bm.st};
  }

  // The span's tiles from / to whole rows: each row is visited once for all its lane groups.
  // The delta tiles are projected from the chunk's x_dbl rows, two lane groups at a time
  // (their rows of W_dt^T, R x 128 bytes, stay in L1 over the chunk).
  void load_inputs(int64_t b, Span sp, int64_t i0, int64_t K, T* ut, T* dt) const {
    constexpr int64_t J = kStepBlock;
    T xs[kChunk * kMaxDtRank];  // the chunk's step-size inputs, R per step
    for (int64_t j = 0; j < ceil_div(K, J) * J; ++j) {  // whole blocks: rows past K repeat K - 1
      const T* __restrict__ xr = xdt.row(b, time(i0 + std::min(j, K - 1)));
      std::copy(xr, xr + rank, xs + j * rank);
    }
    for (int64_t j = 0; j < K; ++j) {
      const T* __restrict__ ur = u.row(b, time(i0 + j));
      for (int64_t g = 0; g < sp.count; ++g) {
        const LaneGroup& lg = sp.groups[g];
        load_lanes(ur + lg.d0, lg.nl, ut + (g * kChunk + j) * W);
      }
    }
    const auto project = [&]<int kG>(int64_t g) {  // lane groups g .. g + kG
      const T* w[kG];
      for (int i = 0; i < kG; ++i) w[i] = dtw + sp.groups[g + i].d0;
      for (int64_t j = 0; j < K; j += J) {
        T* out[kG];
        for (int i = 0; i < kG; ++i) out[i] = dt + ((g + i) * kChunk + j) * W;
        project_steps<kG>(xs + j * rank, rank, w, dtw_ld, std::min(J, K - j), out);
      }
    };
    int64_t g = 0;
    for (; g + 2 <= sp.count; g += 2) project.template operator()<2>(g);
    if (g < sp.count) project.template operator()<1>(g);
  }

  void store_out(int64_t b, Span sp, int64_t i0, int64_t K, const T* s) const {
    alignas(64) T zv[W], yv[W];
    for (int64_t j = 0; j < K; ++j) {
      const int64_t t = time(i0 + j);
      T* __restrict__ yrow = y.row(b, t);
      const X* __restrict__ zrow = z.row(b, t);
      for (int64_t g = 0; g < sp.count; ++g) {
        const LaneGroup& lg = sp.groups[g];
        T* __restrict__ yr = yrow + lg.d0;
        const T* __restrict__ sj = s + (g * kChunk + j) * W;
        if (!reverse) {
          store_lanes(sj, lg.nl, yr);
          continue;
        }
        load_lanes(zrow + lg.d0, lg.nl, zv);
        load_lanes(yr, lg.nl, yv);
#ifdef MMSHUFFLEMAMBA_HAS_AVX512
        if constexpr (std::is_same_v<T, float>) {
          _mm512_store_ps(yv, _mm512_mul_ps(
              _mm512_mul_ps(_mm512_set1_ps(0.5f), silu_v16(_mm512_load_ps(zv))),
              _mm512_add_ps(_mm512_load_ps(yv), _mm512_loadu_ps(sj))));
        } else
#endif
        {
#pragma omp simd
          for (int64_t l = 0; l < W; ++l) yv[l] = T(0.5) * silu(zv[l]) * (yv[l] + sj[l]);
        }
        store_lanes(yv, lg.nl, yr);
      }
    }
  }

  // Backward, before the scans: the span's u and delta tiles, and from y = (s_f + s_b) silu(z) / 2
  // gs = dL/ds = dy silu(z) / 2 and gz = dy silu'(z) / 2 (dL/dz = gz (s_f + s_b)).
  void load_backward(int64_t b, Span sp, int64_t i0, int64_t K, T* ut, T* dt, T* gs,
                     T* gz) const {
    load_inputs(b, sp, i0, K, ut, dt);
    alignas(64) T zv[W], dyv[W];
    for (int64_t j = 0; j < K; ++j) {
      const int64_t t = time(i0 + j);
      const X* __restrict__ zr = z.row(b, t);
      const T* __restrict__ dyr = dy + (b * L + t) * D;
      for (int64_t g = 0; g < sp.count; ++g) {
        const LaneGroup& lg = sp.groups[g];
        const int64_t o = (g * kChunk + j) * W;
        load_lanes(zr + lg.d0, lg.nl, zv);
        load_lanes(dyr + lg.d0, lg.nl, dyv);
#ifdef MMSHUFFLEMAMBA_HAS_AVX512
        if constexpr (std::is_same_v<T, float>) {
          const __m512 zz = _mm512_load_ps(zv), one = _mm512_set1_ps(1.0f);
          const __m512 sig = sigmoid_v16(zz);
          const __m512 half_dy = _mm512_mul_ps(_mm512_set1_ps(0.5f), _mm512_load_ps(dyv));
          _mm512_storeu_ps(gs + o, _mm512_mul_ps(_mm512_mul_ps(half_dy, zz), sig));
          const __m512 slope = _mm512_mul_ps(sig, _mm512_fmadd_ps(zz, _mm512_sub_ps(one, sig), one));
          _mm512_storeu_ps(gz + o, _mm512_mul_ps(half_dy, slope));
          continue;
        }
#endif
#pragma omp simd
        for (int64_t l = 0; l < W; ++l) {
          const T sig = sigmoid(zv[l]);
          gs[o + l] = T(0.5) * dyv[l] * zv[l] * sig;
          gz[o + l] = T(0.5) * dyv[l] * sig * (T(1) + zv[l] * (T(1) - sig));
        }
      }
    }
  }

  // Backward, after the scans: du, ddelta, and this direction's share of dL/dz, gz s (the
  // first direction stores it, the second adds); with y set, y as store_out makes it.
  void store_backward(int64_t b, Span sp, int64_t i0, int64_t K, const T* s, const T* gz,
                      const T* dut, const T* ddt) const {
    alignas(64) T dzv[W];
    for (int64_t j = 0; j < K; ++j) {
      const int64_t t = time(i0 + j), row = (b * L + t) * D;
      T* __restrict__ dzrow = dz.row(b, t);
      for (int64_t g = 0; g < sp.count; ++g) {
        const LaneGroup& lg = sp.groups[g];
        const int64_t o = (g * kChunk + j) * W;
        store_lanes(dut + o, lg.nl, du + row + lg.d0);
        store_lanes(ddt + o, lg.nl, ddelta + row + lg.d0);
        if (reverse) load_lanes(dzrow + lg.d0, lg.nl, dzv);
        else std::fill(dzv, dzv + W, T(0));
#pragma omp simd
        for (int64_t l = 0; l < W; ++l) dzv[l] += gz[o + l] * s[o + l];
        store_lanes(dzv, lg.nl, dzrow + lg.d0);
      }
    }
    if (y.p) store_out(b, sp, i0, K, s);  // y rebuilt, as the forward pass made it
  }

  template <bool kBcast>
  void add_dbc(int64_t b, int64_t part, const LaneGroup&, int64_t i0, int64_t K,
               const T* dbc) const {
    T* dst = dBC + (b * tpb + part) * L * 2 * N;
    for (int64_t j = 0; j < K; ++j) {
      T* __restrict__ d = dst + time(i0 + j) * 2 * N;
      const T* __restrict__ g = dbc + j * 2 * N;
      for (int64_t k = 0; k < 2 * N; ++k) d[k] += g[k];
    }
  }
};

// Calls f.template operator()<kN>() with kN = the state size, for the sizes compiled.
template <typename F>
void with_state_size(int64_t nstate, F&& f) {
  switch (nstate) {
    case 16: f.template operator()<16>(); break;
    case 8: f.template operator()<8>(); break;
    case 4: f.template operator()<4>(); break;
    case 1: f.template operator()<1>(); break;
    default:
      TORCH_CHECK(false, "the fused CPU mixer is compiled for d_state 1, 4, 8 and 16; got ",
                  nstate, " (the unfused path runs any d_state)");
  }
}

void check_rows(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 3 && x.stride(2) == 1 && x.device().is_cpu(),
              name, " must be a CPU (batch, len, channels) tensor with contiguous channels");
}

void check_seq(const at::Tensor& x, const at::Tensor& like, const char* name) {
  check_rows(x, name);
  TORCH_CHECK(x.scalar_type() == like.scalar_type(), name, " must be of dtype ",
              like.scalar_type(), "; got ", x.scalar_type());
}

void check_vec(const at::Tensor& v, int64_t D, const at::Tensor& like, const char* name) {
  TORCH_CHECK(v.is_contiguous() && v.numel() == D && v.scalar_type() == like.scalar_type(),
              name, " must be contiguous with ", D, " elements of dtype ", like.scalar_type());
}

// Calls f.template operator()<T, X>() with T the compute type (that of `like`: float32 or
// float64) and X the element type of xz: T, or bfloat16 where T is float32.
template <typename F>
void with_types(const at::Tensor& xz, const at::Tensor& like, F&& f) {
  check_rows(xz, "xz");
  AT_DISPATCH_FLOATING_TYPES(like.scalar_type(), "bimamba_cpu", [&] {
    if (xz.scalar_type() == like.scalar_type()) return f.template operator()<scalar_t, scalar_t>();
    if constexpr (std::is_same_v<scalar_t, float>)
      if (xz.scalar_type() == at::kBFloat16) return f.template operator()<float, c10::BFloat16>();
    TORCH_CHECK(false, "xz must be ", like.scalar_type(),
                like.scalar_type() == at::kFloat ? " or bfloat16" : "", " (the compute dtype",
                " of the weights); got ", xz.scalar_type());
  });
}


}  // namespace

// xz: (B, L, 2D); w: (D, K) or (D, 1, K); returns (u_f, u_b), each (B, L, D).
std::vector<at::Tensor> bimamba_conv_forward(const at::Tensor& xz, const at::Tensor& w_f,
                                             const at::Tensor& b_f, const at::Tensor& w_b,
                                             const at::Tensor& b_b) {
  const int64_t B = xz.size(0), L = xz.size(1), D = xz.size(2) / 2, K = w_f.size(-1);
  const auto wT_f = w_f.reshape({D, K}).t().contiguous(), wT_b = w_b.reshape({D, K}).t().contiguous();
  check_vec(b_f, D, w_f, "conv bias");
  check_vec(b_b, D, w_f, "conv bias");
  auto u_f = at::empty({B, L, D}, w_f.options()), u_b = at::empty({B, L, D}, w_f.options());
  with_types(xz, w_f, [&]<typename T, typename X>() {
    conv_forward<T, X>(cseq<X>(xz), wT_f.data_ptr<T>(), b_f.data_ptr<T>(), wT_b.data_ptr<T>(),
                       b_b.data_ptr<T>(), B, L, D, K, u_f.data_ptr<T>(), u_b.data_ptr<T>());
  });
  return {u_f, u_b};
}

// Writes dL/dx into dxz[..., :D]; returns (dw_f, db_f, dw_b, db_b) with the weights' shapes.
std::vector<at::Tensor> bimamba_conv_backward(const at::Tensor& xz, const at::Tensor& w_f,
                                              const at::Tensor& b_f, const at::Tensor& w_b,
                                              const at::Tensor& b_b, const at::Tensor& du_f,
                                              const at::Tensor& du_b, at::Tensor& dxz) {
  check_seq(dxz, w_f, "dxz");
  const int64_t B = xz.size(0), L = xz.size(1), D = xz.size(2) / 2, K = w_f.size(-1);
  TORCH_CHECK(du_f.is_contiguous() && du_b.is_contiguous(), "du must be contiguous");
  const auto wT_f = w_f.reshape({D, K}).t().contiguous(), wT_b = w_b.reshape({D, K}).t().contiguous();
  const int64_t tasks = std::max<int64_t>(1, std::min<int64_t>(B * L, 4 * at::get_num_threads()));
  auto partial = at::empty({tasks, 2, K + 1, D}, w_f.options());
  with_types(xz, w_f, [&]<typename T, typename X>() {
    conv_backward<T, X>(cseq<X>(xz), wT_f.data_ptr<T>(), b_f.data_ptr<T>(), wT_b.data_ptr<T>(),
                        b_b.data_ptr<T>(), du_f.data_ptr<T>(), du_b.data_ptr<T>(), B, L, D, K,
                        seq<T>(dxz), partial.data_ptr<T>(), tasks);
  });
  // (2, K + 1, D). The results must not alias each other: each is a copy (a (D, 1)
  // transpose counts as contiguous, so at K = 1 .contiguous() would return a view of sums).
  const auto sums = partial.sum(0);
  const auto weights = [&](int i, const at::Tensor& w) {
    return sums[i].narrow(0, 0, K).t().clone(at::MemoryFormat::Contiguous).view(w.sizes());
  };
  return {weights(0, w_f), sums[0][K].clone(), weights(1, w_b), sums[1][K].clone()};
}


namespace {

// One direction's inputs against xz's shape and u's dtype (the compute type).
void check_scan(const at::Tensor& xz, const at::Tensor& u, const at::Tensor& dt_w,
                const at::Tensor& x_dbl, const at::Tensor& A, const at::Tensor& skip,
                const at::Tensor& bias) {
  const int64_t B = xz.size(0), L = xz.size(1), D = xz.size(2) / 2, N = A.size(1);
  const int64_t rank = dt_w.dim() == 2 ? dt_w.size(1) : -1;
  check_seq(u, u, "u");
  check_seq(x_dbl, u, "x_dbl");
  TORCH_CHECK(u.size(0) == B && u.size(1) == L && u.size(2) == D, "u must be (B, L, D)");
  TORCH_CHECK(dt_w.dim() == 2 && dt_w.size(0) == D && dt_w.scalar_type() == u.scalar_type(),
              "dt_proj's weight must be (D, dt_rank) of dtype ", u.scalar_type());
  TORCH_CHECK(rank >= 1 && rank <= kMaxDtRank, "the fused CPU mixer takes dt_rank 1 to ",
              kMaxDtRank, "; got ", rank, " (the unfused path runs any dt_rank)");
  TORCH_CHECK(x_dbl.size(0) == B && x_dbl.size(1) == L && x_dbl.size(2) == rank + 2 * N,
              "x_dbl must be (B, L, dt_rank + 2 N)");
  TORCH_CHECK(A.is_contiguous() && A.size(0) == D && A.scalar_type() == u.scalar_type(),
              "A must be contiguous (D, N)");
  check_vec(skip, D, u, "D");
  check_vec(bias, D, u, "delta_bias");
}

// dt_proj's weight (D, R) as the scans read it: W_dt^T (R, D rounded up to whole vectors),
// zero past D, so that a partial lane group's last lanes get zero step sizes. A plain loop:
// torch's zeros + strided copy took about 25 us per call at (768, 24).
template <typename T>
at::Tensor step_weights(const at::Tensor& dt_w) {
  const int64_t D = dt_w.size(0), R = dt_w.size(1), ld = ceil_div(D, kLanes<T>) * kLanes<T>;
  const int64_t sd = dt_w.stride(0), sr = dt_w.stride(1);
  auto wT = at::empty({R, ld}, dt_w.options());
  const T* __restrict__ w = dt_w.data_ptr<T>();
  T* __restrict__ out = wT.data_ptr<T>();
  for (int64_t d = 0; d < D; ++d)
    for (int64_t r = 0; r < R; ++r) out[r * ld + d] = w[d * sd + r * sr];
  for (int64_t r = 0; r < R; ++r) std::fill(out + r * ld + D, out + (r + 1) * ld, T(0));
  return wT;
}

// One direction's IO with its inputs (dtw: step_weights); outputs and gradients are set by
// the caller.
template <typename T, typename X>
TokenMajorIO<T, X> direction(const at::Tensor& xz, const at::Tensor& u, const at::Tensor& dtw,
                             const at::Tensor& x_dbl, const at::Tensor& A,
                             const at::Tensor& skip, const at::Tensor& bias, bool reverse,
                             const at::Tensor& ckpt) {
  TokenMajorIO<T, X> io{};
  const int64_t D = xz.size(2) / 2, N = A.size(1), rank = dtw.size(0);
  io.u = cseq<T>(u);
  io.xdt = cseq<T>(x_dbl);
  io.dtw = dtw.data_ptr<T>();
  io.rank = rank;
  io.dtw_ld = dtw.size(1);
  io.Bm = cseq<T>(x_dbl, rank);
  io.Cm = cseq<T>(x_dbl, rank + N);
  io.z = cseq<X>(xz, D);
  io.params = {A.data_ptr<T>(), skip.data_ptr<T>(), bias.data_ptr<T>(), true};
  io.reverse = reverse;
  io.L = xz.size(1);
  io.D = D;
  io.N = N;
  io.ckpt = ckpt.data_ptr<T>();
  return io;
}

}  // namespace

// Returns (y (B, L, D), ckpt_f, ckpt_b (B, nchunks, N, D)); z is xz[..., D:].
std::vector<at::Tensor> bimamba_scan_forward(
    const at::Tensor& xz, const at::Tensor& u_f, const at::Tensor& u_b, const at::Tensor& dt_w_f,
    const at::Tensor& dt_w_b, const at::Tensor& x_dbl_f, const at::Tensor& x_dbl_b,
    const at::Tensor& A_f, const at::Tensor& A_b, const at::Tensor& D_f, const at::Tensor& D_b,
    const at::Tensor& bias_f, const at::Tensor& bias_b) {
  check_scan(xz, u_f, dt_w_f, x_dbl_f, A_f, D_f, bias_f);
  check_scan(xz, u_b, dt_w_b, x_dbl_b, A_b, D_b, bias_b);
  const int64_t B = xz.size(0), L = xz.size(1), D = xz.size(2) / 2, N = A_f.size(1);
  auto y = at::empty({B, L, D}, u_f.options());
  auto ckpt_f = at::empty({B, ceil_div(L, kChunk), N, D}, u_f.options());
  auto ckpt_b = at::empty_like(ckpt_f);
  with_types(xz, u_f, [&]<typename T, typename X>() {
    const auto dtw_f = step_weights<T>(dt_w_f), dtw_b = step_weights<T>(dt_w_b);
    TokenMajorIO<T, X> dirs[2] = {
        direction<T, X>(xz, u_f, dtw_f, x_dbl_f, A_f, D_f, bias_f, false, ckpt_f),
        direction<T, X>(xz, u_b, dtw_b, x_dbl_b, A_b, D_b, bias_b, true, ckpt_b)};
    for (auto& io : dirs) io.y = seq<T>(y);
    const auto groups = lane_groups<T>(D, D);
    const int64_t tpb = wide_tasks_per_batch(groups.size(), B);
    with_state_size(N, [&]<int kN>() {
      scan_forward<T, kN, true>(dirs, 2, groups, B, L, N, D, tpb);
    });
  });
  return {y, ckpt_f, ckpt_b};
}

// Writes dL/dz into dxz[..., D:] and, when y (B, L, D) is given, the forward pass's output
// into it, rebuilt from the outputs the backward pass recomputes anyway (so that a caller
// that projects y need not keep it); returns, per direction f then b: du (B, L, D),
// ddelta (B, L, D), dBC (B, L, 2 N: dB then dC), dA (D, N), dD (D,), dbias (D,).
std::vector<at::Tensor> bimamba_scan_backward(
    const at::Tensor& dy, const at::Tensor& xz, const at::Tensor& u_f, const at::Tensor& u_b,
    const at::Tensor& dt_w_f, const at::Tensor& dt_w_b, const at::Tensor& x_dbl_f,
    const at::Tensor& x_dbl_b, const at::Tensor& A_f, const at::Tensor& A_b,
    const at::Tensor& D_f, const at::Tensor& D_b, const at::Tensor& bias_f,
    const at::Tensor& bias_b, const at::Tensor& ckpt_f, const at::Tensor& ckpt_b, at::Tensor& dxz,
    const c10::optional<at::Tensor>& y) {
  check_seq(dxz, u_f, "dxz");
  check_scan(xz, u_f, dt_w_f, x_dbl_f, A_f, D_f, bias_f);
  check_scan(xz, u_b, dt_w_b, x_dbl_b, A_b, D_b, bias_b);
  const int64_t B = xz.size(0), L = xz.size(1), D = xz.size(2) / 2, N = A_f.size(1);
  TORCH_CHECK(dy.is_contiguous() && dy.sizes() == u_f.sizes(), "dy must be contiguous (B, L, D)");
  if (y) check_seq(*y, u_f, "y");
  TORCH_CHECK(!y || y->sizes() == u_f.sizes(), "y must be (B, L, D)");
  TORCH_CHECK(ckpt_f.is_contiguous() && ckpt_b.is_contiguous() &&
                  ckpt_f.sizes() == at::IntArrayRef({B, ceil_div(L, kChunk), N, D}) &&
                  ckpt_b.sizes() == ckpt_f.sizes(),
              "checkpoints do not match the inputs");
  auto opts = u_f.options();
  std::vector<at::Tensor> out;
  at::Tensor du[2], ddelta[2], dBC[2], dA[2], dskip[2], dbias[2];
  with_types(xz, u_f, [&]<typename T, typename X>() {
    const auto groups = lane_groups<T>(D, D);
    const int64_t tpb = wide_tasks_per_batch(groups.size(), B);
    const auto dtw_f = step_weights<T>(dt_w_f), dtw_b = step_weights<T>(dt_w_b);
    TokenMajorIO<T, X> dirs[2] = {
        direction<T, X>(xz, u_f, dtw_f, x_dbl_f, A_f, D_f, bias_f, false, ckpt_f),
        direction<T, X>(xz, u_b, dtw_b, x_dbl_b, A_b, D_b, bias_b, true, ckpt_b)};
    for (int i = 0; i < 2; ++i) {
      du[i] = at::empty({B, L, D}, opts);
      ddelta[i] = at::empty({B, L, D}, opts);
      dBC[i] = at::zeros({B, tpb, L, 2 * N}, opts);
      dA[i] = at::empty({B, D, N}, opts);
      dskip[i] = at::empty({B, D}, opts);
      dbias[i] = at::empty({B, D}, opts);
      auto& io = dirs[i];
      io.dy = dy.data_ptr<T>();
      io.dz = seq<T>(dxz, D);
      io.du = du[i].data_ptr<T>();
      io.ddelta = ddelta[i].data_ptr<T>();
      io.dBC = dBC[i].data_ptr<T>();
      io.grads = {dA[i].data_ptr<T>(), dskip[i].data_ptr<T>(), dbias[i].data_ptr<T>()};
      io.tpb = tpb;
      if (y) io.y = seq<T>(*y);
    }
    with_state_size(N, [&]<int kN>() {
      scan_backward<T, kN, true>(dirs, 2, groups, B, L, N, D, tpb);
    });
  });
  for (int i = 0; i < 2; ++i) {
    out.push_back(du[i]);
    out.push_back(ddelta[i]);
    out.push_back(dBC[i].sum(1));
    out.push_back(dA[i].sum(0));
    out.push_back(dskip[i].sum(0));
    out.push_back(dbias[i].sum(0));
  }
  return out;
}

}  // namespace mmshufflemamba_cpu
