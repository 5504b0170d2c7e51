"""Stand-ins of the mamba-ssm and causal-conv1d packages, faithful to their real sources in
what our code touches, computing on CPU tensors with our PyTorch definitions.

Facts used (read from the sdists of mamba-ssm 1.0.1, 1.1.1, 1.2.2, 2.0.0, 2.2.2, 2.2.4 and
2.3.2.post1 and causal-conv1d 1.0.0, 1.1.0, 1.1.3.post1, 1.2.0.post2, 1.4.0, 1.5.2, 1.6.0
and 1.7.0 from PyPI, and from ``csrc/`` at the git tags of state-spaces/mamba and
Dao-AILab/causal-conv1d, since the older sdists ship no C++):

mamba-ssm, ``mamba_ssm/ops/selective_scan_interface.py``:

- ``selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None,
  delta_softplus=False, return_last_state=False)`` and its ``SelectiveScanFn`` are the same
  in every release read (1.0.1 to 2.3.2.post1): last dims made contiguous, ``(b, N, L)``
  B/C viewed as ``(b, 1, N, L)``, then the binding ``selective_scan_cuda.fwd(u, delta, A,
  B, C, D, z, delta_bias, delta_softplus) -> [out, x, out_z if z]`` (``x``: ``(b, D,
  ceil(L / 2048), 2 N)``, last state ``x[:, :, -1, 1::2]``; the output is ``out_z`` when
  z is given) and ``selective_scan_cuda.bwd(u, delta, A, B, C, D, z, delta_bias, dout, x,
  out, dz, delta_softplus, recompute_out_z) -> [du, ddelta, dA, dB, dC, dD, ddelta_bias,
  dz if z, out_z if recompute_out_z]``; the C++ signatures (``csrc/selective_scan/
  selective_scan.cpp``) are unchanged from v1.0.1 to v2.3.0.
- What changes is the import of causal-conv1d at the top of that module: 1.0.1 and 1.1.1
  ``from causal_conv1d import causal_conv1d_fn; import causal_conv1d_cuda``
  unconditionally (so they do not import without causal-conv1d); 1.2.2 to 2.2.4 the same
  in ``try``, setting both to None on ImportError; from 2.2.5 ``from
  causal_conv1d.cpp_functions import causal_conv1d_fwd_function, ...`` in ``try`` (None
  on ImportError). Only ``mamba_inner_fn`` (which mmshufflemamba does not call) uses them:
  ``causal_conv1d_cuda.causal_conv1d_fwd`` with 4 arguments in 1.0.1, 5 in 1.1.1, 7 from
  1.2.2 to 2.2.4 (its ``'NoneType' object has no attribute 'causal_conv1d_fwd'`` when
  causal-conv1d did not import); ``causal_conv1d_fwd_function`` with 7 from 2.2.5.
- ``mamba_ssm/__init__.py`` imports that module first (then the modules; left out here).

causal-conv1d: ``causal_conv1d_fn`` (``causal_conv1d/causal_conv1d_interface.py``) and the
binding ``causal_conv1d_cuda.causal_conv1d_fwd`` / ``causal_conv1d_bwd``
(``csrc/causal_conv1d.cpp``), in :data:`FN_PARAMS`, :data:`FWD_PARAMS` and
:data:`BWD_PARAMS`. 1.0.x: ``fn(x, weight, bias=None, activation=None)``; 1.1.x:
``seq_idx`` before ``activation``; from 1.2.0: ``seq_idx, initial_states,
return_final_states, final_states_out`` before it. The binding took 4 / 5 / 7 forward
arguments and returned ``out`` up to 1.5.0.post8; from 1.5.1 it takes 8 (``out`` passed
in) and returns nothing, called through ``causal_conv1d/cpp_functions.py``.

The stand-ins are importable modules, made by a meta-path finder in the order the real
ones import (so an unconditional import of a missing module fails as it would), with the
distributions' metadata, and bindings that check their arguments as pybind11 does
(``causal_conv1d_fwd(): incompatible function arguments``). Unlike the real kernels they
take CPU tensors (the real ones ``TORCH_CHECK(x.is_cuda())``).
"""
import importlib.abc
import importlib.util
import sys
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F

from mmshufflemamba.ops import selective_scan_reference

