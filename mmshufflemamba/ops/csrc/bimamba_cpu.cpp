// Vim's bidirectional mixer between its GEMMs, fused on CPU: the two causal depthwise
// convolutions with their SiLU, the selective scans of both directions, D, the z gate and
// the (y_f + y_b) / 2 combine; forward and backward. The GEMMs (x_proj, dt_proj, and the
// in/out projections) stay in torch (MKL); ops/bimamba.py strings the two together.
//
// Everything is token-major, as the GEMMs produce it: (batch, len, channels) with the
// channels contiguous (rows may be strided: x and z are the two halves of in_proj's
// output xz, B and C columns of x_proj's output). The backward direction is not flipped:
// its convolution is anti-causal in the original order, and its scan walks t from L-1
// down to 0:
//   u_f[t] = silu(b_f + sum_k w_f[k] x[t - K + 1 + k])   u_b[t] = silu(b_b + sum_k w_b[k] x[t + K - 1 - k])
//   h_t = exp(dt_t A) h_{t -+ 1} + dt_t u_t B_t,  s_t = C_t . h_t + D u_t,  dt = softplus(delta + bias)
//   y[t] = (s_f[t] + s_b[t]) silu(z[t]) / 2
//
// Scan layout: one task per (batch, group of kLanes channels); the lanes of a vector are
// channels, so every step is vertical vector work over the states n (no horizontal sums in
// the forward pass): per step and state, one vector exp, one FMA for h, one for s. The
// backward pass recomputes each chunk's states from the checkpoint the forward pass stored
// before it (one per kChunk steps), then runs the adjoint recurrence; the gradients of B
// and C are sums over channels (a horizontal sum per step and state), kept per task and
// reduced afterwards, so no two tasks write the same memory.
//
// Speed: the scan is bound by the exponentials, N per channel and step (16 for Vim): per
// state and step one vector exp2_decay (clamp, round, a degree-6 polynomial, the exponent
// bits: about 14 vector instructions for 16 lanes) and two FMAs. The limit is that
// arithmetic alone; benchmarks/bench_scan_ceiling.py times it (in L1, all threads, this
// header's exp2_decay and flags) alternately with this forward scan in a ShuffleMamba-S
// mixer at L = 4097. On the 2-core AVX-512 VM (2026-11-22) the bare arithmetic ran at
// 6.8-8.3 G state updates/s and this scan at 2.8-2.9 G/s: 36% and 44% of it (medians of
// two runs; single pairs 31-50%). The difference is what the bare loop leaves out (softplus
// per step, staging the strided token-major rows, broadcasting B and C, writing y, the
// chunk checkpoints); it has not been broken down further.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "cpu_math.h"
#include "kernels.h"

namespace mmshufflemamba_cpu {
namespace {

template <typename T>
constexpr int64_t kLanes = 64 / sizeof(T);  // channels per vector: one 512-bit register
constexpr int64_t kChunk = 32;              // steps per checkpoint / recomputation

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

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Tasks per batch entry for the scans: enough for every thread, few partial buffers.
int64_t scan_tasks_per_batch(int64_t groups, int64_t batch) {
  const int64_t wanted = 4 * static_cast<int64_t>(at::get_num_threads());
  return std::min(groups, std::max<int64_t>(1, ceil_div(wanted, batch)));
}

// ------------------------------------------------------------------------ convolutions
// wT: (K, D) weights transposed so that loops over channels read them contiguously.

// Row t of both directions' pre-activations (bias + causal / anti-causal taps) into pf, pb.
template <typename T>
inline void conv_preactivations(Seq<const T> x, const T* wT_f, const T* b_f, const T* wT_b,
                                const T* b_b, int64_t b, int64_t t, int64_t L, int64_t D,
                                int64_t K, T* __restrict__ pf, T* __restrict__ pb) {
  std::copy(b_f, b_f + D, pf);
  std::copy(b_b, b_b + D, pb);
  for (int64_t k = 0; k < K; ++k) {
    const int64_t tf = t - (K - 1) + k, tb = t + (K - 1) - k;
    if (tf >= 0) {
      const T* __restrict__ xr = x.row(b, tf);
      const T* __restrict__ w = wT_f + k * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) pf[d] += w[d] * xr[d];
    }
    if (tb < L) {
      const T* __restrict__ xr = x.row(b, tb);
      const T* __restrict__ w = wT_b + k * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) pb[d] += w[d] * xr[d];
    }
  }
}

