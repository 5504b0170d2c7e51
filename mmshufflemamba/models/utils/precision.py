"""The one precision rule of the model: parts marked fp32 compute in float32 *or wider*."""
from torch import Tensor

__all__ = ['at_least_float32']


def at_least_float32(x: Tensor) -> Tensor:
    """``x`` in float32 if it is a half type (bf16/fp16), otherwise unchanged (fp32, fp64).

    Upstream writes ``.float()`` for the residual stream, the norms, ``A``, ``D`` and the
    step bias; that also *lowers* float64, which the parity tests run in, so every such
    cast goes through here instead.
    """
    return x.float() if x.is_floating_point() and x.element_size() < 4 else x
