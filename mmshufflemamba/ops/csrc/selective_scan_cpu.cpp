// Selective scan (Mamba's S6 recurrence) on CPU: forward, and a backward pass that
// recomputes the states chunk by chunk from checkpoints saved by the forward pass.
//
// For one row (b, d) and state index n, with dt_t = softplus(delta_t + bias_d):
//   h_t[n] = exp(dt_t A[d,n]) h_{t-1}[n] + dt_t u_t B_t[n]
//   y_t    = (sum_n C_t[n] h_t[n] + D_d u_t) * silu(z_t)
//
// Layouts (all contiguous, all of one dtype: float32 or float64):
//   u, delta, z, out: (batch, dim, len)
//   A: (dim, nstate); D, delta_bias: (dim,)
//   B, C: (dim, nstate) when shared over time, else (batch, groups, len, nstate)
//   checkpoints: (batch, dim, nchunks, nstate), the state before each chunk of kChunk steps
//
// Rows are independent: the forward pass runs one row per task. The backward pass runs
// the rows of one (batch, block of channels) per task and reduces parameter gradients
// over tasks afterwards, so no two tasks ever write the same memory.
//
// Speed comes from vectorising over the state index and over whole chunks of steps: the
// exponentials of a chunk are computed in one pass, outside the sequential multiply-add
// chain. cpu_kernel.py compiles with -fopenmp (at::parallel_for is OpenMP here),
// -fno-trapping-math (lets GCC vectorise the exp/log polynomials) and reassociation (for
// the sums over the state index).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include "cpu_math.h"
#include "kernels.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <vector>

namespace mmshufflemamba_cpu {
namespace {

constexpr int64_t kChunk = 64;        // steps per chunk: one checkpoint, one recomputation
// B or C: shared over time (dim, nstate), or time-varying (batch, groups, len, nstate).
template <typename T>
struct InputMatrix {
  const T* data;
  bool var;
  int64_t groups;  // 1 when shared

  int64_t group(int64_t d, int64_t dim) const { return d / (dim / groups); }
  int64_t step(int64_t nstate) const { return var ? nstate : 0; }  // from t to t + 1
};

template <typename T>
struct ScanInputs {
  const T* u;
  const T* delta;
  const T* A;
  InputMatrix<T> B, C;
  const T* D;     // may be null
  const T* z;     // may be null
  const T* bias;  // may be null
  int64_t batch, dim, len, nstate;
  bool softplus;