template <typename T>
void conv_forward(Seq<const T> x, const T* wT_f, const T* b_f, const T* wT_b, const T* b_b,
                  int64_t B, int64_t L, int64_t D, int64_t K, T* u_f, T* u_b) {
  at::parallel_for(0, B * L, 16, [&](int64_t begin, int64_t end) {
    const FlushDenormals ftz;
    for (int64_t row = begin; row < end; ++row) {
      T* __restrict__ of = u_f + row * D;
      T* __restrict__ ob = u_b + row * D;
      conv_preactivations(x, wT_f, b_f, wT_b, b_b, row / L, row % L, L, D, K, of, ob);
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) {
        of[d] = silu(of[d]);
        ob[d] = silu(ob[d]);
      }
    }
  });
}

// From dL/du_f and dL/du_b: dL/dx (into dx, a strided view), and per-task partial sums of
// the weight and bias gradients, partial: (tasks, 2, K + 1, D) (K weight rows, then bias).
template <typename T>
void conv_backward(Seq<const T> x, const T* wT_f, const T* b_f, const T* wT_b, const T* b_b,
                   const T* du_f, const T* du_b, int64_t B, int64_t L, int64_t D, int64_t K,
                   Seq<T> dx, T* gp_f, T* gp_b, T* partial, int64_t tasks) {
  // 1. through the SiLUs: gp = du * silu'(pre), with the pre-activations recomputed
  at::parallel_for(0, B * L, 16, [&](int64_t begin, int64_t end) {
    const FlushDenormals ftz;
    std::vector<T> pre_buf(2 * D);
    T* __restrict__ pf = pre_buf.data();
    T* __restrict__ pb = pf + D;
    for (int64_t row = begin; row < end; ++row) {
      conv_preactivations(x, wT_f, b_f, wT_b, b_b, row / L, row % L, L, D, K, pf, pb);
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) {
        const T sf = sigmoid(pf[d]), sb = sigmoid(pb[d]);
        gp_f[row * D + d] = du_f[row * D + d] * sf * (T(1) + pf[d] * (T(1) - sf));
        gp_b[row * D + d] = du_b[row * D + d] * sb * (T(1) + pb[d] * (T(1) - sb));
      }
    }
  });
  // 2. dx, and the weight/bias gradients summed per task over its rows
  const int64_t rows_per_task = ceil_div(B * L, tasks);
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    const FlushDenormals ftz;
    for (int64_t task = begin; task < end; ++task) {
      T* __restrict__ gw_f = partial + task * 2 * (K + 1) * D;
      T* __restrict__ gw_b = gw_f + (K + 1) * D;
      std::fill(gw_f, gw_f + 2 * (K + 1) * D, T(0));
      const int64_t r1 = std::min(B * L, (task + 1) * rows_per_task);
      for (int64_t row = task * rows_per_task; row < r1; ++row) {
        const int64_t b = row / L, t = row % L;
        T* __restrict__ out = dx.row(b, t);
        std::fill(out, out + D, T(0));
        const T* __restrict__ gf = gp_f + row * D;
        const T* __restrict__ gb = gp_b + row * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) {
          gw_f[K * D + d] += gf[d];
          gw_b[K * D + d] += gb[d];
        }
        for (int64_t k = 0; k < K; ++k) {
          // x[t] feeds pre_f[t + K - 1 - k] and pre_b[t - K + 1 + k]
          const int64_t tf = t + (K - 1) - k, tb = t - (K - 1) + k;
          if (tf < L) {
            const T* __restrict__ g = gp_f + (b * L + tf) * D;
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) out[d] += wT_f[k * D + d] * g[d];
          }
          if (tb >= 0) {
            const T* __restrict__ g = gp_b + (b * L + tb) * D;
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) out[d] += wT_b[k * D + d] * g[d];
          }
          // dw_f[k] += gp_f[t] x[t - K + 1 + k]; dw_b[k] += gp_b[t] x[t + K - 1 - k]
          const int64_t sf = t - (K - 1) + k, sb = t + (K - 1) - k;
          if (sf >= 0) {
            const T* __restrict__ xr = x.row(b, sf);
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) gw_f[k * D + d] += gf[d] * xr[d];
          }
          if (sb < L) {
            const T* __restrict__ xr = x.row(b, sb);
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) gw_b[k * D + d] += gb[d] * xr[d];
          }
        }
      }
    }
  });
}

// ------------------------------------------------------------------------------- scans
template <typename T>
struct Direction {
  Seq<const T> u, delta, Bm, Cm;  // (batch, len, D) and (batch, len, N)
  const T* A;                     // (D, N)
  const T* skip;                  // D: (D,)
  const T* bias;                  // (D,)
  bool reverse;
  int64_t time(int64_t i, int64_t L) const { return reverse ? L - 1 - i : i; }
};

