"""A residual block: pre-norm sequence mixer, then pre-norm SwiGLU MLP (docs/design.md#hybrid-model)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lmsleep.layers.mlp import SwiGLU


class Block(nn.Module):
    """``x + mixer(norm(x))`` then ``x + mlp(norm(x))``; ``x [B, T, D]``.

    The mixer's per-sequence state (a :class:`KVCache` or fast weights) is passed in and returned.
    """

    def __init__(self, mixer: nn.Module, dim: int, mlp_hidden: int, kind: str):
        super().__init__()
        self.kind = kind
        self.mixer_norm = nn.RMSNorm(dim)
        self.mixer = mixer
        self.mlp_norm = nn.RMSNorm(dim)
        self.mlp = SwiGLU(dim, mlp_hidden)

    def forward(self, x: torch.Tensor, state: Any = None, **mixer_kwargs: Any) -> tuple[torch.Tensor, Any]:
        y, state = self.mixer(self.mixer_norm(x), state, **mixer_kwargs)
        x = x + y
        return x + self.mlp(self.mlp_norm(x)), state
