"""Gated delta rule (Gated DeltaNet), the fast-weight update the paper ran
(docs/design.md#fast-weights-and-update-rules).

With all vectors columns and the state ``S`` stored ``K x V``::

    S_t = (I - beta_t k_t k_t^T) (exp(g_t) S_{t-1}) + beta_t k_t v_t^T
    o_t = scale * S_t^T q_t

i.e. the design's ``S_t = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T`` with ``a_t = exp(g_t)``,
``b_t = beta_t``.
This is exactly flash-linear-attention's ``naive_recurrent_gated_delta_rule`` (decay first, then the delta
update reads the decayed state). Layout follows fla: ``[B, T, H, ...]``, state ``[B, H, K, V]``.
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
    unit_lower_inverse,
)
from .backend import load_kernel, resolve_backend

__all__ = [
    "gated_delta_rule",
    "gated_delta_rule_chunked",
    "gated_delta_rule_fla",
    "gated_delta_rule_recurrent",
]

_OP = "gated_delta_rule"


def gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    backend: str = "auto",
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the gated delta rule over a sequence.

    Args:
        q, k: ``[B, T, H, K]``. The rule assumes ``||k_t|| <= 1`` (callers L2-normalise) for stability;
            it is not enforced here.
        v: ``[B, T, H, V]``.
        g: ``[B, T, H]`` log decay, normally ``<= 0``. ``g > 0`` is computed as written (growth) but the
            chunked backend may overflow for large positive in-chunk sums, so keep ``g <= 0``.
        beta: ``[B, T, H]`` write strength, normally in ``(0, 1)`` (``(0, 2)`` still contracts).
        scale: output scale, default ``K ** -0.5``.
        initial_state: ``[B, H, K, V]`` state before the first token, default zeros.
        output_final_state: return the ``[B, H, K, V]`` state after the last token (fp32, or fp64 for
            fp64 inputs); feeding it back as ``initial_state`` continues the sequence exactly.
        backend: ``"auto"`` (fla kernel on CUDA when importable, else ``"chunked"``), ``"recurrent"``
            (token loop, the reference), ``"chunked"`` (blocked WY form in torch) or ``"fla"``.
        chunk_size: chunk length of the ``chunked`` backend (any ``T`` is padded internally).

    Returns:
        ``(o, final_state)``: ``o`` is ``[B, T, H, V]`` in ``v``'s dtype; ``final_state`` is None unless
        requested. All backends accumulate in fp32 (fp64 for fp64 inputs) and are differentiable in every
        input, ``initial_state`` included.
    """
    _validate(q, k, v, g, beta, initial_state)
    check_chunk_size(_OP, chunk_size)
    name = resolve_backend(_OP, backend, q.device)
    if name == "recurrent":
        return gated_delta_rule_recurrent(q, k, v, g, beta, scale, initial_state, output_final_state)
    if name == "chunked":
        return gated_delta_rule_chunked(
            q, k, v, g, beta, scale, initial_state, output_final_state, chunk_size=chunk_size
        )
    return gated_delta_rule_fla(q, k, v, g, beta, scale, initial_state, output_final_state)


def _validate(q, k, v, g, beta, initial_state) -> None:
    check_ndim(_OP, "q", q, "[B, T, H, K]")
    check_ndim(_OP, "k", k, "[B, T, H, K]")
    check_ndim(_OP, "v", v, "[B, T, H, V]")
    check_ndim(_OP, "g", g, "[B, T, H]")
    check_ndim(_OP, "beta", beta, "[B, T, H]")
    B, T, H, K = q.shape
    V = v.shape[-1]
    if T < 1:
        raise ValueError(f"{_OP}: need at least one token, got T = {T}")
    check_shape(_OP, "k", k, (B, T, H, K), "[B, T, H, K] (same as q)")
    check_shape(_OP, "v", v, (B, T, H, V), "[B, T, H, V] (B, T, H as q)")
    check_shape(_OP, "g", g, (B, T, H), "[B, T, H]")
    check_shape(_OP, "beta", beta, (B, T, H), "[B, T, H]")
    if initial_state is not None:
        check_ndim(_OP, "initial_state", initial_state, "[B, H, K, V]")
        check_shape(_OP, "initial_state", initial_state, (B, H, K, V), "[B, H, K, V]")
    devices = {t.device for t in (q, k, v, g, beta) + ((initial_state,) if initial_state is not None else ())}
    if len(devices) > 1:
        raise ValueError(f"{_OP}: all inputs must be on one device, got {sorted(map(str, devices))}")


def gated_delta_rule_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token-by-token reference of the gated delta rule (shapes as :func:`gated_delta_rule`).

    O(T) Python steps; use it as ground truth (it works in fp64) and for short sequences.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    cdt, out_dtype = compute_dtype(q, k, v, g, beta), v.dtype
    scale = K**-0.5 if scale is None else scale
    q, k, v = (t.to(cdt).transpose(1, 2) for t in (q, k, v))  # [B, H, T, *]
    decay = g.to(cdt).transpose(1, 2).exp()  # [B, H, T]
    beta_ = beta.to(cdt).transpose(1, 2)
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(cdt)
    outs = []
    for t in range(T):
        S = S * decay[:, :, t, None, None]
        k_t = k[:, :, t].unsqueeze(-2)  # [B, H, 1, K]
        # Delta rule: write beta * (target - current prediction) for key k_t.
        err = (v[:, :, t].unsqueeze(-2) - k_t @ S) * beta_[:, :, t, None, None]  # [B, H, 1, V]
        S = S + k_t.transpose(-1, -2) @ err
        outs.append(q[:, :, t].unsqueeze(-2) @ S)
    o = (torch.cat(outs, dim=-2) * scale).transpose(1, 2).to(out_dtype)
    return o, (S if output_final_state else None)


