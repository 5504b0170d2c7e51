"""Triton kernels of the chunked selective scan; launched by :mod:`.triton_scan`.

Kept apart from the launcher because ``triton.jit`` decides when it decorates whether a
kernel is compiled or run by Triton's interpreter (``TRITON_INTERPRET=1``): the launcher
imports this module on first use and reloads it when the mode has changed since
(:data:`INTERPRETED` records the mode it was decorated in). Importing it needs Triton.

Notation: ``b`` batch, ``D`` channels, ``L`` steps, ``N`` states, ``K = cdiv(L, CHUNK)``
chunks. Every chunk kernel runs on the grid ``(cdiv(D, BLOCK_D), K, b)``: one program per
(block of channels, chunk, batch), on a ``(BLOCK_D, CHUNK, BLOCK_N)`` tile (channel, step,
state). The carry kernel runs on ``(cdiv(D, BLOCK_D), b)`` and walks the ``K`` chunks.

Layouts (all contiguous): ``u``, ``delta``, ``z``, ``y`` and their gradients ``(b, D, L)``;
``A`` ``(D, N)``; ``D`` and ``delta_bias`` ``(D,)``; B and C either shared ``(D, N)`` or
variable ``(b, G, N, L)`` (``G = 1`` for ``(b, N, L)``). A program's channels lie in one
group (the launcher picks ``BLOCK_D`` to divide the channels per group). Per-chunk tensors:
``(b, D, K, N)`` for states and adjoints (end states, checkpoints, adjoint contributions,
entering adjoints), ``(b, D, K)`` for the summed step sizes.

Inputs are read in their own dtype and computed in ``COMPUTE`` (float32, or float64);
results are stored in the dtype of the pointer they are stored to.

The kernels call Triton builtins and this module's functions only, not Triton's standard
library (``tl.sum``, ``tl.cumsum``, ``tl.sigmoid``, ``tl.zeros``): those are ``triton.jit``
functions decorated when Triton is first imported, in the mode of that moment, which
may not be the mode of these kernels (a test suite imports Triton before it turns the
interpreter on).
"""
import torch
import triton
import triton.language as tl

INTERPRETED: bool = bool(triton.knobs.runtime.interpret)

COMPUTE_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}

SOFTPLUS_THRESHOLD: tl.constexpr = tl.constexpr(20.0)  # as torch.nn.functional.softplus


@triton.jit
def _add(x, y):
    return x + y


@triton.jit
def _sum(x, AXIS: tl.constexpr):
    """``tl.sum`` without the standard library."""
    return tl.reduce(x, AXIS, _add)


@triton.jit
def _cumsum(x, AXIS: tl.constexpr, REVERSE: tl.constexpr):
    """``tl.cumsum`` without the standard library."""
    return tl.associative_scan(x, AXIS, _add, reverse=REVERSE)


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _combine(a_first, x_first, a_then, x_then):
    """Two steps ``h -> a h + x`` as one: ``first``, then ``then``.

    Associative; forward scans give ``h_t`` from ``(a_t, x_t)``, and reverse scans (which
    combine the later aggregate first) give the adjoint ``g_t = x_t + a_t g_{t+1}``.
    """
    return a_first * a_then, a_then * x_first + x_then


@triton.jit
def _step_sizes(delta_ptrs, bias_ptrs, mask, bias_mask, HAS_BIAS: tl.constexpr,
                SOFTPLUS: tl.constexpr, COMPUTE: tl.constexpr):
    """``dt = softplus(delta + bias)`` on a ``(BLOCK_D, CHUNK)`` tile, and ``d dt / d delta``.

    Both are 0 where ``mask`` is off, so that padding steps decay by ``exp(0) = 1`` and
    add nothing. Softplus as torch's: linear above the threshold, else ``log1p(exp(x))``
    (log1p by Goldberg's ``log(w) * e / (w - 1)``, exact where ``w`` rounds to 1).
    """
    x = tl.load(delta_ptrs, mask=mask, other=0.0).to(COMPUTE)
    if HAS_BIAS:
        x += tl.load(bias_ptrs, mask=bias_mask, other=0.0).to(COMPUTE)[:, None]
    if SOFTPLUS:
        e = tl.exp(tl.minimum(x, SOFTPLUS_THRESHOLD))
        w = 1.0 + e
        tiny = w == 1.0  # then log1p(e) = e to working precision (and w - 1 = 0)
        log1p_e = tl.where(tiny, e, tl.log(w) * e / tl.where(tiny, 1.0, w - 1.0))
        dt = tl.where(x > SOFTPLUS_THRESHOLD, x, log1p_e)
        slope = tl.where(x > SOFTPLUS_THRESHOLD, 1.0, e / w)
    else:
        dt = x
        slope = tl.where(mask, 1.0, 0.0).to(COMPUTE)
    return tl.where(mask, dt, 0.0), tl.where(mask, slope, 0.0)