  // B or C at step 0 of row (b, d).
  const T* row(const InputMatrix<T>& M, int64_t b, int64_t d) const {
    return M.var ? M.data + (b * M.groups + M.group(d, dim)) * len * nstate
                 : M.data + d * nstate;
  }
};

int64_t num_chunks(int64_t len) { return (len + kChunk - 1) / kChunk; }

template <typename T>
inline T dot(const T* __restrict__ x, const T* __restrict__ y, int64_t n) {
  T acc = T(0);
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += x[i] * y[i];
  return acc;
}

// One row's states over steps [t0, t1): decays a[j] = exp(dt_t A) and states h[j + 1] = h_t,
// given h[0] = h_{t0-1}. The exponentials are computed for the whole chunk at once (they
// vectorise and pipeline); only the multiply-add chain is sequential.
template <typename T, int kN>
inline void chunk_states(const T* __restrict__ A, const T* __restrict__ dt,
                         const T* __restrict__ u, const T* B0, int64_t b_step, int64_t nstate,
                         int64_t t0, int64_t t1, T* __restrict__ a, T* __restrict__ h) {
  const int64_t N = kN > 0 ? kN : nstate, K = t1 - t0;
  for (int64_t j = 0; j < K; ++j) {
#pragma omp simd
    for (int64_t n = 0; n < N; ++n) a[j * N + n] = dt[t0 + j] * A[n];
  }
  exp_inplace(a, K * N);
  for (int64_t j = 0; j < K; ++j) {
    const int64_t t = t0 + j;
    const T dtu = dt[t] * u[t];
    const T* __restrict__ Bt = B0 + t * b_step;
#pragma omp simd
    for (int64_t n = 0; n < N; ++n) h[(j + 1) * N + n] = a[j * N + n] * h[j * N + n] + dtu * Bt[n];
  }
}

// kN > 0 fixes nstate at compile time (the common d_state = 16); 0 reads it at run time.
template <typename T, int kN>
void scan_forward(const ScanInputs<T>& s, T* out, T* checkpoints) {
  const int64_t N = kN > 0 ? kN : s.nstate, L = s.len, nchunks = num_chunks(L);
  at::parallel_for(0, s.batch * s.dim, 1, [&](int64_t begin, int64_t end) {
    const FlushDenormals ftz;
    std::vector<T> h_buf((kChunk + 1) * N), a_buf(kChunk * N), dt_buf(L), gate_buf(s.z ? L : 0);
    T* __restrict__ h = h_buf.data();
    T* __restrict__ dt = dt_buf.data();
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / s.dim, d = row % s.dim;
      const T* B0 = s.row(s.B, b, d);
      const T* C0 = s.row(s.C, b, d);
      const int64_t c_step = s.C.step(N);
      const T* __restrict__ u = s.u + row * L;
      T* __restrict__ y = out + row * L;
      T* ckpt = checkpoints + row * nchunks * N;
      step_sizes(s.delta + row * L, s.bias ? s.bias[d] : T(0), s.softplus, L, dt,
                 static_cast<T*>(nullptr));
      std::fill(h, h + N, T(0));
      for (int64_t c = 0; c < nchunks; ++c) {
        const int64_t t0 = c * kChunk, t1 = std::min(L, t0 + kChunk);
        std::copy(h, h + N, ckpt + c * N);
        chunk_states<T, kN>(s.A + d * N, dt, u, B0, s.B.step(N), N, t0, t1, a_buf.data(), h);
        for (int64_t t = t0; t < t1; ++t) y[t] = dot(C0 + t * c_step, h + (t - t0 + 1) * N, N);
        std::copy(h + (t1 - t0) * N, h + (t1 - t0 + 1) * N, h);  // h_{t1-1} starts the next
      }
      const T skip = s.D ? s.D[d] : T(0);
#pragma omp simd
      for (int64_t t = 0; t < L; ++t) y[t] += skip * u[t];
      if (s.z) {
        const T* __restrict__ z = s.z + row * L;
        sigmoid_row(z, L, gate_buf.data());
        const T* __restrict__ gate = gate_buf.data();
#pragma omp simd
        for (int64_t t = 0; t < L; ++t) y[t] *= z[t] * gate[t];
      }
    }
  });
}

struct BlockPlan {
  int64_t blocks, block_size;
};

// Channel blocks per batch entry: enough tasks for every thread, few partial buffers.
BlockPlan plan_blocks(int64_t batch, int64_t dim) {
  const int64_t wanted = 4 * static_cast<int64_t>(at::get_num_threads());
  const int64_t blocks = std::min<int64_t>(dim, std::max<int64_t>(1, (wanted + batch - 1) / batch));
  const int64_t block_size = (dim + blocks - 1) / blocks;
  return {(dim + block_size - 1) / block_size, block_size};
}

template <typename T>
struct ScanGrads {
  T* du;         // (batch, dim, len)
  T* ddelta;     // (batch, dim, len)
  T* dz;         // (batch, dim, len) or null
  T* dA;         // (batch, dim, nstate), summed over batch afterwards
  T* dD;         // (batch, dim) or null
  T* dbias;      // (batch, dim) or null
  T* dB;         // var: (batch, blocks, groups of B, len, nstate); shared: (batch, dim, nstate)
  T* dC;         // as dB, with the groups of C
};

template <typename T, int kN>
void scan_backward(const ScanInputs<T>& s, const T* dout, const T* checkpoints,
                   const BlockPlan& plan, const ScanGrads<T>& g) {
  const int64_t N = kN > 0 ? kN : s.nstate, L = s.len, nchunks = num_chunks(L);
  at::parallel_for(0, s.batch * plan.blocks, 1, [&](int64_t begin, int64_t end) {
    const FlushDenormals ftz;
    // Per chunk: states h_{t0-1} .. h_{t1-1}, decays, dL/dh_t and dL/d(scan output);
    // per row: step sizes and gates.
    std::vector<T> h_buf((kChunk + 1) * N), a_buf(kChunk * N), gh_buf(kChunk * N);
    std::vector<T> gs_buf(kChunk), dt_buf(L), dt_grad_buf(L), sig_z_buf(s.z ? L : 0);
    std::vector<T> carry_buf(N), dA_buf(N), dB_shared(N), dC_shared(N);
    T* __restrict__ carry = carry_buf.data();  // exp(dt_{t+1} A) * dL/dh_{t+1}
    T* __restrict__ dA = dA_buf.data();
    T* __restrict__ gh = gh_buf.data();
    T* __restrict__ gs = gs_buf.data();
    const T* __restrict__ h = h_buf.data();
    const T* __restrict__ a = a_buf.data();
    const T* __restrict__ dt = dt_buf.data();
    const T* __restrict__ dt_grad = dt_grad_buf.data();
    const T* __restrict__ sig_z = sig_z_buf.data();
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / plan.blocks, block = task % plan.blocks;
      const int64_t d_end = std::min(s.dim, (block + 1) * plan.block_size);
      for (int64_t d = block * plan.block_size; d < d_end; ++d) {
        const int64_t row = b * s.dim + d;
        const T* __restrict__ A = s.A + d * N;
        const T* B0 = s.row(s.B, b, d);
        const T* C0 = s.row(s.C, b, d);
        const int64_t b_step = s.B.step(N), c_step = s.C.step(N);
        // Where dL/dB_t and dL/dC_t accumulate: this task's partial buffer (time-varying)
        // or one running vector for the row (shared over time).
        auto grad_row = [&](const InputMatrix<T>& M, T* partial, std::vector<T>& shared) {
          return M.var ? partial + ((b * plan.blocks + block) * M.groups + M.group(d, s.dim)) * L * N
                       : shared.data();
        };
        T* dB0 = grad_row(s.B, g.dB, dB_shared);
        T* dC0 = grad_row(s.C, g.dC, dC_shared);
        const T skip = s.D ? s.D[d] : T(0);
        const T* __restrict__ u = s.u + row * L;
        const T* __restrict__ z = s.z ? s.z + row * L : nullptr;
        const T* __restrict__ gy = dout + row * L;
        const T* ckpt = checkpoints + row * nchunks * N;
        T* __restrict__ du = g.du + row * L;
        T* __restrict__ ddelta = g.ddelta + row * L;
        step_sizes(s.delta + row * L, s.bias ? s.bias[d] : T(0), s.softplus, L, dt_buf.data(),
                   dt_grad_buf.data());
        if (z) sigmoid_row(z, L, sig_z_buf.data());
        std::fill(carry, carry + N, T(0));
        std::fill(dA, dA + N, T(0));
        std::fill(dB_shared.begin(), dB_shared.end(), T(0));
        std::fill(dC_shared.begin(), dC_shared.end(), T(0));
        T dD = T(0), dbias = T(0);
        for (int64_t c = nchunks - 1; c >= 0; --c) {
          const int64_t t0 = c * kChunk, t1 = std::min(L, t0 + kChunk), K = t1 - t0;
          std::copy(ckpt + c * N, ckpt + (c + 1) * N, h_buf.data());
          chunk_states<T, kN>(A, dt, u, B0, b_step, N, t0, t1, a_buf.data(), h_buf.data());
          for (int64_t j = 0; j < K; ++j) {  // dL/d(sum_n C_t h_t), through the gate
            const int64_t t = t0 + j;
            gs[j] = gy[t];
            if (z) {
              const T out = dot(C0 + t * c_step, h + (j + 1) * N, N) + skip * u[t];
              const T sig = sig_z[t];
              g.dz[row * L + t] = gs[j] * out * sig * (T(1) + z[t] * (T(1) - sig));
              gs[j] *= z[t] * sig;
            }
          }
          for (int64_t j = K - 1; j >= 0; --j) {  // adjoint recurrence: dL/dh_t, backwards
            const T* __restrict__ Ct = C0 + (t0 + j) * c_step;
#pragma omp simd
            for (int64_t n = 0; n < N; ++n) {
              gh[j * N + n] = Ct[n] * gs[j] + carry[n];
              carry[n] = a[j * N + n] * gh[j * N + n];
            }
          }
          for (int64_t j = 0; j < K; ++j) {  // gradients from dL/dh_t, step by step
            const int64_t t = t0 + j;
            const T dtu = dt[t] * u[t];
            const T* __restrict__ Bt = B0 + t * b_step;
            const T* __restrict__ ght = gh + j * N;
            const T* __restrict__ h_prev = h + j * N;
            const T* __restrict__ ht = h + (j + 1) * N;
            const T* __restrict__ at = a + j * N;
            T* __restrict__ dBt = dB0 + t * b_step;
            T* __restrict__ dCt = dC0 + t * c_step;
            T g_dtu = T(0), g_dt = T(0);
#pragma omp simd reduction(+ : g_dtu, g_dt)
            for (int64_t n = 0; n < N; ++n) {
              dCt[n] += gs[j] * ht[n];
              dBt[n] += ght[n] * dtu;
              g_dtu += ght[n] * Bt[n];
              const T g_decay = ght[n] * h_prev[n] * at[n];  // dL/d(dt A) through exp
              g_dt += g_decay * A[n];
              dA[n] += g_decay * dt[t];
            }
            g_dt += g_dtu * u[t];
            const T g_delta = g_dt * dt_grad[t];
            dD += gs[j] * u[t];
            du[t] = gs[j] * skip + g_dtu * dt[t];
            ddelta[t] = g_delta;
            dbias += g_delta;
          }
        }
        std::copy(dA, dA + N, g.dA + row * N);
        if (g.dD) g.dD[row] = dD;
        if (g.dbias) g.dbias[row] = dbias;
        if (!s.B.var) std::copy(dB_shared.begin(), dB_shared.end(), g.dB + row * N);
        if (!s.C.var) std::copy(dC_shared.begin(), dC_shared.end(), g.dC + row * N);
      }
    }
  });
}

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

