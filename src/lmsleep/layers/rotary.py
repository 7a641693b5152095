"""Rotary position embedding (RoPE) on explicit integer positions."""

from __future__ import annotations

import torch
from torch import nn


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
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x ``[B, H, T, D]``, positions ``[T]`` (any integers, may be negative) -> rotated x."""
        angles = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]  # [T, D/2]
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
