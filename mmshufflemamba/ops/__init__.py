from .causal_conv1d import causal_conv1d
from .compiled_scan import selective_scan_cpu
from .mamba_ssm_scan import selective_scan_mamba_ssm
from .reference_scan import selective_scan_exportable, selective_scan_reference
from .scan_contract import selective_scan_flops
from .selective_scan import BACKEND_ENV, BACKENDS, choose_backend, scan_backend, selective_scan
from .stand_in_scan import selective_scan_stand_in
from .torch_scan import selective_scan_torch
from .triton_scan import selective_scan_triton, triton_available

__all__ = [
    'selective_scan', 'selective_scan_cpu', 'selective_scan_torch', 'selective_scan_triton',
    'selective_scan_mamba_ssm', 'selective_scan_reference', 'selective_scan_exportable',
    'selective_scan_stand_in', 'selective_scan_flops', 'choose_backend', 'scan_backend',
    'BACKENDS', 'BACKEND_ENV', 'triton_available', 'causal_conv1d'
]
