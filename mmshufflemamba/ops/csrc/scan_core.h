// The CPU selective scan, forward and backward: the one implementation behind both entry
// points (selective_scan_cpu.cpp: one direction, channel-major; bimamba_cpu.cpp: the fused
// bidirectional mixer, token-major).
//
// For one channel d and state n, with dt_t = softplus(delta_t + bias_d) (or delta + bias):
//   h_t[n] = exp(dt_t A[d,n]) h_{t-1}[n] + dt_t u_t B_t[n],   s_t = sum_n C_t[n] h_t[n] + D_d u_t
// ("t - 1" is the previous step in the direction of the scan). What happens to s (the z
// gate, combining two directions) and where the rows live is the entry's business: an
// entry hands the drivers an IO object that stages one chunk of a task's lane groups into
// contiguous tiles and takes the results back (see ChannelMajorIO, TokenMajorIO).
//
// Layout of the work: the lanes of a vector are kLanes channels (16 in float32, 8 in
// float64), so every step is vertical vector work over the states n, with no horizontal
// sums in the forward pass: per step and state one vector exp2_decay and two FMAs. B_t and
// C_t are broadcast to the lanes when all of a lane group's channels share them (the
// mixer, and any time-varying B/C: lane groups never straddle a group of channels), or
// read per lane ("per-lane" mode, for B or C shared over time: (dim, N)).
//
// Steps go in chunks of kChunk. The forward pass stores the state before each chunk
// (checkpoints: (batch, nchunks, N, dim)); the backward pass recomputes each chunk's
// states and decays from its checkpoint, then runs the adjoint recurrence backwards
// through it. One task is (batch entry, a run of lane groups); the gradients of B and C
// (sums over channels) are kept per task and reduced by the entry afterwards, so no two
// tasks write the same memory. Both passes visit the
// chunks in the outer loop and every lane group of the task inside it, so that a chunk's
// rows (a page each in the mixer's token-major layout) are fetched once for all the
// groups. The backward's adjoint loop is vertical vector work too: dL/dB and dL/dC are
// accumulated per lane over the groups and summed over the lanes once per chunk (the
// horizontal sums per step and state this replaced were about 16 of the loop's 35 vector
// instructions). The states n do not interact within a step (only s sums over them), so
// the float32 backward recomputes and runs the adjoint for blocks of 4 states at a time:
// a block's states and decays for a chunk take 16.5 KB, which can stay in L1 from the
// recomputation to the adjoint (all 16 states' took 65 KB; a size estimate, not measured).
//
// Speed: per state and step the scan needs one vector decay and two FMAs. Where AVX-512
// is compiled in (float32, a compiled state size), the chunk loops are the *_v16 versions
// below, in intrinsics: the decay is exp2_decay_v16 (vreduceps, a polynomial, vscalefps:
// nine instructions with its product, against about fourteen for exp2_decay_f32
// auto-vectorised), the states' h (forward: all kN; backward: a block's) and the carry and
// dA (adjoint, a block's) stay in registers through a chunk, and the step sizes' softplus
// and the z gate use cpu_math.h's 16-lane forms. Elsewhere (float64, AVX2 builds, other
// state sizes) the compiler vectorises the generic loops. bench_scan_ceiling.py times the bare arithmetic (in L1,
// the same decay and flags) alternately with the fused forward scan of a ShuffleMamba-S
// mixer. One thread, on the shared 2-core AVX-512 VM (2026-12-02, 9 pairs, medians): the
// kernel at 1.37 / 1.43 G state updates/s at L = 1025 / 4097, 34% / 31% of a ceiling of
// 4.1-4.4 G/s (in another run 1.74 / 1.78 G/s, 37% / 29% of 5.3-6.1 G/s). The previous
// kernel (commit 4d5786c, built beside this one and alternated in one process) took
// 1.37x as long for the mixer's scan forward and 1.15-1.19x for its backward, at both
// lengths. The faster decay doubled the ceiling more than it sped the kernel, so the share
// fell from 50% / 43%: what is left is outside the recurrence. In a cpu-clock profile of
// the forward at L = 4097 (the chunk loops kept out of line), the recurrence has 32% of
// the kernel's samples, staging u and delta from their rows 27%, storing y with the second
// direction's gate 24%, the softplus 12% (before its 16-lane form); the staging and store
// samples sit on the loads of rows a page apart. Those loads are not misses to memory: the
// forward's time per token is about the same at L = 17, where every row stays in L1/L2,
// as at 4097 (11.8 and 13.3 us). The 75% aimed at is not reached; the backward (recompute
// + adjoint, all states at once) was about 3.2x the forward there. On a CPU with AMX and
// 2 MiB of L2 per core (2026-12-06, one thread, 5 pairs): ceiling 6.7-7.1 G/s, the kernel at 40% / 35% at
// L = 1025 / 4097; there the time per token grows 1.6x from L <= 257 to L >= 1025, and the
// loads of the u, delta and z rows hold about a quarter of the forward's profile samples
// (benchmarks/README.md, "On a CPU with AMX"). There the change to a backward in blocks of 4
// states (with the rows read once per chunk for a task's lane groups and the gate split
// around the scans) took the backward to 0.81x-0.88x its time at L = 1025 and 4097 (2 runs
// of 21 alternated pairs); it is 2.8x-3.4x the forward (benchmarks/README.md, "The scan
// backward in blocks of states"). With the mixer's scans in as few tasks as spread evenly
// over the threads (wide_tasks_per_batch, 2026-12-06, stop 35), its forward's time per token
// no longer grows with L, and bench_scan_ceiling.py (9 pairs, the medians of their ratios)
// gave 47% / 43% of the ceiling at L = 1025 / 4097 on one thread, 43% / 37% on two.
// With the tiles on cache lines (Scratch, 2026-12-07): 47% / 49% there, the backward 0.82x-0.86x
// its time at one thread, and 2.2x-2.6x the forward in one run (2.0x-2.2x in another).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <new>
#include <numeric>
#include <type_traits>
#include <vector>