# causal-conv1d release family -> parameters, read from the sources above
FN_PARAMS = {
    '1.0': ('x', 'weight', 'bias', 'activation'),
    '1.1': ('x', 'weight', 'bias', 'seq_idx', 'activation'),
    '1.2': ('x', 'weight', 'bias', 'seq_idx', 'initial_states', 'return_final_states',
            'final_states_out', 'activation'),  # 1.2.0 to 1.5.0.post8
}
FN_PARAMS['1.5.1'] = FN_PARAMS['1.2']  # and from 1.5.1 (to 1.7.0) the same
FWD_PARAMS = {  # causal_conv1d_fwd; returns out, except from 1.5.1 (out is written)
    '1.0': ('x', 'weight', 'bias', 'silu_activation'),
    '1.1': ('x', 'weight', 'bias', 'seq_idx', 'silu_activation'),
    '1.2': ('x', 'weight', 'bias', 'seq_idx', 'initial_states', 'final_states_out',
            'silu_activation'),  # 1.2.0 to 1.5.0.post8
    '1.5.1': ('x', 'weight', 'bias', 'seq_idx', 'initial_states', 'out', 'final_states_out',
              'silu_activation'),
}
BWD_PARAMS = {  # causal_conv1d_bwd; returns [dx, dweight, dbias(, dinitial_states)] or writes
    '1.0': ('x', 'weight', 'bias', 'dout', 'dx', 'silu_activation'),
    '1.1': ('x', 'weight', 'bias', 'dout', 'seq_idx', 'dx', 'silu_activation'),
    '1.2': ('x', 'weight', 'bias', 'dout', 'seq_idx', 'initial_states', 'dfinal_states', 'dx',
            'return_dinitial_states', 'silu_activation'),
    '1.5.1': ('x', 'weight', 'bias', 'dout', 'seq_idx', 'initial_states', 'dfinal_states',
              'dx', 'dweight', 'dbias', 'dinitial_states', 'silu_activation'),
}
SCAN_FWD_PARAMS = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias', 'delta_softplus')
SCAN_BWD_PARAMS = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias', 'dout', 'x', 'out',
                   'dz', 'delta_softplus', 'recompute_out_z')
_FLAGS = ('silu_activation', 'return_dinitial_states', 'delta_softplus', 'recompute_out_z')
# tensors a binding requires (dx is optional up to 1.5.0.post8; required, and passed, after)
_REQUIRED = ('x', 'weight', 'dout', 'out', 'dweight', 'u', 'delta', 'A', 'B', 'C')


def release(version: str):
    return tuple(int(p) for p in version.split('.post')[0].split('.'))


def conv_family(version: str) -> str:
    """The :data:`FWD_PARAMS` key of a causal-conv1d version."""
    r = release(version)
    return '1.5.1' if r >= (1, 5, 1) else '1.2' if r >= (1, 2) else '1.1' if r >= (1, 1) else '1.0'


def binding(name: str, params: Sequence[str], body: Callable[..., object]) -> Callable:
    """A function that takes exactly ``params`` positionally and checks each as pybind11
    checks a C++ signature (bool for flags, a tensor where required, tensor or None
    elsewhere), else raises its ``TypeError``; then ``body(**named)``."""
    def call(*args):
        ok = len(args) == len(params) and all(
            isinstance(a, bool) if p in _FLAGS else isinstance(a, torch.Tensor)
            if p in _REQUIRED else (a is None or isinstance(a, torch.Tensor))
            for p, a in zip(params, args))
        if not ok:
            raise TypeError(f'{name}(): incompatible function arguments. The following '
                            f'argument types are supported:\n    1. ({", ".join(params)})\n\n'
                            f'Invoked with: {len(args)} arguments')
        return body(**dict(zip(params, args)))
    call.__name__ = name
    return call


def _conv_ref(x, weight, bias, silu):
    out = F.conv1d(x, weight.unsqueeze(1), bias, padding=weight.shape[-1] - 1,
                   groups=x.shape[1])[..., :x.shape[-1]]
    return F.silu(out) if silu else out


def conv_cuda_module(module, family: str, wrong: bool = False):
    """``causal_conv1d_cuda`` of a release family (``wrong``: it ignores the activation)."""
    def fwd(x, weight, bias, silu_activation, out=None, **unused):
        y = _conv_ref(x, weight, bias, silu_activation and not wrong)
        if out is None:
            return y
        out.copy_(y)

    def bwd(x, weight, bias, dout, silu_activation, dx=None, dweight=None, dbias=None,
            **unused):
        leaves = [t.detach().requires_grad_() for t in (x, weight, bias)]  # bias given here
        with torch.enable_grad():
            grads = torch.autograd.grad(_conv_ref(*leaves, silu_activation), leaves, dout)
        if dweight is None:
            return list(grads) + ([None] if family == '1.2' else [])
        for buffer, grad in zip((dx, dweight, dbias), grads):
            buffer.copy_(grad)

    module.causal_conv1d_fwd = binding('causal_conv1d_fwd', FWD_PARAMS[family], fwd)
    module.causal_conv1d_bwd = binding('causal_conv1d_bwd', BWD_PARAMS[family], bwd)