// One group's constants, lanes = channels d0 .. d0 + kLanes (zero past D).
template <typename T, int kN>
struct GroupConsts {
  static constexpr int64_t W = kLanes<T>;
  T AT[kN][W], AT2[kN][W], skip[W], bias[W];  // AT2 = A log2 e, for exp2_decay
  int64_t nl;

  GroupConsts(const Direction<T>& s, int64_t d0, int64_t D) : nl(std::min(W, D - d0)) {
    for (int64_t n = 0; n < kN; ++n)
      for (int64_t i = 0; i < W; ++i) {
        AT[n][i] = i < nl ? s.A[(d0 + i) * kN + n] : T(0);
        AT2[n][i] = AT[n][i] * T(kLog2e);
      }
    for (int64_t i = 0; i < W; ++i) {
      skip[i] = i < nl ? s.skip[d0 + i] : T(0);
      bias[i] = i < nl ? s.bias[d0 + i] : T(0);
    }
  }
};

template <typename T>
inline void load_lanes(const T* src, int64_t nl, T* dst) {
  constexpr int64_t W = kLanes<T>;
  if (nl == W) {
    std::copy(src, src + W, dst);
  } else {
    std::copy(src, src + nl, dst);
    std::fill(dst + nl, dst + W, T(0));
  }
}

// Checkpoints: (batch, nchunks, N, D), the state before each chunk of the direction.
// A task covers several groups of lanes and walks them chunk by chunk, so that the
// chunk's B and C (shared by all channels) stay in cache while its groups use them.
template <typename T, int kN>
void scan_forward(const Direction<T> dirs[2], Seq<const T> z, int64_t B, int64_t L, int64_t D,
                  Seq<T> y, T* ckpt_f, T* ckpt_b, int64_t tasks_per_batch) {
  constexpr int64_t W = kLanes<T>;
  const int64_t groups = ceil_div(D, W), nchunks = ceil_div(L, kChunk);
  const int64_t groups_per_task = ceil_div(groups, tasks_per_batch);
  at::parallel_for(0, B * tasks_per_batch, 1, [&](int64_t begin, int64_t end) {
    const FlushDenormals ftz;
    std::vector<T> h_buf(groups_per_task * kN * W);
    // one chunk staged contiguously: B and C for all groups, u, delta and y for one group
    // (rows are far apart in memory: loading them first lets their cache misses overlap)
    std::vector<T> bc_buf(kChunk * 2 * kN), u_buf(kChunk * W), dt_buf(kChunk * W),
        y_buf(kChunk * W);
    alignas(64) T dtu[W], s[W], zv[W];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / tasks_per_batch, part = task % tasks_per_batch;
      const int64_t g0 = part * groups_per_task, g1 = std::min(groups, g0 + groups_per_task);
      if (g0 >= g1) continue;
      for (int dir = 0; dir < 2; ++dir) {
        const Direction<T>& sd = dirs[dir];
        std::vector<GroupConsts<T, kN>> consts;
        consts.reserve(g1 - g0);
        for (int64_t grp = g0; grp < g1; ++grp) consts.emplace_back(sd, grp * W, D);
        T* ckpt = dir == 0 ? ckpt_f : ckpt_b;
        std::fill(h_buf.begin(), h_buf.end(), T(0));
        for (int64_t c = 0; c < nchunks; ++c) {
          const int64_t i0 = c * kChunk, K = std::min(L, i0 + kChunk) - i0;
          for (int64_t j = 0; j < K; ++j) {
            const int64_t t = sd.time(i0 + j, L);
            std::copy(sd.Bm.row(b, t), sd.Bm.row(b, t) + kN, bc_buf.data() + j * 2 * kN);
            std::copy(sd.Cm.row(b, t), sd.Cm.row(b, t) + kN, bc_buf.data() + j * 2 * kN + kN);
          }
          for (int64_t grp = g0; grp < g1; ++grp) {
            const GroupConsts<T, kN>& g = consts[grp - g0];
            const int64_t d0 = grp * W;
            T (*h)[W] = reinterpret_cast<T (*)[W]>(h_buf.data() + (grp - g0) * kN * W);
            T* ck = ckpt + (b * nchunks + c) * kN * D + d0;
            for (int64_t n = 0; n < kN; ++n) std::copy(h[n], h[n] + g.nl, ck + n * D);
            for (int64_t j = 0; j < K; ++j) {
              const int64_t t = sd.time(i0 + j, L);
              load_lanes(sd.u.row(b, t) + d0, g.nl, u_buf.data() + j * W);
              load_lanes(sd.delta.row(b, t) + d0, g.nl, dt_buf.data() + j * W);
              // the rows are 3 KB and more apart (a new page each): ask for the next
              // chunk's now, so that they are in cache when this group gets there
              if (i0 + kChunk + j < L) {
                const int64_t tn = sd.time(i0 + kChunk + j, L);
                __builtin_prefetch(sd.u.row(b, tn) + d0);
                __builtin_prefetch(sd.delta.row(b, tn) + d0);
                __builtin_prefetch(y.row(b, tn) + d0, 1);
                if (dir == 1) __builtin_prefetch(z.row(b, tn) + d0);
              }
            }
            for (int64_t j = 0; j < K; ++j) {
              const T* __restrict__ u = u_buf.data() + j * W;
              T* __restrict__ dt = dt_buf.data() + j * W;
#pragma omp simd
              for (int64_t l = 0; l < W; ++l) {
                T unused;
                dt[l] = softplus(dt[l] + g.bias[l], &unused);
                dtu[l] = dt[l] * u[l];
                s[l] = g.skip[l] * u[l];
              }
              const T* __restrict__ Bt = bc_buf.data() + j * 2 * kN;
              const T* __restrict__ Ct = Bt + kN;
              for (int64_t n = 0; n < kN; ++n) {
                const T bn = Bt[n], cn = Ct[n];
#pragma omp simd
                for (int64_t l = 0; l < W; ++l) {
                  h[n][l] = exp2_decay(dt[l] * g.AT2[n][l]) * h[n][l] + dtu[l] * bn;
                  s[l] += cn * h[n][l];
                }
              }
              std::copy(s, s + W, y_buf.data() + j * W);
            }
            for (int64_t j = 0; j < K; ++j) {
              const int64_t t = sd.time(i0 + j, L);
              T* __restrict__ yr = y.row(b, t) + d0;
              const T* __restrict__ sj = y_buf.data() + j * W;
              if (dir == 0) {
                std::copy(sj, sj + g.nl, yr);
              } else {
                load_lanes(z.row(b, t) + d0, g.nl, zv);
#pragma omp simd
                for (int64_t l = 0; l < W; ++l) zv[l] = T(0.5) * silu(zv[l]);
                for (int64_t l = 0; l < g.nl; ++l) yr[l] = zv[l] * (yr[l] + sj[l]);
              }
            }
          }
        }
      }
    }
  });
}