#include "cpu_math.h"

namespace mmshufflemamba_cpu {

template <typename T>
constexpr int64_t kLanes = 64 / sizeof(T);  // channels per vector: one 512-bit register
constexpr int64_t kChunk = 32;              // steps per checkpoint / recomputation

// Allocates on 64-byte boundaries (a cache line, one 512-bit vector).
template <typename T>
struct CacheLineAllocator {
  using value_type = T;
  static constexpr std::align_val_t kAlign{64};
  CacheLineAllocator() = default;
  template <typename U>
  CacheLineAllocator(const CacheLineAllocator<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlign)); }
  void deallocate(T* p, std::size_t) { ::operator delete(p, kAlign); }
};

template <typename T, typename U>
bool operator==(const CacheLineAllocator<T>&, const CacheLineAllocator<U>&) noexcept {
  return true;  // stateless: any one frees what another allocated
}

// The kernels' per-thread scratch: tiles of whole vectors (every sub-tile then starts on a
// line too), or rows of D channels (on lines where D is a multiple of kLanes, as in every
// Vim width). std::vector's default allocator aligns to 16 bytes only, so most vector loads
// and stores of the tiles crossed a cache line (2026-12-07: in two backward calls printed,
// the ten tiles started 0, 16, 32 or 48 bytes into a line, varying by call).
template <typename T>
using Scratch = std::vector<T, CacheLineAllocator<T>>;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Channels d0 .. d0 + nl (nl <= kLanes) scanned together, one per lane.
struct LaneGroup {
  int64_t d0, nl;
};

// Lane groups over `dim` channels, none crossing a multiple of `segment` (which divides dim).
template <typename T>
std::vector<LaneGroup> lane_groups(int64_t dim, int64_t segment) {
  std::vector<LaneGroup> groups;
  for (int64_t s0 = 0; s0 < dim; s0 += segment)
    for (int64_t d0 = s0; d0 < s0 + segment; d0 += kLanes<T>)
      groups.push_back({d0, std::min(kLanes<T>, s0 + segment - d0)});
  return groups;
}

// A task's lane groups, consecutive: their tiles lie kChunk * kLanes apart.
struct Span {
  const LaneGroup* groups;
  int64_t count;
};

// Tasks per batch entry where each lane group has rows of its own (channel-major): enough
// for every thread, few partial buffers.
inline int64_t tasks_per_batch(int64_t groups, int64_t batch) {
  const int64_t wanted = 4 * static_cast<int64_t>(at::get_num_threads());
  return std::min(groups, std::max<int64_t>(1, ceil_div(wanted, std::max<int64_t>(1, batch))));
}

// Tasks per batch entry where a task's lane groups share rows (token-major: a chunk's rows
// are read once for all of them): the fewest that spread evenly over the threads, so that
// a task reads long runs of each row and few tasks walk the whole sequence, and never more
// than tasks_per_batch (at a large batch that divides poorly by the threads, evenness would
// take more tasks, and with them more partial dL/dB, dL/dC buffers). At one thread and
// batch 1 that is one task instead of four: the mixer's scan forward took 0.87x-0.88x the
// time at L = 1025 and 4097 and its backward 0.84x-0.88x (0.93x and 1.00x at L = 197);
// the channel-major entry measured 1.02x-1.21x with it, so it keeps tasks_per_batch.
inline int64_t wide_tasks_per_batch(int64_t groups, int64_t batch) {
  const int64_t threads = at::get_num_threads();
  return std::min(tasks_per_batch(groups, batch), threads / std::gcd(threads, batch));
}

// One direction's per-channel parameters.
template <typename T>
struct ScanParams {
  const T* A;     // (dim, N)
  const T* skip;  // D: (dim,), or null
  const T* bias;  // delta_bias: (dim,), or null
  bool softplus;
};

// The saved outputs of the backward pass for one direction, summed over batch by the entry.
template <typename T>
struct ParamGrads {
  T* dA;     // (batch, dim, N)
  T* dskip;  // (batch, dim)
  T* dbias;  // (batch, dim)
};

// One lane group's constants, lanes past nl zero: A and A log2 e (N, W), D and bias (W).
template <typename T>
struct LaneConsts {
  T *A, *A2, *skip, *bias;

  static int64_t size(int64_t N) { return (2 * N + 2) * kLanes<T>; }

  LaneConsts(const ScanParams<T>& p, LaneGroup g, int64_t N, T* space)
      : A(space), A2(space + N * kLanes<T>), skip(space + 2 * N * kLanes<T>),
        bias(skip + kLanes<T>) {
    constexpr int64_t W = kLanes<T>;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t l = 0; l < W; ++l) {
        A[n * W + l] = l < g.nl ? p.A[(g.d0 + l) * N + n] : T(0);
        A2[n * W + l] = A[n * W + l] * T(kLog2e);
      }
    for (int64_t l = 0; l < W; ++l) {
      skip[l] = l < g.nl && p.skip ? p.skip[g.d0 + l] : T(0);
      bias[l] = l < g.nl && p.bias ? p.bias[g.d0 + l] : T(0);
    }
  }
};