template <typename T>
ScanInputs<T> make_inputs(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                          const at::Tensor& B, const at::Tensor& C,
                          const c10::optional<at::Tensor>& D, const c10::optional<at::Tensor>& z,
                          const c10::optional<at::Tensor>& bias, bool softplus) {
  ScanInputs<T> s;
  s.u = u.data_ptr<T>();
  s.delta = delta.data_ptr<T>();
  s.A = A.data_ptr<T>();
  s.B = {B.data_ptr<T>(), B.dim() == 4, B.dim() == 4 ? B.size(1) : 1};
  s.C = {C.data_ptr<T>(), C.dim() == 4, C.dim() == 4 ? C.size(1) : 1};
  s.D = D ? D->data_ptr<T>() : nullptr;
  s.z = z ? z->data_ptr<T>() : nullptr;
  s.bias = bias ? bias->data_ptr<T>() : nullptr;
  s.batch = u.size(0);
  s.dim = u.size(1);
  s.len = u.size(2);
  s.nstate = A.size(1);
  s.softplus = softplus;
  return s;
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

// Returns (out, checkpoints).
std::vector<at::Tensor> forward(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                const at::Tensor& B, const at::Tensor& C,
                                const c10::optional<at::Tensor>& D,
                                const c10::optional<at::Tensor>& z,
                                const c10::optional<at::Tensor>& bias, bool softplus) {
  check_inputs(u, delta, A, B, C, D, z, bias);
  auto out = at::empty_like(u);
  auto checkpoints = at::empty({u.size(0), u.size(1), num_chunks(u.size(2)), A.size(1)},
                               u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_forward", [&] {
    const auto s = make_inputs<scalar_t>(u, delta, A, B, C, D, z, bias, softplus);
    if (s.nstate == 16)
      scan_forward<scalar_t, 16>(s, out.data_ptr<scalar_t>(), checkpoints.data_ptr<scalar_t>());
    else
      scan_forward<scalar_t, 0>(s, out.data_ptr<scalar_t>(), checkpoints.data_ptr<scalar_t>());
  });
  return {out, checkpoints};
}