// Outputs of the backward scan for one direction.
template <typename T>
struct DirectionGrads {
  T* du;      // (batch, len, D), contiguous
  T* ddelta;  // (batch, len, D), contiguous
  T* dBC;     // per task: (batch, tasks_per_batch, len, 2, N): dB then dC
  T* dA;      // (batch, D, N)
  T* dskip;   // (batch, D)
  T* dbias;   // (batch, D)
};

template <typename T, int kN>
void scan_backward(const Direction<T> dirs[2], Seq<const T> z, const T* dy, int64_t B,
                   int64_t L, int64_t D, const T* ckpt_f, const T* ckpt_b,
                   const DirectionGrads<T> grads[2], Seq<T> dz, int64_t tasks_per_batch) {
  constexpr int64_t W = kLanes<T>;
  const int64_t groups = ceil_div(D, W), nchunks = ceil_div(L, kChunk);
  const int64_t groups_per_task = ceil_div(groups, tasks_per_batch);
  at::parallel_for(0, B * tasks_per_batch, 1, [&](int64_t begin, int64_t end) {
    const FlushDenormals ftz;
    // per chunk: states h_{t0-1} .. and decays, step sizes, their slopes, inputs, outputs
    std::vector<T> h_buf((kChunk + 1) * kN * W), a_buf(kChunk * kN * W);
    std::vector<T> dt_buf(kChunk * W), dtg_buf(kChunk * W), u_buf(kChunk * W), s_buf(kChunk * W);
    alignas(64) T carry[kN][W], dA[kN][W], dskip[W], dbias[W], gs[W], gdtu[W], gdt[W], zv[W],
        dyv[W], dzv[W];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / tasks_per_batch, part = task % tasks_per_batch;
      const int64_t g1 = std::min(groups, (part + 1) * groups_per_task);
      for (int64_t grp = part * groups_per_task; grp < g1; ++grp) {
        const int64_t d0 = grp * W;
        for (int dir = 0; dir < 2; ++dir) {
          const Direction<T>& sd = dirs[dir];
          const DirectionGrads<T>& gd = grads[dir];
          const GroupConsts<T, kN> g(sd, d0, D);
          const T* ckpt = dir == 0 ? ckpt_f : ckpt_b;
          T* dBC = gd.dBC + (b * tasks_per_batch + part) * L * 2 * kN;
          std::fill(&carry[0][0], &carry[0][0] + kN * W, T(0));
          std::fill(&dA[0][0], &dA[0][0] + kN * W, T(0));
          std::fill(dskip, dskip + W, T(0));
          std::fill(dbias, dbias + W, T(0));
          for (int64_t c = nchunks - 1; c >= 0; --c) {
            const int64_t i0 = c * kChunk, K = std::min(L, i0 + kChunk) - i0;
            T* h = h_buf.data();
            T* a = a_buf.data();
            const T* ck = ckpt + (b * nchunks + c) * kN * D + d0;
            for (int64_t n = 0; n < kN; ++n) load_lanes(ck + n * D, g.nl, h + n * W);
            if (c > 0) {  // the previous chunk's rows, 3 KB and more apart: ask for them now
              for (int64_t j = 0; j < kChunk; ++j) {
                const int64_t tp = sd.time(i0 - kChunk + j, L);
                __builtin_prefetch(sd.u.row(b, tp) + d0);
                __builtin_prefetch(sd.delta.row(b, tp) + d0);
                __builtin_prefetch(z.row(b, tp) + d0);
                __builtin_prefetch(dy + (b * L + tp) * D + d0);
                __builtin_prefetch(dz.row(b, tp) + d0, 1);
                __builtin_prefetch(gd.du + (b * L + tp) * D + d0, 1);
                __builtin_prefetch(gd.ddelta + (b * L + tp) * D + d0, 1);
              }
            }
            for (int64_t j = 0; j < K; ++j) {  // recompute the chunk's states
              const int64_t t = sd.time(i0 + j, L);
              T* u = u_buf.data() + j * W;
              T* dt = dt_buf.data() + j * W;
              T* dtg = dtg_buf.data() + j * W;
              T* s = s_buf.data() + j * W;
              load_lanes(sd.u.row(b, t) + d0, g.nl, u);
              load_lanes(sd.delta.row(b, t) + d0, g.nl, dt);
#pragma omp simd
              for (int64_t l = 0; l < W; ++l) {
                dt[l] = softplus(dt[l] + g.bias[l], &dtg[l]);
                s[l] = g.skip[l] * u[l];
              }
              const T* __restrict__ Bt = sd.Bm.row(b, t);
              const T* __restrict__ Ct = sd.Cm.row(b, t);
              for (int64_t n = 0; n < kN; ++n) {
                const T bn = Bt[n], cn = Ct[n];
                const T* __restrict__ hp = h + (j * kN + n) * W;
                T* __restrict__ hn = h + ((j + 1) * kN + n) * W;
                T* __restrict__ an = a + (j * kN + n) * W;
#pragma omp simd
                for (int64_t l = 0; l < W; ++l) {
                  an[l] = exp2_decay(dt[l] * g.AT2[n][l]);
                  hn[l] = an[l] * hp[l] + dt[l] * u[l] * bn;
                  s[l] += cn * hn[l];
                }
              }
            }
            for (int64_t j = K - 1; j >= 0; --j) {  // the adjoint recurrence, backwards
              const int64_t t = sd.time(i0 + j, L);
              const T* u = u_buf.data() + j * W;
              const T* dt = dt_buf.data() + j * W;
              const T* dtg = dtg_buf.data() + j * W;
              const T* s = s_buf.data() + j * W;
              load_lanes(z.row(b, t) + d0, g.nl, zv);
              load_lanes(dy + (b * L + t) * D + d0, g.nl, dyv);
#pragma omp simd
              for (int64_t l = 0; l < W; ++l) {  // y = (s_f + s_b) silu(z) / 2
                const T sig = sigmoid(zv[l]);
                gs[l] = T(0.5) * dyv[l] * zv[l] * sig;
                dzv[l] = T(0.5) * dyv[l] * s[l] * sig * (T(1) + zv[l] * (T(1) - sig));
                gdtu[l] = T(0);
                gdt[l] = T(0);
              }
              T* __restrict__ dzr = dz.row(b, t) + d0;
              for (int64_t l = 0; l < g.nl; ++l) dzr[l] = dir == 0 ? dzv[l] : dzr[l] + dzv[l];
              const T* __restrict__ Bt = sd.Bm.row(b, t);
              const T* __restrict__ Ct = sd.Cm.row(b, t);
              T* __restrict__ dBt = dBC + t * 2 * kN;
              T* __restrict__ dCt = dBt + kN;
              for (int64_t n = 0; n < kN; ++n) {
                const T bn = Bt[n], cn = Ct[n];
                const T* __restrict__ hp = h + (j * kN + n) * W;
                const T* __restrict__ hn = h + ((j + 1) * kN + n) * W;
                const T* __restrict__ an = a + (j * kN + n) * W;
                T acc_b = T(0), acc_c = T(0);
#pragma omp simd reduction(+ : acc_b, acc_c)
                for (int64_t l = 0; l < W; ++l) {
                  const T gh = cn * gs[l] + carry[n][l];  // dL/dh_t
                  acc_c += gs[l] * hn[l];
                  acc_b += gh * dt[l] * u[l];
                  gdtu[l] += gh * bn;
                  const T gdec = gh * hp[l] * an[l];  // dL/d(dt A) through the exp
                  gdt[l] += gdec * g.AT[n][l];
                  dA[n][l] += gdec * dt[l];
                  carry[n][l] = an[l] * gh;
                }
                dBt[n] += acc_b;
                dCt[n] += acc_c;
              }
              T* __restrict__ du = gd.du + (b * L + t) * D + d0;
              T* __restrict__ ddelta = gd.ddelta + (b * L + t) * D + d0;
#pragma omp simd
              for (int64_t l = 0; l < W; ++l) {
                gdt[l] = (gdt[l] + gdtu[l] * u[l]) * dtg[l];  // now dL/d(delta)
                dskip[l] += gs[l] * u[l];
                dbias[l] += gdt[l];
                gdtu[l] = gs[l] * g.skip[l] + gdtu[l] * dt[l];  // now dL/du
              }
              std::copy(gdtu, gdtu + g.nl, du);
              std::copy(gdt, gdt + g.nl, ddelta);
            }
          }
          for (int64_t l = 0; l < g.nl; ++l) {
            for (int64_t n = 0; n < kN; ++n) gd.dA[(b * D + d0 + l) * kN + n] = dA[n][l];
            gd.dskip[b * D + d0 + l] = dskip[l];
            gd.dbias[b * D + d0 + l] = dbias[l];
          }
        }
      }
    }
  });
}

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