// Copies nl values and zero-fills the rest of a vector's lanes; a source of another type
// (the mixer's bfloat16 xz) is widened to T on the way, exactly. A full vector (every lane
// group when the channels divide by kLanes) is one move; std::copy of a run-time length
// would call memmove, which took a third of the fused scan's time.
template <typename T, typename S>
inline void load_lanes(const S* __restrict__ src, int64_t nl, T* __restrict__ dst) {
  if (nl == kLanes<T>) {
#pragma omp simd
    for (int64_t l = 0; l < kLanes<T>; ++l) dst[l] = static_cast<T>(src[l]);
    return;
  }
  for (int64_t l = 0; l < kLanes<T>; ++l) dst[l] = l < nl ? static_cast<T>(src[l]) : T(0);
}

// Stores the first nl lanes of a vector.
template <typename T>
inline void store_lanes(const T* __restrict__ src, int64_t nl, T* __restrict__ dst) {
  if (nl == kLanes<T>) {
#pragma omp simd
    for (int64_t l = 0; l < kLanes<T>; ++l) dst[l] = src[l];
    return;
  }
  for (int64_t l = 0; l < nl; ++l) dst[l] = src[l];
}

// A chunk's B and C as the scan reads them: step j's B_j[n] at B + j * step + n * bw
// (bw = 1 broadcast to the lanes, W per lane), C_j likewise. Broadcast B and C are read
// in place from the entry's rows (step may be negative: a scan walking t down).
template <typename T>
struct BCView {
  const T* B;
  const T* C;
  int64_t step;
};

// ------------------------------------------------------------------------- chunk math
// Tiles: (K, W) per-step vectors; bc: the chunk's B and C (broadcast: kBcast, or per lane).

template <bool kBcast, typename T>
inline T lane_value(const T* __restrict__ v, int64_t l) {
  if constexpr (kBcast) return v[0];
  else return v[l];
}

// Step sizes in place: delta -> dt = softplus(delta + bias) (or delta + bias), and their
// slopes ddt/ddelta into dtg when given.
template <typename T>
inline void step_tile(T* __restrict__ dt, T* __restrict__ dtg, const T* __restrict__ bias,
                      bool use_softplus, int64_t K) {
  constexpr int64_t W = kLanes<T>;
#ifdef MMSHUFFLEMAMBA_HAS_AVX512
  if constexpr (std::is_same_v<T, float>) {
    if (use_softplus) {
      const __m512 bv = _mm512_loadu_ps(bias);
      for (int64_t j = 0; j < K; ++j) {
        const __m512 x = _mm512_add_ps(_mm512_loadu_ps(dt + j * W), bv);
        if (dtg) {
          __m512 slope;
          _mm512_storeu_ps(dt + j * W, softplus_v16<true>(x, &slope));
          _mm512_storeu_ps(dtg + j * W, slope);
        } else {
          _mm512_storeu_ps(dt + j * W, softplus_v16<false>(x, nullptr));
        }
      }
      return;
    }
  }
#endif
  for (int64_t j = 0; j < K; ++j) {
    T* __restrict__ x = dt + j * W;
    T* __restrict__ g = dtg ? dtg + j * W : nullptr;
    if (use_softplus && g) {
#pragma omp simd
      for (int64_t l = 0; l < W; ++l) x[l] = softplus<true>(x[l] + bias[l], &g[l]);
    } else if (use_softplus) {
#pragma omp simd
      for (int64_t l = 0; l < W; ++l) x[l] = softplus<false>(x[l] + bias[l], nullptr);
    } else {
#pragma omp simd
      for (int64_t l = 0; l < W; ++l) x[l] += bias[l];
      if (g) std::fill(g, g + W, T(1));
    }
  }
}

#ifdef MMSHUFFLEMAMBA_HAS_AVX512
// float32 with AVX-512 and a compiled state size: the chunk loops (chunk_scan_v16 here,
// chunk_adjoint_v16 after Adjoint) written in intrinsics, so that the decay is
// exp2_decay_v16 and the kN states stay in registers through the chunk (h is not reloaded
// per step).
template <typename T, int kN>
constexpr bool kVectorChunks = std::is_same_v<T, float> && kN > 0;

template <bool kBcast>
inline __m512 bc_vector(const float* __restrict__ v) {
  if constexpr (kBcast) return _mm512_set1_ps(*v);
  else return _mm512_loadu_ps(v);
}

