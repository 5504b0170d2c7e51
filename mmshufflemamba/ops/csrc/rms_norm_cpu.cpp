// RMSNorm on CPU, forward and backward, one pass over the rows each (the block's norm and
// the backbone's final norm: rows of C channels, C = 384 for ShuffleMamba-S):
//   rstd = 1 / sqrt(mean_c x[c]^2 + eps),   y[c] = (x[c] rstd) w[c]
//   dx[c] = rstd (g[c] - xh[c] mean_c(g xh)),  dw[c] = sum_rows dy[c] xh[c]
// with xh = x rstd and g = dy w. Composed of torch ops, the norm was six ops forward and
// about as many backward, each a pass over the rows, and its weight gradient a strided
// reduction over them; it kept x rstd for the backward pass besides x. Here the backward
// pass needs only x (the residual stream, kept anyway) and rstd (one value per row).
// Rows run in parallel; the weight gradient is summed per task over its rows in double
// (tens of thousands of rows at a training batch), then over the tasks.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels.h"

namespace mmshufflemamba_cpu {
namespace {

void check_norm(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.device().is_cpu(),
              "x must be a contiguous CPU (rows, channels) tensor");
  TORCH_CHECK(w.dim() == 1 && w.is_contiguous() && w.numel() == x.size(1) &&
                  w.scalar_type() == x.scalar_type(),
              "the weight must be contiguous, with one value per channel (", x.size(1),
              ") and of the input's dtype (", x.scalar_type(), "); got ", w.sizes(), " ",
              w.scalar_type());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "the compiled RMSNorm takes float32 or float64; got ", x.scalar_type());
}

template <typename T>
void forward_rows(const T* __restrict__ xp, const T* __restrict__ wp, T eps, int64_t rows,
                  int64_t C, T* __restrict__ yp, T* __restrict__ rp) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* __restrict__ xr = xp + r * C;
      T* __restrict__ yr = yp + r * C;
      T squares = 0;
#pragma omp simd reduction(+ : squares)
      for (int64_t c = 0; c < C; ++c) squares += xr[c] * xr[c];
      const T s = T(1) / std::sqrt(squares / T(C) + eps);
      rp[r] = s;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) yr[c] = (xr[c] * s) * wp[c];
    }
  });
}

// Rows task * rows / tasks .. (task + 1) * rows / tasks per task; its weight gradient into
// its row of partial (tasks, C), in double.
template <typename T>
void backward_rows(const T* __restrict__ dyp, const T* __restrict__ xp,
                   const T* __restrict__ wp, const T* __restrict__ rp, int64_t rows, int64_t C,
                   int64_t tasks, T* __restrict__ dxp, double* __restrict__ partial) {
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t task = t0; task < t1; ++task) {
      double* __restrict__ dw = partial + task * C;
      for (int64_t r = task * rows / tasks; r < (task + 1) * rows / tasks; ++r) {
        const T* __restrict__ xr = xp + r * C;
        const T* __restrict__ dyr = dyp + r * C;
        T* __restrict__ dxr = dxp + r * C;
        const T s = rp[r];
        T dot = 0;  // sum_c g xh
#pragma omp simd reduction(+ : dot)
        for (int64_t c = 0; c < C; ++c) {
          const T xh = xr[c] * s;
          dot += dyr[c] * wp[c] * xh;
          dw[c] += static_cast<double>(dyr[c] * xh);
        }
        const T mean = dot / T(C);
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) dxr[c] = s * (dyr[c] * wp[c] - xr[c] * s * mean);
      }
    }
  });
}

}  // namespace

std::vector<at::Tensor> rms_norm_forward(const at::Tensor& x, const at::Tensor& w, double eps) {
  check_norm(x, w);
  const int64_t rows = x.size(0), C = x.size(1);
  at::Tensor y = at::empty_like(x);
  at::Tensor rstd = at::empty({rows}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rms_norm_forward", [&] {
    forward_rows<scalar_t>(x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), scalar_t(eps), rows,
                           C, y.data_ptr<scalar_t>(), rstd.data_ptr<scalar_t>());
  });
  return {y, rstd};
}

std::vector<at::Tensor> rms_norm_backward(const at::Tensor& dy, const at::Tensor& x,
                                          const at::Tensor& w, const at::Tensor& rstd) {
  check_norm(x, w);
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.is_contiguous() &&
                  dy.scalar_type() == x.scalar_type(),
              "dy must be contiguous, of x's shape and dtype");
  TORCH_CHECK(rstd.is_contiguous() && rstd.numel() == x.size(0) &&
                  rstd.scalar_type() == x.scalar_type(),
              "rstd must be contiguous, one value per row of x, of x's dtype");
  const int64_t rows = x.size(0), C = x.size(1);
  // tasks: runs of at least 16 rows, each with its own partial weight gradient
  const int64_t tasks =
      std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows / 16));
  at::Tensor dx = at::empty_like(x);
  at::Tensor partial = at::zeros({tasks, C}, x.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rms_norm_backward", [&] {
    backward_rows<scalar_t>(dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                            w.data_ptr<scalar_t>(), rstd.data_ptr<scalar_t>(), rows, C, tasks,
                            dx.data_ptr<scalar_t>(), partial.data_ptr<double>());
  });
  return {dx, partial.sum(0).to(x.scalar_type())};
}

}  // namespace mmshufflemamba_cpu