@triton.jit
def _load_matrix(ptr, VAR: tl.constexpr, pid_b, group, groups, d, t, n, d_mask, t_mask,
                 n_mask, L, N, COMPUTE: tl.constexpr):
    """B or C as a tile that broadcasts against ``(BLOCK_D, CHUNK, BLOCK_N)``.

    Variable ``(b, G, N, L)``: this program's group at its steps, ``(1, CHUNK, BLOCK_N)``.
    Shared ``(D, N)``: this program's channels, ``(BLOCK_D, 1, BLOCK_N)``. 0 off the masks.
    """
    if VAR:
        offs = ((pid_b * groups + group) * N + n[None, :]) * L + t[:, None]
        tile = tl.load(ptr + offs, mask=t_mask[:, None] & n_mask[None, :], other=0.0)
        tile = tile.to(COMPUTE)[None, :, :]
    else:
        offs = d[:, None] * N + n[None, :]
        tile = tl.load(ptr + offs, mask=d_mask[:, None] & n_mask[None, :], other=0.0)
        tile = tile.to(COMPUTE)[:, None, :]
    return tile


@triton.jit
def _store_matrix_grad(ptr, grad, VAR: tl.constexpr, pid_b, pid_d, pid_c, num_blocks,
                       num_chunks, D, d, t, n, d_mask, t_mask, n_mask, L, N):
    """This program's share of the gradient of B or C, from ``grad`` ``(BLOCK_D, CHUNK,
    BLOCK_N)`` (the gradient per channel of a matrix entry).

    Variable: summed over the program's channels into ``(b, num_blocks, N, L)`` at its
    block and steps. Shared: summed over its steps into ``(b, K, D, N)`` at its chunk and
    channels. The launcher sums the blocks of each group, or the batch and chunks.
    """
    if VAR:
        offs = ((pid_b * num_blocks + pid_d) * N + n[None, :]) * L + t[:, None]
        tl.store(ptr + offs, _sum(grad, 0), mask=t_mask[:, None] & n_mask[None, :])
    else:
        offs = ((pid_b * num_chunks + pid_c) * D + d[:, None]) * N + n[None, :]
        tl.store(ptr + offs, _sum(grad, 1), mask=d_mask[:, None] & n_mask[None, :])