// chunk_forward (kKeep false: h (N, W) advanced in place) and, for a block of kN states of
// the backward (chunk_backward), the recomputation (kKeep: the states h (K + 1, kN, W) from
// h[0] and the decays a (K, kN, W) kept) on 16 lanes. add_to_s: s already holds the other
// blocks' part of the sum over states (and D u); else it starts from D u.
template <int kN, bool kBcast, bool kKeep>
inline void chunk_scan_v16(int64_t K, const LaneConsts<float>& g, const float* __restrict__ u,
                           const float* __restrict__ dt, const BCView<float>& bc,
                           float* __restrict__ h, float* __restrict__ a, float* __restrict__ s,
                           bool add_to_s = false) {
  constexpr int64_t W = 16, bw = kBcast ? 1 : W;
  __m512 hv[kN];
  for (int n = 0; n < kN; ++n) hv[n] = _mm512_loadu_ps(h + n * W);
  const __m512 skip = _mm512_loadu_ps(g.skip);
  for (int64_t j = 0; j < K; ++j) {
    const __m512 dtv = _mm512_loadu_ps(dt + j * W), uv = _mm512_loadu_ps(u + j * W);
    const __m512 dtu = _mm512_mul_ps(dtv, uv);
    __m512 sv = add_to_s ? _mm512_loadu_ps(s + j * W) : _mm512_mul_ps(skip, uv);
    const float* __restrict__ Bt = bc.B + j * bc.step;
    const float* __restrict__ Ct = bc.C + j * bc.step;
#pragma GCC unroll 16
    for (int n = 0; n < kN; ++n) {
      const __m512 an = exp2_decay_v16(_mm512_mul_ps(dtv, _mm512_loadu_ps(g.A2 + n * W)));
      hv[n] = _mm512_fmadd_ps(an, hv[n], _mm512_mul_ps(dtu, bc_vector<kBcast>(Bt + n * bw)));
      sv = _mm512_fmadd_ps(bc_vector<kBcast>(Ct + n * bw), hv[n], sv);
      if constexpr (kKeep) {
        _mm512_storeu_ps(a + (j * kN + n) * W, an);
        _mm512_storeu_ps(h + ((j + 1) * kN + n) * W, hv[n]);
      }
    }
    _mm512_storeu_ps(s + j * W, sv);
  }
  if constexpr (!kKeep)
    for (int n = 0; n < kN; ++n) _mm512_storeu_ps(h + n * W, hv[n]);
}

#endif

// The chunk's outputs s (K, W), advancing the state h (N, W) through it.
template <typename T, int kN, bool kBcast>
inline void chunk_forward(int64_t nstate, int64_t K, const LaneConsts<T>& g,
                          const T* __restrict__ u, const T* __restrict__ dt,
                          const BCView<T>& bc, T* __restrict__ h, T* __restrict__ s) {
  constexpr int64_t W = kLanes<T>, bw = kBcast ? 1 : W;
#ifdef MMSHUFFLEMAMBA_HAS_AVX512
  if constexpr (kVectorChunks<T, kN>)
    return chunk_scan_v16<kN, kBcast, false>(K, g, u, dt, bc, h, nullptr, s);
#endif
  const int64_t N = kN > 0 ? kN : nstate;
  alignas(64) T dtu[W], sv[W];
  for (int64_t j = 0; j < K; ++j) {
    const T* __restrict__ uj = u + j * W;
    const T* __restrict__ dtj = dt + j * W;
#pragma omp simd
    for (int64_t l = 0; l < W; ++l) {
      dtu[l] = dtj[l] * uj[l];
      sv[l] = g.skip[l] * uj[l];
    }
    const T* __restrict__ Bt = bc.B + j * bc.step;
    const T* __restrict__ Ct = bc.C + j * bc.step;
    for (int64_t n = 0; n < N; ++n) {
      const T* __restrict__ bn = Bt + n * bw;
      const T* __restrict__ cn = Ct + n * bw;
      const T* __restrict__ a2 = g.A2 + n * W;
      T* __restrict__ hn = h + n * W;
#pragma omp simd
      for (int64_t l = 0; l < W; ++l) {
        hn[l] = exp2_decay(dtj[l] * a2[l]) * hn[l] + dtu[l] * lane_value<kBcast>(bn, l);
        sv[l] += lane_value<kBcast>(cn, l) * hn[l];
      }
    }
    std::copy(sv, sv + W, s + j * W);
  }
}

// The chunk's states recomputed: h (K + 1, N, W) from h[0] (the checkpoint), decays
// a (K, N, W), outputs s (K, W).
template <typename T, int kN, bool kBcast>
inline void chunk_recompute(int64_t nstate, int64_t K, const LaneConsts<T>& g,
                            const T* __restrict__ u, const T* __restrict__ dt,
                            const BCView<T>& bc, T* __restrict__ h, T* __restrict__ a,
                            T* __restrict__ s) {
  constexpr int64_t W = kLanes<T>, bw = kBcast ? 1 : W;
  const int64_t N = kN > 0 ? kN : nstate;
  for (int64_t j = 0; j < K; ++j) {
    const T* __restrict__ uj = u + j * W;
    const T* __restrict__ dtj = dt + j * W;
    T* __restrict__ sj = s + j * W;
#pragma omp simd
    for (int64_t l = 0; l < W; ++l) sj[l] = g.skip[l] * uj[l];
    const T* __restrict__ Bt = bc.B + j * bc.step;
    const T* __restrict__ Ct = bc.C + j * bc.step;
    for (int64_t n = 0; n < N; ++n) {
      const T* __restrict__ bn = Bt + n * bw;
      const T* __restrict__ cn = Ct + n * bw;
      const T* __restrict__ a2 = g.A2 + n * W;
      const T* __restrict__ hp = h + (j * N + n) * W;
      T* __restrict__ hn = h + ((j + 1) * N + n) * W;
      T* __restrict__ an = a + (j * N + n) * W;
#pragma omp simd
      for (int64_t l = 0; l < W; ++l) {
        an[l] = exp2_decay(dtj[l] * a2[l]);
        hn[l] = an[l] * hp[l] + dtj[l] * uj[l] * lane_value<kBcast>(bn, l);
        sj[l] += lane_value<kBcast>(cn, l) * hn[l];
      }
    }
  }
}

// Running sums of one lane group's backward pass over its chunks.
template <typename T>
struct Adjoint {
  T *carry, *dA, *dskip, *dbias;  // exp(dt_{t+1} A) dL/dh_{t+1} (N, W); dA (N, W); (W); (W)

