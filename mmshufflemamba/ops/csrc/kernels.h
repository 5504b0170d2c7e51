// The compiled CPU kernels' entry points, bound to Python in module.cpp: the one-direction
// selective scan (selective_scan_cpu.cpp) and the fused bidirectional mixer
// (bimamba_cpu.cpp), both scanning with scan_core.h; RMSNorm (rms_norm_cpu.cpp).
#pragma once

#include <torch/extension.h>

#include <vector>

namespace mmshufflemamba_cpu {

std::vector<at::Tensor> selective_scan_forward(const at::Tensor& u, const at::Tensor& delta,
                                               const at::Tensor& A, const at::Tensor& B,
                                               const at::Tensor& C,
                                               const c10::optional<at::Tensor>& D,
                                               const c10::optional<at::Tensor>& z,
                                               const c10::optional<at::Tensor>& bias,
                                               bool softplus);
std::vector<at::Tensor> selective_scan_backward(const at::Tensor& dout, const at::Tensor& u,
                                                const at::Tensor& delta, const at::Tensor& A,
                                                const at::Tensor& B, const at::Tensor& C,
                                                const c10::optional<at::Tensor>& D,
                                                const c10::optional<at::Tensor>& z,
                                                const c10::optional<at::Tensor>& bias,
                                                bool softplus, const at::Tensor& checkpoints);

// The largest dt_rank the fused mixer's kernels take (their per-chunk step-size inputs are a
// stack tile); Vim's ceil(d_model / 16) is 12-64. Exported as the module's max_dt_rank.
constexpr int64_t kMaxDtRank = 256;

std::vector<at::Tensor> bimamba_conv_forward(const at::Tensor& xz, const at::Tensor& w_f,
                                             const at::Tensor& b_f, const at::Tensor& w_b,
                                             const at::Tensor& b_b);
std::vector<at::Tensor> bimamba_conv_backward(const at::Tensor& xz, const at::Tensor& w_f,
                                              const at::Tensor& b_f, const at::Tensor& w_b,
                                              const at::Tensor& b_b, const at::Tensor& du_f,
                                              const at::Tensor& du_b, at::Tensor& dxz);
std::vector<at::Tensor> bimamba_scan_forward(
    const at::Tensor& xz, const at::Tensor& u_f, const at::Tensor& u_b, const at::Tensor& dt_w_f,
    const at::Tensor& dt_w_b, const at::Tensor& x_dbl_f, const at::Tensor& x_dbl_b,
    const at::Tensor& A_f, const at::Tensor& A_b, const at::Tensor& D_f, const at::Tensor& D_b,
    const at::Tensor& bias_f, const at::Tensor& bias_b);
std::vector<at::Tensor> bimamba_scan_backward(
    const at::Tensor& dy, const at::Tensor& xz, const at::Tensor& u_f, const at::Tensor& u_b,
    const at::Tensor& dt_w_f, const at::Tensor& dt_w_b, const at::Tensor& x_dbl_f,
    const at::Tensor& x_dbl_b, const at::Tensor& A_f, const at::Tensor& A_b,
    const at::Tensor& D_f, const at::Tensor& D_b, const at::Tensor& bias_f,
    const at::Tensor& bias_b, const at::Tensor& ckpt_f, const at::Tensor& ckpt_b, at::Tensor& dxz,
    const c10::optional<at::Tensor>& y);

// x, dy: (rows, C) contiguous; w: (C,); rstd: (rows,). forward: (y, rstd); backward: (dx, dw).
std::vector<at::Tensor> rms_norm_forward(const at::Tensor& x, const at::Tensor& w, double eps);
std::vector<at::Tensor> rms_norm_backward(const at::Tensor& dy, const at::Tensor& x,
                                          const at::Tensor& w, const at::Tensor& rstd);

}  // namespace mmshufflemamba_cpu