@triton.jit
def chunk_end_states_kernel(delta_ptr, bias_ptr, u_ptr, A_ptr, B_ptr, ends_ptr, sums_ptr, D, L,
                            N, num_chunks, B_groups, B_group_size, B_VAR: tl.constexpr,
                            HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                            CHUNK: tl.constexpr, BLOCK_D: tl.constexpr,
                            BLOCK_N: tl.constexpr, COMPUTE: tl.constexpr):
    """Forward pass 1: each chunk's final state from a zero state, and its summed step size.

    ``ends[b, d, c] = sum_t exp(A * sum_{s > t} dt_s) * dt_t u_t B_t`` over the chunk's
    steps (the chunk's total decay is ``exp(A * sums[b, d, c])``).
    Writes ``ends`` ``(b, D, K, N)`` and ``sums`` ``(b, D, K)``.
    """
    pid_d, pid_c, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    t = pid_c * CHUNK + tl.arange(0, CHUNK)
    n = tl.arange(0, BLOCK_N)
    d_mask, t_mask, n_mask = d < D, t < L, n < N
    row_mask = d_mask[:, None] & t_mask[None, :]
    rows = (pid_b * D + d[:, None]) * L + t[None, :]
    dt, _ = _step_sizes(delta_ptr + rows, bias_ptr + d, row_mask, d_mask, HAS_BIAS, SOFTPLUS,
                        COMPUTE)
    u = tl.load(u_ptr + rows, mask=row_mask, other=0.0).to(COMPUTE)
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=d_mask[:, None] & n_mask[None, :],
                other=0.0).to(COMPUTE)
    B = _load_matrix(B_ptr, B_VAR, pid_b, pid_d * BLOCK_D // B_group_size, B_groups, d, t, n,
                     d_mask, t_mask, n_mask, L, N, COMPUTE)
    after = _cumsum(dt, 1, True) - dt  # (BLOCK_D, CHUNK): sum_{s > t} dt_s
    weights = tl.exp(after[:, :, None] * A[:, None, :])
    end = _sum(weights * (dt * u)[:, :, None] * B, 1)  # (BLOCK_D, BLOCK_N)
    chunk_rows = (pid_b * D + d) * num_chunks + pid_c
    tl.store(ends_ptr + chunk_rows[:, None] * N + n[None, :], end,
             mask=d_mask[:, None] & n_mask[None, :])
    tl.store(sums_ptr + chunk_rows, _sum(dt, 1), mask=d_mask)


@triton.jit
def carry_kernel(sums_ptr, parts_ptr, A_ptr, init_ptr, states_ptr, last_ptr, D, N, num_chunks,
                 HAS_INIT: tl.constexpr, STORE_LAST: tl.constexpr, REVERSE: tl.constexpr,
                 BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, COMPUTE: tl.constexpr):
    """Pass 2, forward and backward: carry a state across the chunks, one chunk per step.

    ``state <- exp(A * sums[c]) * state + parts[c]`` over ``c = 0 .. K-1`` (``REVERSE``:
    ``K-1 .. 0``), storing the state met on entering each chunk into ``states[b, d, c]``.
    Forward: ``parts`` are the chunk end states, ``states`` the chunk start states (the
    checkpoints), the state after the loop the last state. Backward: ``parts`` are the
    chunks' adjoint contributions, ``states`` the adjoint entering each chunk from its
    right, ``init`` the gradient of the last state.
    ``sums`` ``(b, D, K)``; ``parts``, ``states`` ``(b, D, K, N)``; ``init``, ``last``
    ``(b, D, N)``.
    """
    pid_d, pid_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    d_mask, n_mask = d < D, n < N
    mask = d_mask[:, None] & n_mask[None, :]
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=mask, other=0.0).to(COMPUTE)
    if HAS_INIT:
        state = tl.load(init_ptr + (pid_b * D + d[:, None]) * N + n[None, :], mask=mask,
                        other=0.0).to(COMPUTE)
    else:
        state = tl.full((BLOCK_D, BLOCK_N), 0.0, COMPUTE)
    for i in range(num_chunks):
        if REVERSE:
            c = num_chunks - 1 - i
        else:
            c = i
        chunk_rows = (pid_b * D + d) * num_chunks + c
        offs = chunk_rows[:, None] * N + n[None, :]
        tl.store(states_ptr + offs, state, mask=mask)
        total = tl.load(sums_ptr + chunk_rows, mask=d_mask, other=0.0)
        part = tl.load(parts_ptr + offs, mask=mask, other=0.0)
        state = tl.exp(A * total[:, None]) * state + part
    if STORE_LAST:
        tl.store(last_ptr + (pid_b * D + d[:, None]) * N + n[None, :], state, mask=mask)