def gated_delta_rule_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked (WY / UT-transform) gated delta rule in plain torch, differentiable by autograd.

    Within a chunk of ``C`` tokens with in-chunk cumulative log decay ``gam`` and
    ``D_ij = exp(gam_i - gam_j)`` (``j <= i``), the C delta-rule writes collapse to one low-rank update:
    ``Tm = (I + strict_tril(diag(beta) K K^T * D))^-1`` (unit lower triangular, the UT transform) gives
    ``U = Tm (beta V)`` and ``W = Tm (beta K exp(gam))``, and with the state ``S`` entering the chunk

        new values   V' = U - W S
        outputs      O  = scale (Q exp(gam)) S + (scale Q K^T * D) V'
        next state   S' = exp(gam_C) S + (K exp(gam_C - gam))^T V'.

    ``Tm``, ``U``, ``W`` and the intra-chunk scores are computed for all chunks at once; only the state
    recurrence (``V' = U - W S``, ``S' = ...``, two ``[K x V]``-sized matmuls per chunk) runs in a Python
    loop over chunks, and the outputs are one batched matmul pair against the stacked chunk-start
    states. Padding tokens have ``k = v = beta = g = 0``, i.e. an identity transition, so the final state
    is unaffected.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = min(chunk_size, T)  # a sequence shorter than a chunk is one chunk: no padded C x C work
    n = -(-T // C)
    pad = n * C - T
    cdt, out_dtype = compute_dtype(q, k, v, g, beta), v.dtype
    scale = K**-0.5 if scale is None else scale

    def blocks(t: torch.Tensor) -> torch.Tensor:  # [B, T, H, *] -> [B, H, n, C, *]
        t = pad_time(t.to(cdt), pad, dim=1).transpose(1, 2)
        return t.reshape(B, H, n, C, *t.shape[3:])

    q, k, v, g, beta = map(blocks, (q, k, v, g, beta))
    gam = g.cumsum(-1)  # [B, H, n, C]
    D = causal_decay(gam)  # [B, H, n, C, C]
    gam_last = gam[..., -1:]  # [B, H, n, 1]

    k_beta = k * beta.unsqueeze(-1)
    qs = q * scale
    # One matmul for both C x C products (fewer, larger bmm calls are markedly faster on CPU).
    # A needs no masking: unit_lower_inverse reads only its strict lower triangle,
    # and P is causal incl. the diagonal because D is zero above it.
    A, P = (
        (torch.cat([k_beta, qs], dim=-2) @ k.transpose(-1, -2)).unflatten(-2, (2, C)) * D.unsqueeze(-3)
    ).unbind(-3)
    Tm = unit_lower_inverse(A)  # the UT transform, [B, H, n, C, C]
    U, W = (Tm @ torch.cat([v * beta.unsqueeze(-1), k_beta * gam.exp().unsqueeze(-1)], dim=-1)).split(
        (V, K), dim=-1
    )
    k_tail = (k * (gam_last - gam).exp().unsqueeze(-1)).transpose(-1, -2)  # [B, H, n, K, C]

    def per_chunk(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # Chunk-major contiguous slices; unbind (not indexing in the loop) keeps the backward from
        # materialising a zero-filled full-size gradient per chunk.
        return t.permute(2, 0, 1, 3, 4).reshape(n, B * H, *t.shape[-2:]).unbind(0)

    Us, Ws, Ks = per_chunk(U), per_chunk(W), per_chunk(k_tail)
    decays = gam_last.exp().permute(2, 0, 1, 3).reshape(n, B * H, 1, 1).unbind(0)
    S = q.new_zeros(B * H, K, V) if initial_state is None else initial_state.to(cdt).reshape(B * H, K, V)
    starts, news = [], []
    for i in range(n):
        starts.append(S)
        v_new = torch.baddbmm(Us[i], Ws[i], S, alpha=-1)  # V' = U - W S
        news.append(v_new)
        S = torch.baddbmm(decays[i] * S, Ks[i], v_new)
    S_in = torch.stack(starts, dim=1).view(B, H, n, K, V)
    V_new = torch.stack(news, dim=1).view(B, H, n, C, V)
    o = (qs * gam.exp().unsqueeze(-1)) @ S_in + P @ V_new  # [B, H, n, C, V]
    S = S.view(B, H, K, V)
    o = o.reshape(B, H, n * C, V)[:, :, :T].transpose(1, 2).to(out_dtype)
    return o, (S if output_final_state else None)


def gated_delta_rule_fla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """flash-linear-attention's chunk kernel (CUDA only); same layout and semantics as ours.

    q/k normalisation and the beta sigmoid stay outside the kernel (``use_qk_l2norm_in_kernel=False``):
    the op's contract is the bare rule, the layer normalises. The kernel picks its own chunk size.
    """
    fn = load_kernel(_OP)
    K = q.shape[-1]
    scale = K**-0.5 if scale is None else scale
    # The kernel wants one dtype for q/k/v and reads g/beta/state in fp32 internally.
    dtype = v.dtype
    if initial_state is not None:
        initial_state = initial_state.float().contiguous()
    o, final = fn(
        q.to(dtype).contiguous(),
        k.to(dtype).contiguous(),
        v.contiguous(),
        g.float().contiguous(),
        beta.to(dtype).contiguous(),
        scale=scale,
        initial_state=initial_state,
        output_final_state=output_final_state,
        use_qk_l2norm_in_kernel=False,
    )
    if final is not None:
        final = final.float()
    return o.to(dtype), (final if output_final_state else None)
