// The selective scan of one direction on CPU (Mamba's S6 recurrence): the entry behind
// ops/compiled_scan.py. The scans themselves are scan_core.h's, the same as the fused
// mixer's; this file says where the rows live (ChannelMajorIO) and applies the z gate.
//
// For one row (b, d) and state index n, with dt_t = softplus(delta_t + bias_d):
//   h_t[n] = exp(dt_t A[d,n]) h_{t-1}[n] + dt_t u_t B_t[n]
//   y_t    = (sum_n C_t[n] h_t[n] + D_d u_t) * silu(z_t)
//
// Layouts (all contiguous, all of one dtype: float32 or float64):
//   u, delta, z, out: (batch, dim, len)
//   A: (dim, nstate); D, delta_bias: (dim,)
//   B, C: (dim, nstate) when shared over time, else (batch, groups, len, nstate)
//   checkpoints: (batch, nchunks, nstate, dim), the state before each chunk of kChunk steps
// A chunk of kLanes rows is transposed into the scan's (step, lane) tiles on the way in and
// back on the way out. Time-varying B and C are broadcast to the lanes (lane groups never
// straddle a group of channels); B or C shared over time is read per lane.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "cpu_math.h"
#include "kernels.h"
#include "scan_core.h"

namespace mmshufflemamba_cpu {
namespace {

// B or C: shared over time (dim, nstate), or time-varying (batch, groups, len, nstate).
template <typename T>
struct InputMatrix {
  const T* data;
  bool var;
  int64_t groups;  // 1 when shared

  int64_t group(int64_t d, int64_t dim) const { return d / (dim / groups); }
};

template <typename T>
InputMatrix<T> input_matrix(const at::Tensor& M) {
  return {M.data_ptr<T>(), M.dim() == 4, M.dim() == 4 ? M.size(1) : 1};
}

// The scan of (batch, dim, len) rows, for scan_core.h's drivers.
template <typename T>
struct ChannelMajorIO {
  static constexpr int64_t W = kLanes<T>;
  const T *u, *delta, *z;  // z may be null
  InputMatrix<T> B, C;
  ScanParams<T> params;
  int64_t L, dim, N;
  T* ckpt;  // (batch, nchunks, N, dim)
  T* out;   // forward
  // backward
  const T* dout;
  T *du, *ddelta, *dz;  // (batch, dim, len); dz null without z
  T *dB, *dC;           // time-varying: per task (batch, tasks, groups, len, N); shared: (batch, dim, N)
  ParamGrads<T> grads;
  int64_t tpb;

  int64_t row(int64_t b, int64_t d) const { return (b * dim + d) * L; }

  // Rows of kLanes channels into (step, lane) tiles, and back.
  void gather(const T* x, int64_t b, const LaneGroup& lg, int64_t i0, int64_t K, T* tile) const {
    for (int64_t l = 0; l < lg.nl; ++l) {
      const T* __restrict__ src = x + row(b, lg.d0 + l) + i0;
      for (int64_t j = 0; j < K; ++j) tile[j * W + l] = src[j];
    }
    for (int64_t j = 0; j < K; ++j) std::fill(tile + j * W + lg.nl, tile + (j + 1) * W, T(0));
  }

  void scatter(const T* tile, int64_t b, const LaneGroup& lg, int64_t i0, int64_t K, T* x) const {
    for (int64_t l = 0; l < lg.nl; ++l) {
      T* __restrict__ dst = x + row(b, lg.d0 + l) + i0;
      for (int64_t j = 0; j < K; ++j) dst[j] = tile[j * W + l];
    }
  }

  // M at step t for channel d, state n.
  T value(const InputMatrix<T>& M, int64_t b, int64_t d, int64_t t, int64_t n) const {
    return M.var ? M.data[((b * M.groups + M.group(d, dim)) * L + t) * N + n]
                 : M.data[d * N + n];
  }

  template <bool kBcast>
  BCView<T> load_bc(int64_t b, const LaneGroup& lg, int64_t i0, int64_t K, T* tile) const {
    if constexpr (kBcast) {  // both time-varying; the lane group lies inside one group of each
      return {B.data + ((b * B.groups + B.group(lg.d0, dim)) * L + i0) * N,
              C.data + ((b * C.groups + C.group(lg.d0, dim)) * L + i0) * N, N};
    } else {
      for (int64_t j = 0; j < K; ++j)
        for (int w = 0; w < 2; ++w)
          for (int64_t n = 0; n < N; ++n) {
            T* v = tile + ((j * 2 + w) * N + n) * W;
            for (int64_t l = 0; l < W; ++l)
              v[l] = l < lg.nl ? value(w == 0 ? B : C, b, lg.d0 + l, i0 + j, n) : T(0);
          }
      return {tile, tile + N * W, 2 * N * W};
    }
  }