  static int64_t size(int64_t N) { return (2 * N + 2) * kLanes<T>; }
  Adjoint(int64_t N, T* space)
      : carry(space), dA(space + N * kLanes<T>), dskip(space + 2 * N * kLanes<T>),
        dbias(dskip + kLanes<T>) {
    std::fill(space, space + size(N), T(0));
  }
};

#ifdef MMSHUFFLEMAMBA_HAS_AVX512
// States per block of the backward pass: blocks of 2 and 8 were not faster than 4 at
// L = 1025 and 4097 (benchmarks/README.md).
template <int kN>
constexpr int kStateBlock = kN % 4 == 0 ? 4 : kN;

// chunk_adjoint for float32 on AVX-512 and a compiled state size, for the block of kB states
// n0 .. n0 + kB: h (K + 1, kB, W) and a (K, kB, W) are the block's, dbc the chunk's
// (K, 2, kN, W). The block's carry and dA stay in registers through the chunk. The blocks'
// shares of the sums over states (dL/d(dt u), and dL/d(dt) through the decays) are handed on
// in the du and ddelta tiles; the last block finishes the step from them.
template <int kN, int kB, bool kBcast>
inline void chunk_adjoint_v16(int64_t K, int n0, const LaneConsts<float>& g,
                              const float* __restrict__ u, const float* __restrict__ dt,
                              const float* __restrict__ dtg, const BCView<float>& bc,
                              const float* __restrict__ h, const float* __restrict__ a,
                              const float* __restrict__ gs_tile, const Adjoint<float>& acc,
                              float* __restrict__ du, float* __restrict__ ddelta,
                              float* __restrict__ dbc) {
  constexpr int64_t W = 16, bw = kBcast ? 1 : W;
  const bool first = n0 == 0, last = n0 + kB == kN;
  __m512 carry[kB], dA[kB];
  for (int n = 0; n < kB; ++n) {
    carry[n] = _mm512_loadu_ps(acc.carry + (n0 + n) * W);
    dA[n] = _mm512_loadu_ps(acc.dA + (n0 + n) * W);
  }
  const __m512 skip = _mm512_loadu_ps(g.skip);
  __m512 dskip = _mm512_loadu_ps(acc.dskip), dbias = _mm512_loadu_ps(acc.dbias);
  const float* __restrict__ An = g.A + n0 * W;
  for (int64_t j = K - 1; j >= 0; --j) {
    const __m512 dtv = _mm512_loadu_ps(dt + j * W), gs = _mm512_loadu_ps(gs_tile + j * W);
    const __m512 dtu = _mm512_mul_ps(dtv, _mm512_loadu_ps(u + j * W));
    __m512 gdtu = first ? _mm512_setzero_ps() : _mm512_loadu_ps(du + j * W);
    __m512 gdt = first ? _mm512_setzero_ps() : _mm512_loadu_ps(ddelta + j * W);
    const float* __restrict__ Bt = bc.B + j * bc.step + n0 * bw;
    const float* __restrict__ Ct = bc.C + j * bc.step + n0 * bw;
    float* __restrict__ dBt = dbc + (j * 2 * kN + n0) * W;
    float* __restrict__ dCt = dBt + kN * W;
    const float* __restrict__ hp = h + j * kB * W;
    const float* __restrict__ hn = hp + kB * W;
    const float* __restrict__ aj = a + j * kB * W;
#pragma GCC unroll 16
    for (int n = 0; n < kB; ++n) {
      const __m512 gh = _mm512_fmadd_ps(bc_vector<kBcast>(Ct + n * bw), gs, carry[n]);
      _mm512_storeu_ps(dCt + n * W, _mm512_fmadd_ps(gs, _mm512_loadu_ps(hn + n * W),
                                                   _mm512_loadu_ps(dCt + n * W)));
      _mm512_storeu_ps(dBt + n * W, _mm512_fmadd_ps(gh, dtu, _mm512_loadu_ps(dBt + n * W)));
      gdtu = _mm512_fmadd_ps(gh, bc_vector<kBcast>(Bt + n * bw), gdtu);
      carry[n] = _mm512_mul_ps(_mm512_loadu_ps(aj + n * W), gh);
      const __m512 gdec = _mm512_mul_ps(carry[n], _mm512_loadu_ps(hp + n * W));
      gdt = _mm512_fmadd_ps(gdec, _mm512_loadu_ps(An + n * W), gdt);
      dA[n] = _mm512_fmadd_ps(gdec, dtv, dA[n]);
    }
    if (!last) {
      _mm512_storeu_ps(du + j * W, gdtu);
      _mm512_storeu_ps(ddelta + j * W, gdt);
      continue;
    }
    const __m512 uv = _mm512_loadu_ps(u + j * W);
    const __m512 g_delta =
        _mm512_mul_ps(_mm512_fmadd_ps(gdtu, uv, gdt), _mm512_loadu_ps(dtg + j * W));
    dskip = _mm512_fmadd_ps(gs, uv, dskip);
    dbias = _mm512_add_ps(dbias, g_delta);
    _mm512_storeu_ps(ddelta + j * W, g_delta);
    _mm512_storeu_ps(du + j * W, _mm512_fmadd_ps(gs, skip, _mm512_mul_ps(gdtu, dtv)));
  }
  for (int n = 0; n < kB; ++n) {
    _mm512_storeu_ps(acc.carry + (n0 + n) * W, carry[n]);
    _mm512_storeu_ps(acc.dA + (n0 + n) * W, dA[n]);
  }
  if (last) {
    _mm512_storeu_ps(acc.dskip, dskip);
    _mm512_storeu_ps(acc.dbias, dbias);
  }
}
#endif

