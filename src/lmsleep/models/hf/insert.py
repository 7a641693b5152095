"""The Ouro recipe (paper §6.3): fast-weight layers inserted into a pretrained model.

An attention-only model has no fast weights to sleep on. The paper gives Ouro 1.4B (24 attention layers) six
Gated-DeltaNet-style layers without MLPs (< 10 % more parameters). :class:`FastWeightBlock` is such a layer:
``x + FastWeightMixer(RMSNorm(x))`` with lmsleep's own :class:`FastWeightMixer` (``rule="gated_delta"`` by
default), whose output projection starts at zero, so that at insertion ``FastWeightBlock(x) = x`` and the
model computes exactly what it computed before. Gradients still reach the output projection
(``dL/dW_out = sum_t dL/dy_t o_t^T``, with ``o_t`` the normed, gated read-out ``S_t^T q_t``), and through it
the rest of the layer after the first step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lmsleep.layers.fast_weight_mixer import FastWeightMixer, FastWeights
from lmsleep.utils.config import ConfigError

DEFAULT_SSM: dict[str, Any] = {"rule": "gated_delta"}


class FastWeightBlock(nn.Module):
    """``x [B, T, D] -> x + mixer(norm(x))``, no MLP; the mixer's state is a :class:`FastWeights`.

    Args:
        dim: the host model's width D.
        eps: the RMSNorm epsilon (the host's ``rms_norm_eps`` is a good choice).
        ssm: keyword arguments of :class:`FastWeightMixer` (``rule`` defaults to ``gated_delta``; heads,
            head_dim, conv_size, ...).
    """

    kind = "inserted"

    def __init__(self, dim: int, eps: float = 1e-6, **ssm: Any):
        super().__init__()
        self.norm = nn.RMSNorm(dim, eps=eps)
        self.mixer = FastWeightMixer(dim, **{**DEFAULT_SSM, **ssm})
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Projections ~ N(0, 0.02) as in :class:`lmsleep.models.HybridLM`; the output projection zero, so
        the block is the identity at insertion."""
        for name, p in self.mixer.named_parameters():
            if p.dim() >= 2 and "conv" not in name:
                nn.init.normal_(p, std=0.02)
        nn.init.zeros_(self.mixer.out.weight)

    def forward(
        self, x: torch.Tensor, state: FastWeights | None = None, **mixer_kwargs: Any
    ) -> tuple[torch.Tensor, FastWeights]:
        y, state = self.mixer(self.norm(x), state, **mixer_kwargs)
        return x + y, state


def asks_for_insertions(insert: Sequence[int] | str | None) -> bool:
    """Whether a ``model.net.insert`` setting asks for any block (``None``, ``""`` and ``[]`` do not)."""
    return not (insert is None or insert == "" or len(insert) == 0)


def parse_insert(insert: Sequence[int] | str | None, n_layers: int) -> list[int]:
    """Positions of inserted blocks: each ``i`` puts one after the host's decoder layer ``i`` (0-based).

    Accepts a list of ints, a comma string (``"5,11,17,23"``), or ``"every:k"`` (after layers k-1, 2k-1, ...).
    """
    if not asks_for_insertions(insert):
        return []
    usage = (
        f"model.net.insert={insert!r}: use a list of decoder-layer indices in [0, {n_layers - 1}] "
        "(a block goes after each), or 'every:k'"
    )
    try:
        if isinstance(insert, str) and insert.startswith("every:"):
            k = int(insert.split(":", 1)[1])
            if k < 1:
                raise ValueError(usage)
            positions = list(range(k - 1, n_layers, k))
        elif isinstance(insert, str):
            positions = [int(p) for p in insert.split(",")]
        else:
            positions = [int(p) for p in insert]
    except (TypeError, ValueError):
        raise ConfigError(usage) from None
    if (
        not positions
        or len(set(positions)) != len(positions)
        or not all(0 <= p < n_layers for p in positions)
    ):
        raise ConfigError(usage)
    return sorted(positions)