  // The span's tiles: each lane group's rows are contiguous in t already.
  void load_inputs(int64_t b, Span sp, int64_t i0, int64_t K, T* ut, T* dt) const {
    for (int64_t g = 0; g < sp.count; ++g) {
      gather(u, b, sp.groups[g], i0, K, ut + g * kChunk * W);
      gather(delta, b, sp.groups[g], i0, K, dt + g * kChunk * W);
    }
  }

  // out = s silu(z), or s: the gate computed on (step, lane) tiles, so that it vectorises.
  void store_out(int64_t b, Span sp, int64_t i0, int64_t K, const T* s) const {
    alignas(64) T tile[kChunk * W];
    for (int64_t g = 0; g < sp.count; ++g) {
      const LaneGroup& lg = sp.groups[g];
      const T* sg = s + g * kChunk * W;
      if (!z) {
        scatter(sg, b, lg, i0, K, out);
        continue;
      }
      gather(z, b, lg, i0, K, tile);
#pragma omp simd
      for (int64_t i = 0; i < K * W; ++i) tile[i] = sg[i] * silu(tile[i]);
      scatter(tile, b, lg, i0, K, out);
    }
  }

  // Backward, before the scan: u and delta tiles, gs = dL/ds = dout silu(z) (or dout) and
  // gz = dout silu'(z) (dL/dz = gz s).
  void load_backward(int64_t b, Span sp, int64_t i0, int64_t K, T* ut, T* dt, T* gs,
                     T* gz) const {
    load_inputs(b, sp, i0, K, ut, dt);
    for (int64_t g = 0; g < sp.count; ++g) {
      const LaneGroup& lg = sp.groups[g];
      T* gsg = gs + g * kChunk * W;
      T* gzg = gz + g * kChunk * W;
      gather(dout, b, lg, i0, K, gsg);
      if (!z) continue;
      gather(z, b, lg, i0, K, gzg);
#pragma omp simd
      for (int64_t i = 0; i < K * W; ++i) {
        const T sig = sigmoid(gzg[i]), d = gsg[i];
        gsg[i] = d * gzg[i] * sig;
        gzg[i] = d * sig * (T(1) + gzg[i] * (T(1) - sig));
      }
    }
  }

  // Backward, after the scan: du, ddelta, and dz = gz s.
  void store_backward(int64_t b, Span sp, int64_t i0, int64_t K, const T* s, const T* gz,
                      const T* dut, const T* ddt) const {
    alignas(64) T tile[kChunk * W];
    for (int64_t g = 0; g < sp.count; ++g) {
      const LaneGroup& lg = sp.groups[g];
      const int64_t o = g * kChunk * W;
      scatter(dut + o, b, lg, i0, K, du);
      scatter(ddt + o, b, lg, i0, K, ddelta);
      if (!z) continue;
#pragma omp simd
      for (int64_t i = 0; i < K * W; ++i) tile[i] = gz[o + i] * s[o + i];
      scatter(tile, b, lg, i0, K, dz);
    }
  }

  // Where dL/dM for channel d at step t, state n accumulates.
  T* grad_at(const InputMatrix<T>& M, T* dM, int64_t b, int64_t part, int64_t d, int64_t t,
             int64_t n) const {
    return M.var ? dM + (((b * tpb + part) * M.groups + M.group(d, dim)) * L + t) * N + n
                 : dM + (b * dim + d) * N + n;
  }