def conv_interface_module(module, family: str, cuda):
    """``causal_conv1d.causal_conv1d_interface`` of a release family calling ``cuda`` (the
    binding module it imported, or None) with that family's own argument lists."""
    def call_fwd(x, weight, bias, silu):
        named = dict(x=x, weight=weight, bias=bias, seq_idx=None, initial_states=None,
                     final_states_out=None, silu_activation=silu, out=torch.empty_like(x))
        result = cuda.causal_conv1d_fwd(*(named[p] for p in FWD_PARAMS[family]))
        return named['out'] if family == '1.5.1' else result

    def call_bwd(x, weight, bias, dout, silu):
        named = dict(x=x, weight=weight, bias=bias, dout=dout, seq_idx=None,
                     initial_states=None, dfinal_states=None, dx=torch.empty_like(x),
                     return_dinitial_states=False, silu_activation=silu,
                     dweight=torch.zeros_like(weight), dinitial_states=None,
                     dbias=None if bias is None else torch.zeros_like(bias))
        if family != '1.5.1':
            named['dx'] = None  # "we just pass in None and dx will be allocated in the C++ code"
        result = cuda.causal_conv1d_bwd(*(named[p] for p in BWD_PARAMS[family]))
        return result[:3] if family != '1.5.1' else (named['dx'], named['dweight'],
                                                      named['dbias'])

    class CausalConv1dFn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias, activation):
            if activation not in (None, 'silu', 'swish'):
                raise NotImplementedError('activation must be None, silu, or swish')
            if x.stride(2) != 1 and x.stride(1) != 1:
                x = x.contiguous()
            ctx.save_for_backward(x, weight, bias)
            ctx.silu = activation in ('silu', 'swish')
            return call_fwd(x, weight, bias, ctx.silu)

        @staticmethod
        def backward(ctx, dout):
            dx, dweight, dbias = call_bwd(*ctx.saved_tensors, dout.contiguous(), ctx.silu)
            return dx, dweight, dbias, None

    def causal_conv1d_fn(*args, **kwargs):
        named = dict(zip(FN_PARAMS[family], args), **kwargs)
        unknown = set(named) - set(FN_PARAMS[family])
        if unknown or len(args) > len(FN_PARAMS[family]):
            raise TypeError(f'causal_conv1d_fn() got unexpected arguments {sorted(unknown)}')
        seq_idx = named.get('seq_idx')
        if seq_idx is not None:
            seq_idx = seq_idx.contiguous()  # 'str' object has no attribute 'contiguous'
        return CausalConv1dFn.apply(named['x'], named['weight'], named.get('bias'),
                                    named.get('activation'))

    module.causal_conv1d_fn = causal_conv1d_fn


def scan_cuda_module(module, wrong: bool = False):
    """``selective_scan_cuda`` (``wrong``: it ignores ``delta_softplus``)."""
    def forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        out, last = selective_scan_reference(u, delta, A, B, C, D, None, delta_bias,
                                             delta_softplus and not wrong, True)
        x = last.new_zeros(*u.shape[:2], -(-u.shape[-1] // 2048), 2 * A.shape[1])
        x[:, :, -1, 1::2] = last
        return [out, x] + ([out * F.silu(z)] if z is not None else [])

    def backward(u, delta, A, B, C, D, z, delta_bias, dout, delta_softplus, **unused):
        inputs = [u, delta, A, B, C, D, z, delta_bias]
        leaves = [None if t is None else t.detach().requires_grad_() for t in inputs]
        with torch.enable_grad():
            y = selective_scan_reference(*leaves, delta_softplus=delta_softplus)
            used = [t for t in leaves if t is not None]
            grads = iter(torch.autograd.grad(y, used, dout))
        grads = [None if t is None else next(grads) for t in leaves]
        du, ddelta, dA, dB, dC, dD, dz, ddelta_bias = grads
        return [du, ddelta, dA, dB, dC, dD, ddelta_bias] + ([dz] if z is not None else [])

    module.fwd = binding('fwd', SCAN_FWD_PARAMS, forward)
    module.bwd = binding('bwd', SCAN_BWD_PARAMS, backward)


def scan_interface_module(module, cuda):
    """``mamba_ssm.ops.selective_scan_interface``'s ``selective_scan_fn`` over ``cuda``."""
    class SelectiveScanFn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                    return_last_state):
            u, delta, B, C = (t if t.stride(-1) == 1 else t.contiguous()
                              for t in (u, delta, B, C))
            z = z if z is None or z.stride(-1) == 1 else z.contiguous()
            D = None if D is None else D.contiguous()
            ctx.squeeze = (B.dim() == 3, C.dim() == 3)
            B, C = (M.unsqueeze(1) if M.dim() == 3 else M for M in (B, C))
            out, x, *rest = cuda.fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
            ctx.delta_softplus, ctx.has_z = delta_softplus, z is not None
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, x, out)
            out = rest[0] if z is not None else out
            return (out, x[:, :, -1, 1::2]) if return_last_state else out

        @staticmethod
        def backward(ctx, dout, *unused):
            u, delta, A, B, C, D, z, delta_bias, x, out = ctx.saved_tensors
            du, ddelta, dA, dB, dC, dD, ddelta_bias, *rest = cuda.bwd(
                u, delta, A, B, C, D, z, delta_bias, dout.contiguous(), x, out, None,
                ctx.delta_softplus, False)
            dB, dC = (g.squeeze(1) if s else g for g, s in zip((dB, dC), ctx.squeeze))
            return (du, ddelta, dA, dB, dC, dD, rest[0] if ctx.has_z else None, ddelta_bias,
                    None, None)

    def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                          delta_softplus=False, return_last_state=False):
        return SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                     return_last_state)

    module.selective_scan_fn = selective_scan_fn


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports the stand-in modules: ``bodies[name](module)`` runs as the module's code."""

    def __init__(self, bodies: Dict[str, Callable]):
        self.bodies = bodies

    def find_spec(self, name, path=None, target=None):
        if name not in self.bodies:
            return None
        package = name in ('mamba_ssm', 'mamba_ssm.ops', 'causal_conv1d')
        return importlib.util.spec_from_loader(name, self, is_package=package)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        self.bodies[module.__name__](module)