void check_seq(const at::Tensor& x, const at::Tensor& like, const char* name) {
  TORCH_CHECK(x.dim() == 3 && x.stride(2) == 1 && x.scalar_type() == like.scalar_type() &&
                  x.device().is_cpu(),
              name, " must be a CPU (batch, len, channels) tensor with contiguous channels, of ",
              "dtype ", like.scalar_type());
}

void check_vec(const at::Tensor& v, int64_t D, const at::Tensor& like, const char* name) {
  TORCH_CHECK(v.is_contiguous() && v.numel() == D && v.scalar_type() == like.scalar_type(),
              name, " must be contiguous with ", D, " elements of dtype ", like.scalar_type());
}

}  // namespace

// xz: (B, L, 2D); w: (D, K) or (D, 1, K); returns (u_f, u_b), each (B, L, D).
std::vector<at::Tensor> bimamba_conv_forward(const at::Tensor& xz, const at::Tensor& w_f,
                                             const at::Tensor& b_f, const at::Tensor& w_b,
                                             const at::Tensor& b_b) {
  check_seq(xz, xz, "xz");
  const int64_t B = xz.size(0), L = xz.size(1), D = xz.size(2) / 2, K = w_f.size(-1);
  const auto wT_f = w_f.reshape({D, K}).t().contiguous(), wT_b = w_b.reshape({D, K}).t().contiguous();
  check_vec(b_f, D, xz, "conv bias");
  check_vec(b_b, D, xz, "conv bias");
  auto u_f = at::empty({B, L, D}, xz.options()), u_b = at::empty({B, L, D}, xz.options());
  AT_DISPATCH_FLOATING_TYPES(xz.scalar_type(), "bimamba_conv_forward", [&] {
    conv_forward<scalar_t>(cseq<scalar_t>(xz), wT_f.data_ptr<scalar_t>(), b_f.data_ptr<scalar_t>(),
                           wT_b.data_ptr<scalar_t>(), b_b.data_ptr<scalar_t>(), B, L, D, K,
                           u_f.data_ptr<scalar_t>(), u_b.data_ptr<scalar_t>());
  });
  return {u_f, u_b};
}

