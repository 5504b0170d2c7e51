// Python bindings of the compiled CPU kernels (see kernels.h).
#include <torch/extension.h>

#include "kernels.h"
#include "scan_core.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace mmshufflemamba_cpu;
  m.doc() = "mmshufflemamba's compiled CPU kernels";
  m.def("forward", &selective_scan_forward, "selective scan forward: (out, checkpoints)");
  m.def("backward", &selective_scan_backward,
        "selective scan backward: grads of (u, delta, A, B, C, D, z, bias)");
  m.def("bimamba_conv_forward", &bimamba_conv_forward,
        "both directions' causal conv + SiLU: (u_f, u_b)");
  m.def("bimamba_conv_backward", &bimamba_conv_backward,
        "conv backward: dx into dxz[..., :D]; (dw_f, db_f, dw_b, db_b)");
  m.def("bimamba_scan_forward", &bimamba_scan_forward,
        "both directions' scans, D, z gate, combine: (y, ckpt_f, ckpt_b)");
  m.def("bimamba_scan_backward", &bimamba_scan_backward,
        "scan backward: dz into dxz[..., D:], y rebuilt into y if given; (du, ddelta, dBC, dA, "
        "dD, dbias) per direction");
  m.def("rms_norm_forward", &rms_norm_forward, "RMSNorm of (rows, C): (y, rstd)");
  m.def("rms_norm_backward", &rms_norm_backward, "RMSNorm backward: (dx, dw)");
  m.attr("chunk") = kChunk;  // steps per checkpoint, both entries
  m.attr("max_dt_rank") = kMaxDtRank;  // the fused mixer's
}