@triton.jit
def chunk_scan_forward_kernel(delta_ptr, bias_ptr, u_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr,
                              starts_ptr, y_ptr, D, L, N, num_chunks, B_groups, B_group_size,
                              C_groups, C_group_size, B_VAR: tl.constexpr,
                              C_VAR: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                              HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                              CHUNK: tl.constexpr, BLOCK_D: tl.constexpr,
                              BLOCK_N: tl.constexpr, COMPUTE: tl.constexpr):
    """Forward pass 3: each chunk's states from its start state, and its outputs.

    The states ``h_t = a_t h_{t-1} + x_t`` (``a_t = exp(dt_t A)``, ``x_t = dt_t u_t B_t``)
    come from one parallel scan along the chunk, with ``a h_start`` added to the first
    step's ``x``; then ``y = (sum_n C h + D u) * silu(z)``. ``starts`` ``(b, D, K, N)``;
    writes ``y`` ``(b, D, L)``.
    """
    pid_d, pid_c, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    steps = tl.arange(0, CHUNK)
    t = pid_c * CHUNK + steps
    n = tl.arange(0, BLOCK_N)
    d_mask, t_mask, n_mask = d < D, t < L, n < N
    row_mask = d_mask[:, None] & t_mask[None, :]
    state_mask = d_mask[:, None] & n_mask[None, :]
    rows = (pid_b * D + d[:, None]) * L + t[None, :]
    dt, _ = _step_sizes(delta_ptr + rows, bias_ptr + d, row_mask, d_mask, HAS_BIAS, SOFTPLUS,
                        COMPUTE)
    u = tl.load(u_ptr + rows, mask=row_mask, other=0.0).to(COMPUTE)
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=state_mask, other=0.0).to(COMPUTE)
    B = _load_matrix(B_ptr, B_VAR, pid_b, pid_d * BLOCK_D // B_group_size, B_groups, d, t, n,
                     d_mask, t_mask, n_mask, L, N, COMPUTE)
    C = _load_matrix(C_ptr, C_VAR, pid_b, pid_d * BLOCK_D // C_group_size, C_groups, d, t, n,
                     d_mask, t_mask, n_mask, L, N, COMPUTE)
    start = tl.load(starts_ptr + ((pid_b * D + d[:, None]) * num_chunks + pid_c) * N +
                    n[None, :], mask=state_mask, other=0.0).to(COMPUTE)
    a = tl.exp(dt[:, :, None] * A[:, None, :])  # (BLOCK_D, CHUNK, BLOCK_N)
    x = (dt * u)[:, :, None] * B
    x += tl.where(steps[None, :, None] == 0, a * start[:, None, :], 0.0)
    _, h = tl.associative_scan((a, x), axis=1, combine_fn=_combine)
    y = _sum(h * C, 2)  # (BLOCK_D, CHUNK)
    if HAS_D:
        y += tl.load(D_ptr + d, mask=d_mask, other=0.0).to(COMPUTE)[:, None] * u
    if HAS_Z:
        z = tl.load(z_ptr + rows, mask=row_mask, other=0.0).to(COMPUTE)
        y *= z * _sigmoid(z)
    tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=row_mask)


@triton.jit
def chunk_adjoint_parts_kernel(delta_ptr, bias_ptr, z_ptr, grad_y_ptr, A_ptr, C_ptr, parts_ptr,
                               D, L, N, num_chunks, C_groups, C_group_size,
                               C_VAR: tl.constexpr, HAS_Z: tl.constexpr,
                               HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                               CHUNK: tl.constexpr, BLOCK_D: tl.constexpr,
                               BLOCK_N: tl.constexpr, COMPUTE: tl.constexpr):
    """Backward pass 1: what each chunk's outputs send to the adjoint before the chunk.

    With ``dy = grad_y * silu(z)`` (the gradient of ``sum_n C h``), the adjoint
    ``g_t = C_t dy_t + a_{t+1} g_{t+1}`` restricted to the chunk's own outputs gives
    ``parts[b, d, c] = a_{t0} g_{t0} = sum_t exp(A * sum_{t0 <= s <= t} dt_s) C_t dy_t``.
    Writes ``parts`` ``(b, D, K, N)``.
    """
    pid_d, pid_c, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    t = pid_c * CHUNK + tl.arange(0, CHUNK)
    n = tl.arange(0, BLOCK_N)
    d_mask, t_mask, n_mask = d < D, t < L, n < N
    row_mask = d_mask[:, None] & t_mask[None, :]
    state_mask = d_mask[:, None] & n_mask[None, :]
    rows = (pid_b * D + d[:, None]) * L + t[None, :]
    dt, _ = _step_sizes(delta_ptr + rows, bias_ptr + d, row_mask, d_mask, HAS_BIAS, SOFTPLUS,
                        COMPUTE)
    dy = tl.load(grad_y_ptr + rows, mask=row_mask, other=0.0).to(COMPUTE)
    if HAS_Z:
        z = tl.load(z_ptr + rows, mask=row_mask, other=0.0).to(COMPUTE)
        dy *= z * _sigmoid(z)
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=state_mask, other=0.0).to(COMPUTE)
    C = _load_matrix(C_ptr, C_VAR, pid_b, pid_d * BLOCK_D // C_group_size, C_groups, d, t, n,
                     d_mask, t_mask, n_mask, L, N, COMPUTE)
    through = _cumsum(dt, 1, False)  # (BLOCK_D, CHUNK): sum_{t0 <= s <= t} dt_s
    weights = tl.exp(through[:, :, None] * A[:, None, :])
    part = _sum(weights * C * dy[:, :, None], 1)  # (BLOCK_D, BLOCK_N)
    tl.store(parts_ptr + ((pid_b * D + d[:, None]) * num_chunks + pid_c) * N + n[None, :],
             part, mask=state_mask)


