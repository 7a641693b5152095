"""HybridLM: embedding, a stack of attention / fast-weight blocks from a layout string, and an output head."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from lmsleep.layers.attention import Attention
from lmsleep.layers.block import Block
from lmsleep.layers.fast_weight_mixer import FastWeightMixer
from lmsleep.models.sleep import NO_HOOKS, SleepConfig, SleepHooks, run_windows
from lmsleep.models.state import ModelState


def _attention(dim: int, heads: int, rope_base: float, ssm: dict[str, Any]) -> nn.Module:
    return Attention(dim, heads, rope_base)


def _fast_weights(dim: int, heads: int, rope_base: float, ssm: dict[str, Any]) -> nn.Module:
    return FastWeightMixer(dim, **ssm)


# Sequence mixers by layout name. Each takes ``(x [B, T, D], state, pos=, sliding=)`` and returns ``(y, state)``.
MIXERS: dict[str, Callable[..., nn.Module]] = {"attn": _attention, "ssm": _fast_weights}


def parse_layout(layout: str | Sequence[str]) -> list[str]:
    kinds = [k.strip() for k in layout.split(",")] if isinstance(layout, str) else [str(k) for k in layout]
    if not kinds or kinds == [""]:
        raise ValueError(
            f"model layout {layout!r} is empty; use a comma list of {sorted(MIXERS)}, e.g. 'attn,ssm'"
        )
    unknown = [k for k in kinds if k not in MIXERS]
    if unknown:
        raise ValueError(
            f"model layout {layout!r} has unknown block kinds {unknown}; use a comma list of {sorted(MIXERS)}"
        )
    return kinds


def parameter_group(name: str, kinds: Sequence[str]) -> set[str]:
    """The groups (:mod:`lmsleep.models.groups`) of a :class:`HybridLM` parameter, from its name
    (``blocks.3.mixer.qkv.weight``) and the block kinds: a mixer's parameters are in its kind's group
    (``attn`` or ``ssm``), the pre-norms in ``norm`` (a mixer's own ``out_norm`` stays with the mixer)."""
    groups = {"all"}
    parts = name.split(".")
    if parts[0] in ("embed", "head"):
        groups.add(parts[0])
    if "norm" in name and "out_norm" not in name:
        groups.add("norm")
    if parts[0] == "blocks":
        kind = kinds[int(parts[1])]
        if parts[2] == "mixer":
            groups.add(kind)
        elif parts[2] == "mlp":
            groups.add("mlp")
    return groups


def parse_loop(loop: str | Sequence[int] | None, depth: int) -> range:
    """Which blocks sleep loops: ``all`` (default), ``middle`` (the middle half), ``"a:b"`` or ``[a, b]``."""
    if loop is None or loop == "all":
        return range(depth)
    if loop == "middle":
        q = depth // 4
        return range(q, depth - q)
    usage = f"model.loop={loop!r}: use 'all', 'middle', 'a:b' or [a, b] (block indices)"
    try:
        if isinstance(loop, str) and loop.count(":") == 1:
            a, b = loop.split(":")
            bounds = [int(a) if a.strip() else 0, int(b) if b.strip() else depth]
        elif isinstance(loop, str):
            raise ValueError(usage)
        else:
            bounds = [int(x) for x in loop]
    except (TypeError, ValueError) as exc:  # 'x:y', '1:2:3', a bare int, ...
        raise ValueError(usage) from exc
    if len(bounds) != 2 or not 0 <= bounds[0] < bounds[1] <= depth:
        raise ValueError(f"model.loop={loop!r} must name a non-empty slice of the {depth} blocks")
    return range(bounds[0], bounds[1])


class HybridLM(nn.Module):
    """A language model whose blocks alternate softmax attention and fast-weight layers
    (docs/design.md#hybrid-model).

    Args:
        vocab_size: number of token ids.
        dim: width d.
        layout: block kinds, e.g. ``"attn,ssm,attn,ssm"`` (the paper's synthetic-task model) or all ``attn``
            (the transformer baseline).
        heads: attention heads.
        mlp_ratio: SwiGLU hidden width as a multiple of ``dim``.
        loop: blocks that sleep passes re-run (Eq. 6): ``all``, ``middle``, ``"a:b"``.
        rope_base: rotary base.
        ssm: keyword arguments of :class:`FastWeightMixer` (``rule``: ``mamba2`` or ``gated_delta``, heads,
            head_dim, conv_size, backend, ...).
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int = 64,
        layout: str | Sequence[str] = "attn,attn",
        heads: int = 4,
        mlp_ratio: float = 4.0,
        loop: Any = "all",
        rope_base: float = 10_000.0,
        ssm: dict[str, Any] | None = None,
    ):
        super().__init__()
        if vocab_size is None or int(vocab_size) < 1:
            raise ValueError(
                f"model vocab_size must be a positive int (taken from the data), got {vocab_size}"
            )
        if dim < 1:
            raise ValueError(f"model dim must be >= 1, got {dim}")
        self.kinds = parse_layout(layout)
        self.loop_range = parse_loop(loop, len(self.kinds))
        self.dim = dim
        self.embed = nn.Embedding(int(vocab_size), dim)
        hidden = int(mlp_ratio * dim)
        self.blocks = nn.ModuleList(
            Block(
                MIXERS[k](dim=dim, heads=heads, rope_base=rope_base, ssm=dict(ssm or {})), dim, hidden, kind=k
            )
            for k in self.kinds
        )
        self.norm = nn.RMSNorm(dim)
        self.head = nn.Linear(dim, int(vocab_size), bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Small normal init; residual output projections scaled by depth (GPT-2 style)."""
        std = 0.02
        for name, p in self.named_parameters():
            if p.dim() < 2 or "conv" in name:
                continue
            scale = (
                1 / math.sqrt(2 * len(self.blocks)) if name.endswith(("out.weight", "down.weight")) else 1.0
            )
            nn.init.normal_(p, std=std * scale)

    @property
    def has_fast_weights(self) -> bool:
        return any(k != "attn" for k in self.kinds)

    def parameter_groups(self) -> dict[str, set[str]]:
        """Every parameter name -> its groups (:mod:`lmsleep.models.groups`, :func:`parameter_group`)."""
        return {name: parameter_group(name, self.kinds) for name, _ in self.named_parameters()}

    def init_state(self, batch_size: int) -> ModelState:
        """Empty per-sequence state (zero fast weights, no KV) for a batch."""
        return ModelState([None] * len(self.blocks))

    def run_blocks(
        self, h: torch.Tensor, state: ModelState, indices: range, **mixer_kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor, ModelState]:
        """Run blocks ``indices`` over ``h [B, T, D]``; returns the output, the features after the last looped
        block (for sleep passes) and the updated state."""
        layers = list(state.layers)
        loop_out = h
        for i in indices:
            h, layers[i] = self.blocks[i](h, layers[i], **mixer_kwargs)
            if i == self.loop_range[-1]:
                loop_out = h
        return h, loop_out, ModelState(layers, state.pos, state.window_index)

    def output(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(h))

    def forward(
        self,
        input_ids: torch.Tensor,
        sleep: SleepConfig | None = None,
        state: ModelState | None = None,
        hooks: SleepHooks = NO_HOOKS,
    ) -> tuple[torch.Tensor, ModelState]:
        """Logits ``[B, T, V]`` of the wake passes over ``input_ids [B, T]`` and the final state.

        ``sleep`` defaults to one window of the whole sequence (no eviction, no sleep).
        """
        return run_windows(self, input_ids, sleep or SleepConfig(eviction="none"), state, hooks)