// Writes dL/dx into dxz[..., :D]; returns (dw_f, db_f, dw_b, db_b) with the weights' shapes.
std::vector<at::Tensor> bimamba_conv_backward(const at::Tensor& xz, const at::Tensor& w_f,
                                              const at::Tensor& b_f, const at::Tensor& w_b,
                                              const at::Tensor& b_b, const at::Tensor& du_f,
                                              const at::Tensor& du_b, at::Tensor& dxz) {
  check_seq(xz, xz, "xz");
  check_seq(dxz, xz, "dxz");
  const int64_t B = xz.size(0), L = xz.size(1), D = xz.size(2) / 2, K = w_f.size(-1);
  TORCH_CHECK(du_f.is_contiguous() && du_b.is_contiguous(), "du must be contiguous");
  const auto wT_f = w_f.reshape({D, K}).t().contiguous(), wT_b = w_b.reshape({D, K}).t().contiguous();
  const int64_t tasks = std::max<int64_t>(1, std::min<int64_t>(B * L, 4 * at::get_num_threads()));
  auto gp_f = at::empty({B, L, D}, xz.options()), gp_b = at::empty({B, L, D}, xz.options());
  auto partial = at::empty({tasks, 2, K + 1, D}, xz.options());
  AT_DISPATCH_FLOATING_TYPES(xz.scalar_type(), "bimamba_conv_backward", [&] {
    conv_backward<scalar_t>(cseq<scalar_t>(xz), wT_f.data_ptr<scalar_t>(), b_f.data_ptr<scalar_t>(),
                            wT_b.data_ptr<scalar_t>(), b_b.data_ptr<scalar_t>(),
                            du_f.data_ptr<scalar_t>(), du_b.data_ptr<scalar_t>(), B, L, D, K,
                            seq<scalar_t>(dxz), gp_f.data_ptr<scalar_t>(), gp_b.data_ptr<scalar_t>(),
                            partial.data_ptr<scalar_t>(), tasks);
  });
  const auto sums = partial.sum(0);  // (2, K + 1, D); the results must not alias each other
  return {sums[0].narrow(0, 0, K).t().contiguous().view(w_f.sizes()), sums[0][K].clone(),
          sums[1].narrow(0, 0, K).t().contiguous().view(w_b.sizes()), sums[1][K].clone()};
}