@triton.jit
def chunk_scan_backward_kernel(
        delta_ptr, bias_ptr, u_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, grad_y_ptr, starts_ptr,
        adjoints_ptr, grad_u_ptr, grad_delta_ptr, grad_z_ptr, grad_A_ptr, grad_B_ptr,
        grad_C_ptr, grad_D_ptr, grad_bias_ptr, D, L, N, num_chunks, num_blocks, B_groups,
        B_group_size, C_groups, C_group_size, B_VAR: tl.constexpr, C_VAR: tl.constexpr,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
        SOFTPLUS: tl.constexpr, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_N: tl.constexpr, COMPUTE: tl.constexpr):
    """Backward pass 3: each chunk's states and adjoints, then every gradient.

    Recomputes the states ``h`` from the chunk's checkpoint (``starts``) as the forward
    pass does; runs the adjoint ``g_t = C_t dy_t + a_{t+1} g_{t+1}`` as one reverse scan,
    with the adjoint entering from the right (``adjoints[b, d, c] = a_{t1} g_{t1}``) added
    at the last step. Then, per step: ``d x_t = g_t`` (``x_t = dt_t u_t B_t``) and
    ``d log a_t = g_t a_t h_{t-1} = g_t (h_t - x_t)`` (``log a_t = dt_t A``).

    Writes ``grad_u``, ``grad_delta``, ``grad_z`` ``(b, D, L)`` in their inputs' dtypes,
    and per-program partial sums in ``COMPUTE``: ``grad_A`` ``(b, K, D, N)``, ``grad_D`` and
    ``grad_bias`` ``(b, K, D)``, ``grad_B`` / ``grad_C`` as :func:`_store_matrix_grad`.
    """
    pid_d, pid_c, pid_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    steps = tl.arange(0, CHUNK)
    t = pid_c * CHUNK + steps
    n = tl.arange(0, BLOCK_N)
    d_mask, t_mask, n_mask = d < D, t < L, n < N
    row_mask = d_mask[:, None] & t_mask[None, :]
    state_mask = d_mask[:, None] & n_mask[None, :]
    rows = (pid_b * D + d[:, None]) * L + t[None, :]
    dt, slope = _step_sizes(delta_ptr + rows, bias_ptr + d, row_mask, d_mask, HAS_BIAS,
                            SOFTPLUS, COMPUTE)
    u = tl.load(u_ptr + rows, mask=row_mask, other=0.0).to(COMPUTE)
    A = tl.load(A_ptr + d[:, None] * N + n[None, :], mask=state_mask, other=0.0).to(COMPUTE)
    B = _load_matrix(B_ptr, B_VAR, pid_b, pid_d * BLOCK_D // B_group_size, B_groups, d, t, n,
                     d_mask, t_mask, n_mask, L, N, COMPUTE)
    C = _load_matrix(C_ptr, C_VAR, pid_b, pid_d * BLOCK_D // C_group_size, C_groups, d, t, n,
                     d_mask, t_mask, n_mask, L, N, COMPUTE)
    states = ((pid_b * D + d[:, None]) * num_chunks + pid_c) * N + n[None, :]
    start = tl.load(starts_ptr + states, mask=state_mask, other=0.0).to(COMPUTE)
    a = tl.exp(dt[:, :, None] * A[:, None, :])  # (BLOCK_D, CHUNK, BLOCK_N)
    x = (dt * u)[:, :, None] * B
    _, h = tl.associative_scan(
        (a, x + tl.where(steps[None, :, None] == 0, a * start[:, None, :], 0.0)), axis=1,
        combine_fn=_combine)

    # Output side: dy is the gradient of sum_n C h.
    grad_y = tl.load(grad_y_ptr + rows, mask=row_mask, other=0.0).to(COMPUTE)
    if HAS_D:
        skip = tl.load(D_ptr + d, mask=d_mask, other=0.0).to(COMPUTE)[:, None]
    if HAS_Z:
        z = tl.load(z_ptr + rows, mask=row_mask, other=0.0).to(COMPUTE)
        gate = _sigmoid(z)
        y = _sum(h * C, 2)
        if HAS_D:
            y += skip * u
        grad_z = grad_y * y * gate * (1.0 + z * (1.0 - gate))
        tl.store(grad_z_ptr + rows, grad_z.to(grad_z_ptr.dtype.element_ty), mask=row_mask)
        dy = grad_y * z * gate
    else:
        dy = grad_y
    _store_matrix_grad(grad_C_ptr, dy[:, :, None] * h, C_VAR, pid_b, pid_d, pid_c, num_blocks,
                       num_chunks, D, d, t, n, d_mask, t_mask, n_mask, L, N)

    # Adjoint: a_{t+1} is taken within the chunk only (1 at its last step and past L).
    next_mask = d_mask[:, None] & (t[None, :] + 1 < L) & (steps[None, :] < CHUNK - 1)
    dt_next, _ = _step_sizes(delta_ptr + rows + 1, bias_ptr + d, next_mask, d_mask, HAS_BIAS,
                             SOFTPLUS, COMPUTE)
    a_next = tl.exp(dt_next[:, :, None] * A[:, None, :])
    entering = tl.load(adjoints_ptr + states, mask=state_mask, other=0.0).to(COMPUTE)
    source = C * dy[:, :, None] + tl.where(steps[None, :, None] == CHUNK - 1,
                                           entering[:, None, :], 0.0)
    _, g = tl.associative_scan((a_next, source), axis=1, combine_fn=_combine, reverse=True)

    # Input side.
    _store_matrix_grad(grad_B_ptr, g * (dt * u)[:, :, None], B_VAR, pid_b, pid_d, pid_c,
                       num_blocks, num_chunks, D, d, t, n, d_mask, t_mask, n_mask, L, N)
    grad_dtu = _sum(g * B, 2)  # (BLOCK_D, CHUNK): gradient of dt_t u_t
    grad_log_a = g * (h - x)
    part_rows = (pid_b * num_chunks + pid_c) * D + d
    tl.store(grad_A_ptr + part_rows[:, None] * N + n[None, :],
             _sum(grad_log_a * dt[:, :, None], 1), mask=state_mask)
    grad_u = grad_dtu * dt
    if HAS_D:
        grad_u += dy * skip
        tl.store(grad_D_ptr + part_rows, _sum(dy * u, 1), mask=d_mask)
    tl.store(grad_u_ptr + rows, grad_u.to(grad_u_ptr.dtype.element_ty), mask=row_mask)
    grad_dt = _sum(grad_log_a * A[:, None, :], 2) + grad_dtu * u
    grad_delta = grad_dt * slope  # slope is 0 off row_mask, so padding adds nothing
    tl.store(grad_delta_ptr + rows, grad_delta.to(grad_delta_ptr.dtype.element_ty),
             mask=row_mask)
    if HAS_BIAS:
        tl.store(grad_bias_ptr + part_rows, _sum(grad_delta, 1), mask=d_mask)