NAMES = ('mamba_ssm', 'mamba_ssm.ops', 'mamba_ssm.ops.selective_scan_interface',
         'selective_scan_cuda', 'causal_conv1d', 'causal_conv1d.causal_conv1d_interface',
         'causal_conv1d.cpp_functions', 'causal_conv1d_cuda')


def install(monkeypatch, site: Path, mamba_ssm: Optional[str] = None,
            causal_conv1d: Optional[str] = None, conv_binding: Optional[str] = None,
            scan_fault: Optional[str] = None, conv_fault: Optional[str] = None) -> None:
    """Make the stand-ins importable, with their metadata in ``site``.

    Args:
        mamba_ssm / causal_conv1d: The release to stand in for; None: not installed.
        conv_binding: The causal-conv1d release whose ``causal_conv1d_cuda`` is found (a
            leftover binary of another install); None: the package's own.
        scan_fault / conv_fault: ``'wrong'`` (a binding that computes something else),
            ``'none'`` (the interface's binding module is None) or ``'undefined symbol'``
            (the binding fails to load, as one built against another torch does).
    """
    for name in NAMES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    bodies = {}

    def needs(name, fault):
        if fault == 'none':
            return None
        if fault == 'undefined symbol':
            raise ImportError(f'{name}.cpython-312-x86_64-linux-gnu.so: undefined symbol: '
                              '_ZN3c104cuda9SetDeviceEi')
        return importlib.import_module(name)

    for dist, version in (('mamba_ssm', mamba_ssm), ('causal_conv1d', causal_conv1d)):
        if version is not None:
            info = site / f'{dist}-{version}.dist-info'
            info.mkdir(parents=True, exist_ok=True)
            (info / 'METADATA').write_text(f'Metadata-Version: 2.1\nName: '
                                           f'{dist.replace("_", "-")}\nVersion: {version}\n')
    if causal_conv1d is not None:
        family = conv_family(causal_conv1d)
        binary = conv_family(conv_binding or causal_conv1d)
        bodies['causal_conv1d_cuda'] = lambda m: conv_cuda_module(m, binary,
                                                                  conv_fault == 'wrong')
        bodies['causal_conv1d.causal_conv1d_interface'] = lambda m: conv_interface_module(
            m, family, needs('causal_conv1d_cuda', conv_fault))

        def conv_package(m):
            from causal_conv1d.causal_conv1d_interface import causal_conv1d_fn
            m.causal_conv1d_fn, m.__version__ = causal_conv1d_fn, causal_conv1d

        bodies['causal_conv1d'] = conv_package
        if family == '1.5.1':
            bodies['causal_conv1d.cpp_functions'] = lambda m: None
    if mamba_ssm is not None:
        bodies['selective_scan_cuda'] = lambda m: scan_cuda_module(m, scan_fault == 'wrong')

        def scan_interface(m):
            if release(mamba_ssm) < (1, 2):
                import causal_conv1d  # noqa: F401 (unconditional in 1.0.1 and 1.1.1)
                import causal_conv1d_cuda  # noqa: F401
            scan_interface_module(m, needs('selective_scan_cuda', scan_fault))

        bodies['mamba_ssm.ops.selective_scan_interface'] = scan_interface
        bodies['mamba_ssm.ops'] = lambda m: None
        bodies['mamba_ssm'] = lambda m: importlib.import_module(
            'mamba_ssm.ops.selective_scan_interface')
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(sys, 'meta_path', [_Finder(bodies)] + sys.meta_path)
