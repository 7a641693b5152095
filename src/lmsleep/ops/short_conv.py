"""Short causal depthwise convolution over time, the local mixing before a fast-weight rule (Mamba-2, GDN).

``y_t = bias + sum_j w_j * x_(t - W + 1 + j)`` per channel, ``j = 0 .. W-1`` with ``W`` the kernel width,
reading ``x`` before the first token from ``initial_state`` (the previous ``W - 1`` inputs, zeros if None).
Layout: ``x [B, T, C]`` (time-major, as the projections produce it), ``weight [C, W]``, ``bias [C]``,
state ``[B, C, W - 1]``. Same signature convention as the other ops.

Backends: ``reference`` (``F.conv1d`` on the concatenated sequence: the plain definition) and ``shifted``
(the default): W shifted multiply-adds with a hand-written backward. For the width-4 kernels of these
models the reference's CPU backward took ~12 % of a training step; autograd through plain shifted slices
allocates a zero-filled full-size gradient per tap. The hand-written backward accumulates all taps into one
buffer and reduces the kernel gradient tap by tap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import check_ndim, check_shape

__all__ = ["short_conv", "short_conv_reference", "short_conv_shifted"]

_OP = "short_conv"


def short_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    backend: str = "shifted",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal depthwise convolution of ``x [B, T, C]`` with ``weight [C, W]`` (and ``bias [C]``).

    Returns ``(y [B, T, C], final_state [B, C, W - 1] or None)``: the last ``W - 1`` inputs (the earlier
    state where ``T < W - 1``), so that feeding it back as ``initial_state`` continues the sequence exactly.
    Differentiable in ``x``, ``weight``, ``bias`` and ``initial_state``.
    """
    check_ndim(_OP, "x", x, "[B, T, C]")
    check_ndim(_OP, "weight", weight, "[C, W]")
    B, T, C = x.shape
    W = weight.shape[1]
    check_shape(_OP, "weight", weight, (C, W), "[C, W]")
    if bias is not None:
        check_shape(_OP, "bias", bias, (C,), "[C]")
    if initial_state is not None:
        check_shape(_OP, "initial_state", initial_state, (B, C, W - 1), "[B, C, W - 1]")
    if backend == "reference":
        return short_conv_reference(x, weight, bias, initial_state, output_final_state)
    if backend == "shifted":
        return short_conv_shifted(x, weight, bias, initial_state, output_final_state)
    raise ValueError(f"{_OP}: unknown backend {backend!r}; expected 'shifted' or 'reference'")


def _history(x: torch.Tensor, initial_state: torch.Tensor | None, W: int) -> torch.Tensor:
    """``[B, W - 1 + T, C]``: the state's inputs, then ``x``."""
    B, T, C = x.shape
    if initial_state is None:
        initial_state = x.new_zeros(B, C, W - 1)
    return torch.cat((initial_state.to(x.dtype).transpose(1, 2), x), dim=1)


def short_conv_reference(x, weight, bias=None, initial_state=None, output_final_state=False):
    """``F.conv1d`` over the state's inputs and ``x``: the definition, for tests."""
    B, T, C = x.shape
    W = weight.shape[1]
    seq = _history(x, initial_state, W)
    y = F.conv1d(seq.transpose(1, 2), weight.to(x.dtype)[:, None], bias, groups=C).transpose(1, 2)
    final = seq[:, T:].transpose(1, 2) if output_final_state else None
    return y, final


class _ShiftedConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, seq: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        T = seq.shape[1] - weight.shape[1] + 1
        w = weight.to(seq.dtype)
        y = seq[:, :T] * w[:, 0] if bias is None else torch.addcmul(bias.to(seq.dtype), seq[:, :T], w[:, 0])
        for j in range(1, w.shape[1]):
            y.addcmul_(seq[:, j : j + T], w[:, j])
        ctx.save_for_backward(seq, weight)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        seq, weight = ctx.saved_tensors
        W = weight.shape[1]
        T = gy.shape[1]
        w = weight.to(gy.dtype)
        g_seq = None
        if ctx.needs_input_grad[0]:
            g_seq = gy.new_zeros(seq.shape)
            for j in range(W):
                g_seq[:, j : j + T].addcmul_(gy, w[:, j])
        g_w = None
        if ctx.needs_input_grad[1]:
            # One product and one reduction per tap: ~5x faster on CPU than an einsum over the unfolded
            # [B, T, C, W] view, which becomes C tiny matrix products.
            g_w = torch.stack([(gy * seq[:, j : j + T]).sum((0, 1)) for j in range(W)], 1).to(weight.dtype)
        g_b = gy.sum((0, 1)) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return g_seq, g_w, g_b


def short_conv_shifted(x, weight, bias=None, initial_state=None, output_final_state=False):
    """Shifted multiply-adds with a hand-written backward (same results as the reference)."""
    T = x.shape[1]
    seq = _history(x, initial_state, weight.shape[1])
    y = _ShiftedConv.apply(seq, weight, bias)
    final = seq[:, T:].transpose(1, 2) if output_final_state else None
    return y, final