  template <bool kBcast>
  void add_dbc(int64_t b, int64_t part, const LaneGroup& lg, int64_t i0, int64_t K,
               const T* dbc) const {
    for (int w = 0; w < 2; ++w) {
      const InputMatrix<T>& M = w == 0 ? B : C;
      T* dM = w == 0 ? dB : dC;
      if constexpr (kBcast) {  // one group for the whole lane group: rows of N per step
        T* __restrict__ dst = grad_at(M, dM, b, part, lg.d0, i0, 0);
        for (int64_t j = 0; j < K; ++j) {
          const T* __restrict__ g = dbc + (j * 2 + w) * N;
#pragma omp simd
          for (int64_t n = 0; n < N; ++n) dst[j * N + n] += g[n];
        }
      } else {
        for (int64_t l = 0; l < lg.nl; ++l) {
          T* __restrict__ dst = grad_at(M, dM, b, part, lg.d0 + l, i0, 0);
          const int64_t step = M.var ? N : 0;  // a shared M sums over the steps
          for (int64_t j = 0; j < K; ++j)
            for (int64_t n = 0; n < N; ++n) dst[j * step + n] += dbc[((j * 2 + w) * N + n) * W + l];
        }
      }
    }
  }
};

void check_row_tensor(const at::Tensor& t, const at::Tensor& u, const char* name) {
  TORCH_CHECK(t.sizes() == u.sizes(), name, " must have the shape of u ", u.sizes(), ", got ",
              t.sizes());
  TORCH_CHECK(t.is_contiguous() && t.scalar_type() == u.scalar_type(), name,
              " must be contiguous and of u's dtype");
}

void check_matrix(const at::Tensor& M, const at::Tensor& u, int64_t nstate, const char* name) {
  TORCH_CHECK(M.is_contiguous() && M.scalar_type() == u.scalar_type(), name,
              " must be contiguous and of u's dtype");
  if (M.dim() == 2) {
    TORCH_CHECK(M.size(0) == u.size(1) && M.size(1) == nstate, name, " must be (dim, nstate)");
  } else {
    TORCH_CHECK(M.dim() == 4 && M.size(0) == u.size(0) && M.size(2) == u.size(2) &&
                    M.size(3) == nstate && u.size(1) % M.size(1) == 0,
                name, " must be (batch, groups, len, nstate) with groups dividing dim");
  }
}

void check_inputs(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                  const at::Tensor& B, const at::Tensor& C, const c10::optional<at::Tensor>& D,
                  const c10::optional<at::Tensor>& z, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(u.device().is_cpu(), "the compiled selective scan runs on CPU tensors only");
  TORCH_CHECK(u.scalar_type() == at::kFloat || u.scalar_type() == at::kDouble,
              "the compiled selective scan computes in float32 or float64");
  TORCH_CHECK(u.dim() == 3 && u.is_contiguous(), "u must be contiguous (batch, dim, len)");
  check_row_tensor(delta, u, "delta");
  if (z) check_row_tensor(*z, u, "z");
  TORCH_CHECK(A.dim() == 2 && A.size(0) == u.size(1) && A.is_contiguous() &&
                  A.scalar_type() == u.scalar_type(),
              "A must be contiguous (dim, nstate) of u's dtype");
  check_matrix(B, u, A.size(1), "B");
  check_matrix(C, u, A.size(1), "C");
  for (const auto* v : {&D, &bias}) {
    if (*v) {
      TORCH_CHECK((*v)->dim() == 1 && (*v)->size(0) == u.size(1) && (*v)->is_contiguous() &&
                      (*v)->scalar_type() == u.scalar_type(),
                  "D and delta_bias must be contiguous (dim,) of u's dtype");
    }
  }
}


int64_t num_chunks(int64_t len) { return ceil_div(len, kChunk); }

template <typename T>
ChannelMajorIO<T> make_io(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                          const at::Tensor& B, const at::Tensor& C,
                          const c10::optional<at::Tensor>& D, const c10::optional<at::Tensor>& z,
                          const c10::optional<at::Tensor>& bias, bool softplus,
                          const at::Tensor& checkpoints) {
  ChannelMajorIO<T> io{};
  io.u = u.data_ptr<T>();
  io.delta = delta.data_ptr<T>();
  io.z = z ? z->data_ptr<T>() : nullptr;
  io.B = input_matrix<T>(B);
  io.C = input_matrix<T>(C);
  io.params = {A.data_ptr<T>(), D ? D->data_ptr<T>() : nullptr,
               bias ? bias->data_ptr<T>() : nullptr, softplus};
  io.L = u.size(2);
  io.dim = u.size(1);
  io.N = A.size(1);
  io.ckpt = checkpoints.data_ptr<T>();
  return io;
}

// Broadcast B and C when both vary in time; lane groups then stay inside one group of
// channels of each.
struct Plan {
  bool bcast;
  int64_t segment;
};

Plan plan_for(const at::Tensor& u, const at::Tensor& B, const at::Tensor& C) {
  const int64_t dim = u.size(1);
  if (B.dim() == 4 && C.dim() == 4)
    return {true, std::gcd(dim / B.size(1), dim / C.size(1))};
  return {false, dim};
}

// Runs f.template operator()<kN, kBcast>() for the plan and the state size.
template <typename F>
void with_variant(int64_t nstate, bool bcast, F&& f) {
  if (bcast) {
    if (nstate == 16) f.template operator()<16, true>();
    else f.template operator()<0, true>();
  } else {
    if (nstate == 16) f.template operator()<16, false>();
    else f.template operator()<0, false>();
  }
}

}  // namespace

// Returns (out, checkpoints).
std::vector<at::Tensor> selective_scan_forward(const at::Tensor& u, const at::Tensor& delta,
                                               const at::Tensor& A, const at::Tensor& B,
                                               const at::Tensor& C,
                                               const c10::optional<at::Tensor>& D,
                                               const c10::optional<at::Tensor>& z,
                                               const c10::optional<at::Tensor>& bias,
                                               bool softplus) {
  check_inputs(u, delta, A, B, C, D, z, bias);
  const int64_t batch = u.size(0), dim = u.size(1), len = u.size(2), nstate = A.size(1);
  auto out = at::empty_like(u);
  auto checkpoints = at::empty({batch, num_chunks(len), nstate, dim}, u.options());
  const Plan plan = plan_for(u, B, C);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_forward", [&] {
    auto io = make_io<scalar_t>(u, delta, A, B, C, D, z, bias, softplus, checkpoints);
    io.out = out.data_ptr<scalar_t>();
    const auto groups = lane_groups<scalar_t>(dim, plan.segment);
    const int64_t tpb = tasks_per_batch(groups.size(), batch);
    with_variant(nstate, plan.bcast, [&]<int kN, bool kBcast>() {
      scan_forward<scalar_t, kN, kBcast>(&io, 1, groups, batch, len, nstate, dim, tpb);
    });
  });
  return {out, checkpoints};
}