// Returns gradients of (u, delta, A, B, C, D, z, delta_bias); undefined (None) where the
// input was not given. dB and dC have the layout of B and C as passed to forward.
std::vector<at::Tensor> backward(const at::Tensor& dout, const at::Tensor& u,
                                 const at::Tensor& delta, const at::Tensor& A,
                                 const at::Tensor& B, const at::Tensor& C,
                                 const c10::optional<at::Tensor>& D,
                                 const c10::optional<at::Tensor>& z,
                                 const c10::optional<at::Tensor>& bias, bool softplus,
                                 const at::Tensor& checkpoints) {
  check_inputs(u, delta, A, B, C, D, z, bias);
  check_row_tensor(dout, u, "the output gradient");
  const int64_t batch = u.size(0), dim = u.size(1), len = u.size(2), nstate = A.size(1);
  TORCH_CHECK(checkpoints.is_contiguous() &&
                  checkpoints.sizes() == at::IntArrayRef({batch, dim, num_chunks(len), nstate}),
              "checkpoints do not match the inputs");
  const BlockPlan plan = plan_blocks(batch, dim);
  auto opts = u.options();
  auto du = at::empty_like(u), ddelta = at::empty_like(u);
  auto dz = z ? at::empty_like(u) : at::Tensor();
  auto dA = at::empty({batch, dim, nstate}, opts);
  auto dD = D ? at::empty({batch, dim}, opts) : at::Tensor();
  auto dbias = bias ? at::empty({batch, dim}, opts) : at::Tensor();
  auto partial = [&](const at::Tensor& M) {
    return M.dim() == 4 ? at::zeros({batch, plan.blocks, M.size(1), len, nstate}, opts)
                        : at::empty({batch, dim, nstate}, opts);
  };
  auto dB = partial(B), dC = partial(C);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_backward", [&] {
    const auto s = make_inputs<scalar_t>(u, delta, A, B, C, D, z, bias, softplus);
    auto ptr = [](at::Tensor& t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };
    const ScanGrads<scalar_t> g{ptr(du), ptr(ddelta), ptr(dz), ptr(dA),
                                ptr(dD), ptr(dbias), ptr(dB),  ptr(dC)};
    const scalar_t* gy = dout.data_ptr<scalar_t>();
    const scalar_t* ck = checkpoints.data_ptr<scalar_t>();
    if (s.nstate == 16)
      scan_backward<scalar_t, 16>(s, gy, ck, plan, g);
    else
      scan_backward<scalar_t, 0>(s, gy, ck, plan, g);
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

}  // namespace

std::vector<at::Tensor> scan_forward_entry(const at::Tensor& u, const at::Tensor& delta,
                                           const at::Tensor& A, const at::Tensor& B,
                                           const at::Tensor& C, const c10::optional<at::Tensor>& D,
                                           const c10::optional<at::Tensor>& z,
                                           const c10::optional<at::Tensor>& bias, bool softplus) {
  return forward(u, delta, A, B, C, D, z, bias, softplus);
}

std::vector<at::Tensor> scan_backward_entry(const at::Tensor& dout, const at::Tensor& u,
                                            const at::Tensor& delta, const at::Tensor& A,
                                            const at::Tensor& B, const at::Tensor& C,
                                            const c10::optional<at::Tensor>& D,
                                            const c10::optional<at::Tensor>& z,
                                            const c10::optional<at::Tensor>& bias, bool softplus,
                                            const at::Tensor& checkpoints) {
  return backward(dout, u, delta, A, B, C, D, z, bias, softplus, checkpoints);
}

int64_t scan_chunk() { return kChunk; }

}  // namespace mmshufflemamba_cpu
