from .causal_conv1d import causal_conv1d
from .selective_scan import (BACKEND_ENV, onnx_exportable, refuse_tracing, scan_backend,
                             selective_scan, selective_scan_cpu, selective_scan_exportable,
                             selective_scan_flops, selective_scan_reference,
                             selective_scan_torch, tracing_allowed)
from .triton_scan import selective_scan_triton, triton_available

__all__ = [
    'selective_scan', 'selective_scan_cpu', 'selective_scan_torch', 'selective_scan_triton',
    'selective_scan_reference', 'selective_scan_exportable', 'selective_scan_flops',
    'scan_backend', 'BACKEND_ENV', 'onnx_exportable', 'refuse_tracing', 'tracing_allowed',
    'triton_available', 'causal_conv1d'
]