// The adjoint recurrence backwards through a chunk, from gs = dL/ds (K, W): writes du and
// ddelta (K, W), adds the chunk's dL/dB and dL/dC per lane into dbc ((K, 2, N, W): the sums
// over channels are the entry's, or, for broadcast B and C, the driver's, once per chunk for
// all the lane groups that share them), and adds to the running sums. Vertical vector work
// only: no horizontal sums inside the loop.
template <typename T, int kN, bool kBcast>
inline void chunk_adjoint(int64_t nstate, int64_t K, const LaneConsts<T>& g,
                          const T* __restrict__ u, const T* __restrict__ dt,
                          const T* __restrict__ dtg, const BCView<T>& bc,
                          const T* __restrict__ h, const T* __restrict__ a,
                          const T* __restrict__ gs_tile, const Adjoint<T>& acc,
                          T* __restrict__ du, T* __restrict__ ddelta, T* __restrict__ dbc) {
  constexpr int64_t W = kLanes<T>, bw = kBcast ? 1 : W;
  const int64_t N = kN > 0 ? kN : nstate;
  T* __restrict__ carry = acc.carry;
  T* __restrict__ dA = acc.dA;
  alignas(64) T gdtu[W], gdt[W], dtu[W];
  for (int64_t j = K - 1; j >= 0; --j) {
    const T* __restrict__ uj = u + j * W;
    const T* __restrict__ dtj = dt + j * W;
    const T* __restrict__ gs = gs_tile + j * W;
#pragma omp simd
    for (int64_t l = 0; l < W; ++l) {
      gdtu[l] = T(0);
      gdt[l] = T(0);
      dtu[l] = dtj[l] * uj[l];
    }
    const T* __restrict__ Bt = bc.B + j * bc.step;
    const T* __restrict__ Ct = bc.C + j * bc.step;
    T* __restrict__ dBt = dbc + j * 2 * N * W;  // the tile (K, 2, N, W)
    T* __restrict__ dCt = dBt + N * W;
    for (int64_t n = 0; n < N; ++n) {
      const T* __restrict__ bn = Bt + n * bw;
      const T* __restrict__ cn = Ct + n * bw;
      const T* __restrict__ hp = h + (j * N + n) * W;
      const T* __restrict__ hn = h + ((j + 1) * N + n) * W;
      const T* __restrict__ an = a + (j * N + n) * W;
      const T* __restrict__ An = g.A + n * W;
      T* __restrict__ cr = carry + n * W;
      T* __restrict__ dAn = dA + n * W;
      T* __restrict__ dbn = dBt + n * W;
      T* __restrict__ dcn = dCt + n * W;
#pragma omp simd
      for (int64_t l = 0; l < W; ++l) {
        const T gh = lane_value<kBcast>(cn, l) * gs[l] + cr[l];  // dL/dh_t
        dcn[l] += gs[l] * hn[l];
        dbn[l] += gh * dtu[l];
        gdtu[l] += gh * lane_value<kBcast>(bn, l);
        const T next = an[l] * gh;    // exp(dt_t A) dL/dh_t: the carry to step t - 1
        const T gdec = next * hp[l];  // dL/d(dt A) through the exp
        gdt[l] += gdec * An[l];
        dAn[l] += gdec * dtj[l];
        cr[l] = next;
      }
    }
    const T* __restrict__ dtgj = dtg + j * W;
    T* __restrict__ duj = du + j * W;
    T* __restrict__ ddj = ddelta + j * W;
#pragma omp simd
    for (int64_t l = 0; l < W; ++l) {
      const T g_delta = (gdt[l] + gdtu[l] * uj[l]) * dtgj[l];
      acc.dskip[l] += gs[l] * uj[l];
      acc.dbias[l] += g_delta;
      ddj[l] = g_delta;
      duj[l] = gs[l] * g.skip[l] + gdtu[l] * dtj[l];
    }
  }
}

// A lane group's backward pass through one chunk: its states recomputed from the checkpoint
// ck (N rows, `stride` apart) into h and a (scratch: (K + 1) N W and K N W), s (K, W) from
// them, then the adjoint recurrence from gs (see chunk_adjoint). The float32 AVX-512 form
// runs both, block of states by block, so that a block's h and a are small (see the top).
template <typename T, int kN, bool kBcast>
inline void chunk_backward(int64_t nstate, int64_t K, const LaneGroup& lg, const T* ck,
                           int64_t stride, const LaneConsts<T>& g, const T* u, const T* dt,
                           const T* dtg, const BCView<T>& bc, T* h, T* a, T* s, const T* gs,
                           const Adjoint<T>& acc, T* du, T* ddelta, T* dbc) {
  constexpr int64_t W = kLanes<T>;
#ifdef MMSHUFFLEMAMBA_HAS_AVX512
  if constexpr (kVectorChunks<T, kN>) {
    constexpr int kB = kStateBlock<kN>;
    constexpr int64_t bw = kBcast ? 1 : W;
    for (int n0 = 0; n0 < kN; n0 += kB) {
      for (int64_t n = 0; n < kB; ++n) load_lanes(ck + (n0 + n) * stride, lg.nl, h + n * W);
      LaneConsts<T> block = g;  // the block's decay rates (chunk_scan_v16 reads A2 and skip)
      block.A2 += n0 * W;
      const BCView<T> bcb{bc.B + n0 * bw, bc.C + n0 * bw, bc.step};
      chunk_scan_v16<kB, kBcast, true>(K, block, u, dt, bcb, h, a, s, n0 > 0);
      chunk_adjoint_v16<kN, kB, kBcast>(K, n0, g, u, dt, dtg, bc, h, a, gs, acc, du, ddelta, dbc);
    }
    return;
  }
#endif
  const int64_t N = kN > 0 ? kN : nstate;
  for (int64_t n = 0; n < N; ++n) load_lanes(ck + n * stride, lg.nl, h + n * W);
  chunk_recompute<T, kN, kBcast>(N, K, g, u, dt, bc, h, a, s);
  chunk_adjoint<T, kN, kBcast>(N, K, g, u, dt, dtg, bc, h, a, gs, acc, du, ddelta, dbc);
}