namespace {

template <typename T>
Direction<T> direction(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& x_dbl,
                       int64_t rank, int64_t N, const at::Tensor& A, const at::Tensor& skip,
                       const at::Tensor& bias, bool reverse) {
  return {cseq<T>(u), cseq<T>(delta), cseq<T>(x_dbl, rank), cseq<T>(x_dbl, rank + N),
          A.data_ptr<T>(), skip.data_ptr<T>(), bias.data_ptr<T>(), reverse};
}

void check_scan(const at::Tensor& xz, const at::Tensor& u, const at::Tensor& delta,
                const at::Tensor& x_dbl, int64_t rank, const at::Tensor& A, const at::Tensor& skip,
                const at::Tensor& bias) {
  const int64_t B = xz.size(0), L = xz.size(1), D = xz.size(2) / 2, N = A.size(1);
  check_seq(u, xz, "u");
  check_seq(delta, xz, "delta");
  check_seq(x_dbl, xz, "x_dbl");
  TORCH_CHECK(u.size(0) == B && u.size(1) == L && u.size(2) == D && delta.sizes() == u.sizes(),
              "u and delta must be (B, L, D)");
  TORCH_CHECK(x_dbl.size(0) == B && x_dbl.size(1) == L && x_dbl.size(2) == rank + 2 * N,
              "x_dbl must be (B, L, dt_rank + 2 N)");
  TORCH_CHECK(A.is_contiguous() && A.size(0) == D && A.scalar_type() == xz.scalar_type(),
              "A must be contiguous (D, N)");
  check_vec(skip, D, xz, "D");
  check_vec(bias, D, xz, "delta_bias");
}

}  // namespace

// Returns (y (B, L, D), ckpt_f, ckpt_b (B, nchunks, N, D)); z is xz[..., D:].
std::vector<at::Tensor> bimamba_scan_forward(
    const at::Tensor& xz, const at::Tensor& u_f, const at::Tensor& u_b, const at::Tensor& delta_f,
    const at::Tensor& delta_b, const at::Tensor& x_dbl_f, const at::Tensor& x_dbl_b,
    int64_t rank, const at::Tensor& A_f, const at::Tensor& A_b, const at::Tensor& D_f,
    const at::Tensor& D_b, const at::Tensor& bias_f, const at::Tensor& bias_b) {
  check_seq(xz, xz, "xz");
  check_scan(xz, u_f, delta_f, x_dbl_f, rank, A_f, D_f, bias_f);
  check_scan(xz, u_b, delta_b, x_dbl_b, rank, A_b, D_b, bias_b);
  const int64_t B = xz.size(0), L = xz.size(1), D = xz.size(2) / 2, N = A_f.size(1);
  auto y = at::empty({B, L, D}, xz.options());
  auto ckpt_f = at::empty({B, ceil_div(L, kChunk), N, D}, xz.options());
  auto ckpt_b = at::empty_like(ckpt_f);
  AT_DISPATCH_FLOATING_TYPES(xz.scalar_type(), "bimamba_scan_forward", [&] {
    const Direction<scalar_t> dirs[2] = {
        direction<scalar_t>(u_f, delta_f, x_dbl_f, rank, N, A_f, D_f, bias_f, false),
        direction<scalar_t>(u_b, delta_b, x_dbl_b, rank, N, A_b, D_b, bias_b, true)};
    const int64_t tasks = scan_tasks_per_batch(ceil_div(D, kLanes<scalar_t>), B);
    with_state_size(N, [&]<int kN>() {
      scan_forward<scalar_t, kN>(dirs, cseq<scalar_t>(xz, D), B, L, D, seq<scalar_t>(y),
                                 ckpt_f.data_ptr<scalar_t>(), ckpt_b.data_ptr<scalar_t>(),
                                 tasks);
    });
  });
  return {y, ckpt_f, ckpt_b};
}

