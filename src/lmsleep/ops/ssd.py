"""SSD: the Mamba-2 state-space update ``S_t = a_t S_{t-1} + b_t k_t v_t^T``, Eq. 3 in
docs/design.md#fast-weights-and-update-rules.

In mamba-ssm's naming and layout, per head ``h`` (with ``B``/``C`` shared by the ``H / G`` consecutive
heads of a group, as in mamba-ssm)::

    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T        state [P, N]
    y_t = h_t C_t

so Eq. 3's ``a_t = exp(dt_t A)``, ``b_t = dt_t``, ``v_t = x_t``, ``k_t = B_t``, ``q_t = C_t``, and the
state is stored transposed (``[P, N]`` = ``V x K``, mamba-ssm's convention). No ``D`` skip, no ``z`` gate,
no ``dt`` softplus / bias: the layer applies those.
"""

from __future__ import annotations

import torch

from ._common import (
    causal_decay,
    check_chunk_size,
    check_ndim,
    check_shape,
    compute_dtype,
    pad_time,
)
from .backend import load_kernel, resolve_backend

__all__ = ["ssd", "ssd_chunked", "ssd_mamba", "ssd_recurrent"]

_OP = "ssd"


def ssd(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    backend: str = "auto",
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the Mamba-2 (SSD) recurrence over a sequence.

    Args:
        x: ``[B, T, H, P]`` inputs (values).
        dt: ``[B, T, H]`` step sizes, already positive (softplus applied by the caller).
        A: ``[H]`` negative decay rates; ``exp(dt A)`` is the per-step decay. ``A > 0`` computes growth
            as written but may overflow in the chunked backend.
        B, C: ``[B, T, G, N]`` input / output projections (keys / queries), ``H`` divisible by ``G``.
        initial_state: ``[B, H, P, N]`` state before the first token, default zeros.
        output_final_state: also return the ``[B, H, P, N]`` state after the last token (fp32, or fp64
            for fp64 inputs); feeding it back as ``initial_state`` continues the sequence exactly.
        backend: ``"auto"`` (mamba-ssm kernel on CUDA when importable, else ``"chunked"``),
            ``"recurrent"`` (token loop, the reference), ``"chunked"`` (SSD blocks in torch) or
            ``"mamba_ssm"``.
        chunk_size: chunk length of ``chunked`` and ``mamba_ssm`` (any ``T`` is padded internally).

    Returns:
        ``(y, final_state)``: ``y`` is ``[B, T, H, P]`` in ``x``'s dtype; ``final_state`` None unless
        requested. Accumulates in fp32 (fp64 for fp64 inputs); differentiable in every input.
    """
    _validate(x, dt, A, B, C, initial_state)
    check_chunk_size(_OP, chunk_size)
    name = resolve_backend(_OP, backend, x.device)
    if name == "recurrent":
        return ssd_recurrent(x, dt, A, B, C, initial_state, output_final_state)
    if name == "chunked":
        return ssd_chunked(x, dt, A, B, C, initial_state, output_final_state, chunk_size=chunk_size)
    return ssd_mamba(x, dt, A, B, C, initial_state, output_final_state, chunk_size=chunk_size)


def _validate(x, dt, A, B, C, initial_state) -> None:
    check_ndim(_OP, "x", x, "[B, T, H, P]")
    check_ndim(_OP, "dt", dt, "[B, T, H]")
    check_ndim(_OP, "A", A, "[H]")
    check_ndim(_OP, "B", B, "[B, T, G, N]")
    check_ndim(_OP, "C", C, "[B, T, G, N]")
    b, T, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    if T < 1:
        raise ValueError(f"{_OP}: need at least one token, got T = {T}")
    check_shape(_OP, "dt", dt, (b, T, H), "[B, T, H] (B, T, H as x)")
    check_shape(_OP, "A", A, (H,), "[H]")
    check_shape(_OP, "B", B, (b, T, G, N), "[B, T, G, N] (B, T as x)")
    check_shape(_OP, "C", C, (b, T, G, N), "[B, T, G, N] (same as B)")
    if G < 1 or H % G != 0:
        raise ValueError(
            f"{_OP}: the number of heads H = {H} must be divisible by the number of groups G = {G}"
        )
    if initial_state is not None:
        check_ndim(_OP, "initial_state", initial_state, "[B, H, P, N]")
        check_shape(_OP, "initial_state", initial_state, (b, H, P, N), "[B, H, P, N]")
    devices = {t.device for t in (x, dt, A, B, C) + ((initial_state,) if initial_state is not None else ())}
    if len(devices) > 1:
        raise ValueError(f"{_OP}: all inputs must be on one device, got {sorted(map(str, devices))}")


def _heads(t: torch.Tensor, H: int) -> torch.Tensor:
    """``[B, T, G, N]`` -> ``[B, T, H, N]``: head ``h`` reads group ``h // (H / G)``, as in mamba-ssm."""
    return t.repeat_interleave(H // t.shape[2], dim=2)


def ssd_recurrent(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token-by-token reference of SSD (shapes as :func:`ssd`); the ground truth, fp64-capable."""
    b, T, H, P = x.shape
    N = B.shape[-1]
    cdt = compute_dtype(x, dt, A, B, C)
    xdt = (x.to(cdt) * dt.to(cdt).unsqueeze(-1)).transpose(1, 2)  # [b, H, T, P]
    decay = (dt.to(cdt) * A.to(cdt)).exp().transpose(1, 2)  # [b, H, T]
    Bh = _heads(B.to(cdt), H).transpose(1, 2)  # [b, H, T, N]
    Ch = _heads(C.to(cdt), H).transpose(1, 2)
    h = x.new_zeros(b, H, P, N, dtype=cdt) if initial_state is None else initial_state.to(cdt)
    ys = []
    for t in range(T):
        h = h * decay[:, :, t, None, None] + xdt[:, :, t].unsqueeze(-1) * Bh[:, :, t].unsqueeze(-2)
        ys.append(h @ Ch[:, :, t].unsqueeze(-1))  # [b, H, P, 1]
    y = torch.cat(ys, dim=-1).permute(0, 3, 1, 2).to(x.dtype)  # [b, T, H, P]
    return y, (h if output_final_state else None)


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mamba-2's chunked SSD algorithm in plain torch, differentiable by autograd.

    Per chunk of ``L`` tokens with in-chunk cumulative log decay ``gam = cumsum(dt A)`` and
    ``D_ij = exp(gam_i - gam_j)`` (``j <= i``, the exponentiated segsum):

    1. intra-chunk (quadratic, attention-like): ``Y_diag = ((C B^T) * D) (dt x)``;
    2. chunk states: ``s = (dt x exp(gam_L - gam))^T B``, the chunk's own contribution to its end state;
    3. inter-chunk recurrence: ``S_next = exp(gam_L) S + s`` (a scalar decay per head, Python loop);
    4. state to output: ``Y_off = (C exp(gam)) S^T`` from the state entering the chunk.

    ``C B^T`` is computed once per group, not per head. Padding tokens have ``dt = 0`` (decay 1, no
    write), so the final state is unaffected.
    """
    b, T, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    R = H // G
    L = min(chunk_size, T)  # a sequence shorter than a chunk is one chunk: no padded L x L work
    n = -(-T // L)
    pad = n * L - T
    cdt = compute_dtype(x, dt, A, B, C)

    def blocks(t: torch.Tensor, heads: int) -> torch.Tensor:  # [b, T, heads, *] -> [b, heads, n, L, *]
        t = pad_time(t.to(cdt), pad, dim=1).transpose(1, 2)
        return t.reshape(b, heads, n, L, *t.shape[3:])

    dt_ = blocks(dt, H)  # [b, H, n, L]
    xdt = blocks(x, H) * dt_.unsqueeze(-1)  # [b, H, n, L, P]
    gam = (dt_ * A.to(cdt)[:, None, None]).cumsum(-1)  # [b, H, n, L]
    # Heads as [G, R] so that group tensors broadcast over the R heads sharing them.
    xdt = xdt.reshape(b, G, R, n, L, P)
    gam = gam.reshape(b, G, R, n, L)
    Bg = blocks(B, G).unsqueeze(2)  # [b, G, 1, n, L, N]
    Cg = blocks(C, G).unsqueeze(2)
    gam_last = gam[..., -1:]  # [b, G, R, n, 1]

    y = ((Cg @ Bg.transpose(-1, -2)) * causal_decay(gam)) @ xdt  # [b, G, R, n, L, P]
    chunk_states = (xdt * (gam_last - gam).exp().unsqueeze(-1)).transpose(-1, -2) @ Bg  # [.., n, P, N]
    chunk_decay = gam_last.exp().unsqueeze(-1)  # [b, G, R, n, 1, 1]

    S = x.new_zeros(b, H, P, N, dtype=cdt) if initial_state is None else initial_state.to(cdt)
    S = S.reshape(b, G, R, P, N)
    starts = []
    for i in range(n):
        starts.append(S)
        S = chunk_decay[:, :, :, i] * S + chunk_states[:, :, :, i]
    S_in = torch.stack(starts, dim=3)  # [b, G, R, n, P, N]
    y = y + (Cg * gam.exp().unsqueeze(-1)) @ S_in.transpose(-1, -2)
    y = y.reshape(b, H, n * L, P)[:, :, :T].transpose(1, 2).to(x.dtype)
    return y, (S.reshape(b, H, P, N) if output_final_state else None)


def ssd_mamba(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """mamba-ssm's fused chunk-scan kernel (CUDA only); same layout as ours (state ``[B, H, P, N]``).

    Called with no ``D``, ``z``, ``dt_bias`` or softplus, so it computes the bare Eq. 3 recurrence.
    """
    fn = load_kernel(_OP)
    if initial_state is not None:
        initial_state = initial_state.float().contiguous()
    out = fn(
        x.contiguous(),
        dt.contiguous(),
        A.float().contiguous(),
        B.to(x.dtype).contiguous(),
        C.to(x.dtype).contiguous(),
        chunk_size,
        initial_states=initial_state,
        return_final_states=output_final_state,
    )
    if output_final_state:
        y, final = out
        return y.to(x.dtype), final.float()
    return out.to(x.dtype), None