// dbc (K, 2, N, W) summed over the lanes into out (K, 2, N), and zeroed for the next run.
template <typename T>
inline void sum_lanes(int64_t rows, T* __restrict__ dbc, T* __restrict__ out) {
  constexpr int64_t W = kLanes<T>;
  for (int64_t r = 0; r < rows; ++r) {
    T* __restrict__ v = dbc + r * W;
    T sum = T(0);
#pragma omp simd reduction(+ : sum)
    for (int64_t l = 0; l < W; ++l) sum += v[l];
    out[r] = sum;
    std::fill(v, v + W, T(0));
  }
}

// ---------------------------------------------------------------------------- drivers
// IO (one per direction). A task's lane groups are one Span; its tiles are (groups, kChunk, W),
// zero past a group's nl. For the chunk of scan steps i0 .. i0 + K the drivers call:
//   ScanParams<T> params; ParamGrads<T> grads; T* ckpt;
//   load_inputs(b, span, i0, K, u, delta)   forward: the u and delta tiles
//   store_out(b, span, i0, K, s)            forward: the outputs s
//   load_backward(b, span, i0, K, u, delta, gs, gz)   backward, before the scans: u and
//                                           delta, gs = dL/ds and gz (dL/dz = gz s: the gate's
//                                           slope, for after the scans)
//   store_backward(b, span, i0, K, s, gz, du, ddelta) backward: du, ddelta and dL/dz
//   load_bc<kBcast>(b, lg, i0, K, tile)     the chunk's B and C for lane group lg: a view of
//                                           the entry's rows (broadcast) or of `tile` filled
//                                           per lane
//   add_dbc<kBcast>(b, part, lg, i0, K, dbc) backward: adds dL/dB, dL/dC into task part's
// An entry whose rows are token-major reads and writes each row once per chunk for all the
// span's groups. Directions run one after the other inside a task, on the same lanes, so a
// second direction's store_out (store_backward) may read what the first one stored.

template <typename T>
inline T* checkpoint_at(T* ckpt, int64_t b, int64_t c, int64_t nchunks, int64_t N, int64_t dim,
                        const LaneGroup& lg) {
  return ckpt + (b * nchunks + c) * N * dim + lg.d0;
}

template <typename T, int kN, bool kBcast, typename IO>
void scan_forward(const IO* dirs, int ndirs, const std::vector<LaneGroup>& groups, int64_t batch,
                  int64_t len, int64_t nstate, int64_t dim, int64_t tpb) {
  constexpr int64_t W = kLanes<T>;
  const int64_t N = kN > 0 ? kN : nstate, G = static_cast<int64_t>(groups.size());
  const int64_t nchunks = ceil_div(len, kChunk), per_task = ceil_div(G, tpb);
  at::parallel_for(0, batch * tpb, 1, [&](int64_t begin, int64_t end) {
    const FlushDenormals ftz;
    Scratch<T> h_buf(per_task * N * W), c_buf(per_task * LaneConsts<T>::size(N));
    Scratch<T> u(per_task * kChunk * W), dt(per_task * kChunk * W), s(per_task * kChunk * W),
        bc(kBcast ? 0 : kChunk * 2 * N * W);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / tpb, g0 = task % tpb * per_task, g1 = std::min(G, g0 + per_task);
      const Span span{groups.data() + std::min(g0, G), std::max<int64_t>(0, g1 - g0)};
      for (int dir = 0; dir < ndirs; ++dir) {
        const IO& io = dirs[dir];
        std::vector<LaneConsts<T>> consts;
        consts.reserve(span.count);
        for (int64_t grp = g0; grp < g1; ++grp)
          consts.emplace_back(io.params, groups[grp], N,
                              c_buf.data() + (grp - g0) * LaneConsts<T>::size(N));
        std::fill(h_buf.begin(), h_buf.end(), T(0));
        for (int64_t c = 0; c < nchunks; ++c) {
          const int64_t i0 = c * kChunk, K = std::min(len, i0 + kChunk) - i0;
          io.load_inputs(b, span, i0, K, u.data(), dt.data());
          for (int64_t grp = g0; grp < g1; ++grp) {
            const LaneGroup& lg = groups[grp];
            const int64_t o = (grp - g0) * kChunk * W;
            T* h = h_buf.data() + (grp - g0) * N * W;
            T* ck = checkpoint_at(io.ckpt, b, c, nchunks, N, dim, lg);
            for (int64_t n = 0; n < N; ++n) store_lanes(h + n * W, lg.nl, ck + n * dim);
            const BCView<T> bcv = io.template load_bc<kBcast>(b, lg, i0, K, bc.data());
            step_tile(dt.data() + o, static_cast<T*>(nullptr), consts[grp - g0].bias,
                      io.params.softplus, K);
            chunk_forward<T, kN, kBcast>(N, K, consts[grp - g0], u.data() + o, dt.data() + o, bcv,
                                         h, s.data() + o);
          }
          io.store_out(b, span, i0, K, s.data());
        }
      }
    }
  });
}