// Returns gradients of (u, delta, A, B, C, D, z, delta_bias); undefined (None) where the
// input was not given. dB and dC have the layout of B and C as passed to forward.
std::vector<at::Tensor> selective_scan_backward(const at::Tensor& dout, const at::Tensor& u,
                                                const at::Tensor& delta, const at::Tensor& A,
                                                const at::Tensor& B, const at::Tensor& C,
                                                const c10::optional<at::Tensor>& D,
                                                const c10::optional<at::Tensor>& z,
                                                const c10::optional<at::Tensor>& bias,
                                                bool softplus, const at::Tensor& checkpoints) {
  check_inputs(u, delta, A, B, C, D, z, bias);
  check_row_tensor(dout, u, "the output gradient");
  const int64_t batch = u.size(0), dim = u.size(1), len = u.size(2), nstate = A.size(1);
  TORCH_CHECK(checkpoints.is_contiguous() &&
                  checkpoints.sizes() == at::IntArrayRef({batch, num_chunks(len), nstate, dim}),
              "checkpoints do not match the inputs");
  const Plan plan = plan_for(u, B, C);
  auto opts = u.options();
  auto du = at::empty_like(u), ddelta = at::empty_like(u);
  auto dz = z ? at::empty_like(u) : at::Tensor();
  auto dA = at::empty({batch, dim, nstate}, opts);
  auto dD = at::empty({batch, dim}, opts), dbias = at::empty({batch, dim}, opts);
  at::Tensor dB, dC;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_backward", [&] {
    const auto groups = lane_groups<scalar_t>(dim, plan.segment);
    const int64_t tpb = tasks_per_batch(groups.size(), batch);
    auto partial = [&](const at::Tensor& M) {
      return M.dim() == 4 ? at::zeros({batch, tpb, M.size(1), len, nstate}, opts)
                          : at::zeros({batch, dim, nstate}, opts);
    };
    dB = partial(B);
    dC = partial(C);
    auto io = make_io<scalar_t>(u, delta, A, B, C, D, z, bias, softplus, checkpoints);
    io.dout = dout.data_ptr<scalar_t>();
    io.du = du.data_ptr<scalar_t>();
    io.ddelta = ddelta.data_ptr<scalar_t>();
    io.dz = z ? dz.data_ptr<scalar_t>() : nullptr;
    io.dB = dB.data_ptr<scalar_t>();
    io.dC = dC.data_ptr<scalar_t>();
    io.grads = {dA.data_ptr<scalar_t>(), dD.data_ptr<scalar_t>(), dbias.data_ptr<scalar_t>()};
    io.tpb = tpb;
    with_variant(nstate, plan.bcast, [&]<int kN, bool kBcast>() {
      scan_backward<scalar_t, kN, kBcast>(&io, 1, groups, batch, len, nstate, dim, tpb);
    });
  });
  return {du,
          ddelta,
          dA.sum(0),
          B.dim() == 4 ? dB.sum(1) : dB.sum(0),
          C.dim() == 4 ? dC.sum(1) : dC.sum(0),
          D ? dD.sum(0) : at::Tensor(),
          dz,
          bias ? dbias.sum(0) : at::Tensor()};
}

}  // namespace mmshufflemamba_cpu
