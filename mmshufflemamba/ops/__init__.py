from .causal_conv1d import causal_conv1d
from .selective_scan import (selective_scan, selective_scan_cpu, selective_scan_flops,
                             selective_scan_reference, selective_scan_torch)

__all__ = [
    'selective_scan', 'selective_scan_cpu', 'selective_scan_torch', 'selective_scan_reference',
    'selective_scan_flops', 'causal_conv1d'
]