// The backward pass visits the chunks from last to first and, like the forward pass, every
// lane group of the task within a chunk, so that a chunk's rows (one page each in the
// token-major layout) are read once for all of them and broadcast B and C gradients are
// summed over lanes once per chunk. dL/ds does not depend on s, so the gate's part comes
// before the scans and dL/dz after them, when s has been recomputed.
template <typename T, int kN, bool kBcast, typename IO>
void scan_backward(const IO* dirs, int ndirs, const std::vector<LaneGroup>& groups,
                   int64_t batch, int64_t len, int64_t nstate, int64_t dim, int64_t tpb) {
  constexpr int64_t W = kLanes<T>;
  const int64_t N = kN > 0 ? kN : nstate, G = static_cast<int64_t>(groups.size());
  const int64_t nchunks = ceil_div(len, kChunk), per_task = ceil_div(G, tpb);
  at::parallel_for(0, batch * tpb, 1, [&](int64_t begin, int64_t end) {
    const FlushDenormals ftz;
    const int64_t tile = per_task * kChunk * W;  // a span's tiles
    Scratch<T> h((kChunk + 1) * N * W), a(kChunk * N * W), bc(kBcast ? 0 : kChunk * 2 * N * W),
        dbc(kChunk * 2 * N * W, T(0)), dbc_sum(kBcast ? kChunk * 2 * N : 0),
        c_buf(per_task * LaneConsts<T>::size(N)), acc_buf(per_task * Adjoint<T>::size(N));
    Scratch<T> dtg(kChunk * W), u(tile), dt(tile), s(tile), gs(tile), gz(tile), du(tile),
        ddelta(tile);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / tpb, part = task % tpb;
      const int64_t g0 = part * per_task, g1 = std::min(G, g0 + per_task);
      const Span span{groups.data() + std::min(g0, G), std::max<int64_t>(0, g1 - g0)};
      for (int dir = 0; dir < ndirs; ++dir) {
        const IO& io = dirs[dir];
        std::vector<LaneConsts<T>> consts;
        std::vector<Adjoint<T>> accs;
        consts.reserve(span.count);
        accs.reserve(span.count);
        for (int64_t grp = g0; grp < g1; ++grp) {
          consts.emplace_back(io.params, groups[grp], N,
                              c_buf.data() + (grp - g0) * LaneConsts<T>::size(N));
          accs.emplace_back(N, acc_buf.data() + (grp - g0) * Adjoint<T>::size(N));
        }
        for (int64_t c = nchunks - 1; c >= 0; --c) {
          const int64_t i0 = c * kChunk, K = std::min(len, i0 + kChunk) - i0;
          io.load_backward(b, span, i0, K, u.data(), dt.data(), gs.data(), gz.data());
          for (int64_t grp = g0; grp < g1; ++grp) {
            const LaneGroup& lg = groups[grp];
            const LaneConsts<T>& g = consts[grp - g0];
            const int64_t o = (grp - g0) * kChunk * W;
            step_tile(dt.data() + o, dtg.data(), g.bias, io.params.softplus, K);
            const BCView<T> bcv = io.template load_bc<kBcast>(b, lg, i0, K, bc.data());
            chunk_backward<T, kN, kBcast>(N, K, lg, checkpoint_at(io.ckpt, b, c, nchunks, N, dim, lg),
                                          dim, g, u.data() + o, dt.data() + o, dtg.data(), bcv,
                                          h.data(), a.data(), s.data() + o, gs.data() + o,
                                          accs[grp - g0], du.data() + o, ddelta.data() + o,
                                          dbc.data());
            if constexpr (kBcast) {  // flush when the next lane group reads other B and C
              if (grp + 1 < g1) {
                const BCView<T> next = io.template load_bc<kBcast>(b, groups[grp + 1], i0, K, nullptr);
                if (next.B == bcv.B && next.C == bcv.C) continue;
              }
              sum_lanes(K * 2 * N, dbc.data(), dbc_sum.data());
              io.template add_dbc<kBcast>(b, part, lg, i0, K, dbc_sum.data());
            } else {
              io.template add_dbc<kBcast>(b, part, lg, i0, K, dbc.data());
              std::fill(dbc.begin(), dbc.begin() + K * 2 * N * W, T(0));
            }
          }
          io.store_backward(b, span, i0, K, s.data(), gz.data(), du.data(), ddelta.data());
        }
        for (int64_t grp = g0; grp < g1; ++grp) {
          const LaneGroup& lg = groups[grp];
          const Adjoint<T>& acc = accs[grp - g0];
          for (int64_t l = 0; l < lg.nl; ++l) {
            const int64_t row = b * dim + lg.d0 + l;
            for (int64_t n = 0; n < N; ++n) io.grads.dA[row * N + n] = acc.dA[n * W + l];
            io.grads.dskip[row] = acc.dskip[l];
            io.grads.dbias[row] = acc.dbias[l];
          }
        }
      }
    }
  });
}

}  // namespace mmshufflemamba_cpu
