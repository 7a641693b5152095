"""Rotary position embedding (RoPE) on explicit integer positions."""

from __future__ import annotations

import torch
from torch import nn


def inv_frequencies(head_dim: int, base: float = 10_000.0) -> torch.Tensor:
    """``base^(-2i/D)`` for the ``D/2`` rotation pairs, computed in float64 and stored as float32."""
    return (base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)).float()


def rotate(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs of ``x [..., T, D]`` by ``position * inv_freq``; positions ``[T]`` (any integers)."""
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # [T, D/2]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class Rotary(nn.Module):
    """Rotates query/key pairs by angle ``position * base^(-2i/D)``.

    Scores depend only on ``position_q - position_k``, so positions may be counted from any origin; we count
    from the current window's start (docs/design.md#decisions-where-the-paper-is-open), which keeps angles
    small on endless streams.
    """

    def __init__(self, head_dim: int, base: float = 10_000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embedding needs an even head dimension, got {head_dim}")
        self.base = float(base)
        self.register_buffer("inv_freq", inv_frequencies(head_dim, base), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x ``[B, H, T, D]``, positions ``[T]`` (any integers, may be negative) -> rotated x."""
        return rotate(x, positions, self.inv_freq)