// Writes dL/dz into dxz[..., D:]; returns, per direction f then b: du (B, L, D),
// ddelta (B, L, D), dBC (B, L, 2 N: dB then dC), dA (D, N), dD (D,), dbias (D,).
std::vector<at::Tensor> bimamba_scan_backward(
    const at::Tensor& dy, const at::Tensor& xz, const at::Tensor& u_f, const at::Tensor& u_b,
    const at::Tensor& delta_f, const at::Tensor& delta_b, const at::Tensor& x_dbl_f,
    const at::Tensor& x_dbl_b, int64_t rank, const at::Tensor& A_f, const at::Tensor& A_b,
    const at::Tensor& D_f, const at::Tensor& D_b, const at::Tensor& bias_f,
    const at::Tensor& bias_b, const at::Tensor& ckpt_f, const at::Tensor& ckpt_b, at::Tensor& dxz) {
  check_seq(xz, xz, "xz");
  check_seq(dxz, xz, "dxz");
  check_scan(xz, u_f, delta_f, x_dbl_f, rank, A_f, D_f, bias_f);
  check_scan(xz, u_b, delta_b, x_dbl_b, rank, A_b, D_b, bias_b);
  const int64_t B = xz.size(0), L = xz.size(1), D = xz.size(2) / 2, N = A_f.size(1);
  TORCH_CHECK(dy.is_contiguous() && dy.sizes() == u_f.sizes(), "dy must be contiguous (B, L, D)");
  TORCH_CHECK(ckpt_f.is_contiguous() && ckpt_b.is_contiguous() &&
                  ckpt_f.sizes() == at::IntArrayRef({B, ceil_div(L, kChunk), N, D}),
              "checkpoints do not match the inputs");
  int64_t groups = 0;
  AT_DISPATCH_FLOATING_TYPES(xz.scalar_type(), "groups", [&] { groups = ceil_div(D, kLanes<scalar_t>); });
  const int64_t tasks_per_batch = scan_tasks_per_batch(groups, B);
  auto opts = xz.options();
  std::vector<at::Tensor> out;
  at::Tensor du[2], ddelta[2], dBC[2], dA[2], dskip[2], dbias[2];
  for (int i = 0; i < 2; ++i) {
    du[i] = at::empty({B, L, D}, opts);
    ddelta[i] = at::empty({B, L, D}, opts);
    dBC[i] = at::zeros({B, tasks_per_batch, L, 2 * N}, opts);
    dA[i] = at::empty({B, D, N}, opts);
    dskip[i] = at::empty({B, D}, opts);
    dbias[i] = at::empty({B, D}, opts);
  }
  AT_DISPATCH_FLOATING_TYPES(xz.scalar_type(), "bimamba_scan_backward", [&] {
    const Direction<scalar_t> dirs[2] = {
        direction<scalar_t>(u_f, delta_f, x_dbl_f, rank, N, A_f, D_f, bias_f, false),
        direction<scalar_t>(u_b, delta_b, x_dbl_b, rank, N, A_b, D_b, bias_b, true)};
    DirectionGrads<scalar_t> grads[2];
    for (int i = 0; i < 2; ++i)
      grads[i] = {du[i].data_ptr<scalar_t>(), ddelta[i].data_ptr<scalar_t>(),
                  dBC[i].data_ptr<scalar_t>(), dA[i].data_ptr<scalar_t>(),
                  dskip[i].data_ptr<scalar_t>(), dbias[i].data_ptr<scalar_t>()};
    with_state_size(N, [&]<int kN>() {
      scan_backward<scalar_t, kN>(dirs, cseq<scalar_t>(xz, D), dy.data_ptr<scalar_t>(), B, L, D,
                                  ckpt_f.data_ptr<scalar_t>(), ckpt_b.data_ptr<scalar_t>(), grads,
                                  seq<scalar_t>(dxz, D), tasks_per_batch);
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

int64_t bimamba_chunk() { return kChunk; }

}  // namespace mmshufflemamba_cpu
