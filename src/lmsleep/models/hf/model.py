"""HFSleepLM: generalised Algorithm 1 over the decoder layers of a transformers causal LM.

The wrapper exposes the interface :mod:`lmsleep.models.sleep` drives (``embed``, ``run_blocks``,
``output``, ``loop_range``, ``blocks``, ``init_state``), so the *same* window loop that sleeps
:class:`lmsleep.models.HybridLM` sleeps a pretrained model (docs/design.md#sleep, docs/pretrained.md):
for every window of L tokens the wake pass runs all blocks; if another window follows, passes 2..N re-run
the looped blocks over the same tokens (Eq. 6: ``Embed -> (Blocks)^N -> OutProj``, with the coda of a
looped slice), then the attention KV is evicted and only the linear layers' recurrent states ``S`` cross
the boundary. Training backpropagates through all windows and passes (the cache never writes in place),
with ``grad_passes`` / ``tbptt_windows`` / ``checkpoint_windows`` as for HybridLM.

Each transformers decoder layer is called on its own with explicit inputs: position ids counted from the
window start (``pos .. pos + T - 1``; the attention KV never spans a hard boundary, and under sliding
eviction the kept keys are re-rotated to the new origin), the causal (and sliding) mask built here, and a
:class:`WindowCache` over the lmsleep state. Nothing of transformers' own model loop (position ids from the
cache length, gradient checkpointing that drops the cache in training) is used.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lmsleep.layers.attention import Attention
from lmsleep.models.hf.cache import HFKV, KeyRotation, WindowCache
from lmsleep.models.hf.families import (
    ATTN,
    KIND_GROUPS,
    LAYER_PARTS,
    LINEAR,
    MIXER,
    STATELESS,
    family_of,
    layer_kinds,
    native_sliding_window,
)
from lmsleep.models.hf.insert import FastWeightBlock, parse_insert
from lmsleep.models.hf.kernels import _fallback_ops, modeling_modules, torch_ops_on_cpu
from lmsleep.models.hybrid import parse_loop
from lmsleep.models.sleep import NO_HOOKS, SleepConfig, SleepHooks, run_windows
from lmsleep.models.state import ModelState
from lmsleep.utils.config import ConfigError

INSERTED = "inserted"
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


def _copy_saved_tensors(active: bool) -> contextlib.AbstractContextManager:
    """Autograd keeps copies of the tensors it saves, instead of the tensors themselves.

    transformers' Mamba-2 single-token path writes the recurrent state it was handed in place
    (``state.copy_(state * dA + dBx)``) after saving it for backward; on the copy :class:`WindowCache`
    hands out that is harmless to the lmsleep state, but autograd would refuse the backward ("modified by an
    inplace operation"). Saving copies (only for one-token calls with gradients, where they are small)
    keeps the values the backward needs.
    """
    if not active:
        return contextlib.nullcontext()
    return torch.autograd.graph.saved_tensors_hooks(torch.clone, lambda saved: saved)


@dataclass
class BlockRef:
    """One block of the wrapped model: ``kind`` (``attn``, ``linear``, ``stateless`` or ``inserted``), the
    transformers layer index (or the key of the inserted block) and its fast-weight mixer, if lmsleep's own
    (what :class:`lmsleep.callbacks.SleepMonitor` observes)."""

    kind: str
    index: int
    module: nn.Module
    mixer: nn.Module | None = None


class HFSleepLM(nn.Module):
    """A transformers causal LM run window by window with sleep (see the module docstring).

    Args:
        hf: a loaded causal LM of a supported family (:data:`lmsleep.models.hf.families.FAMILIES`), with
            ``attn_implementation`` ``sdpa`` (default) or ``eager``.
        loop: blocks that sleep passes re-run: ``all``, ``middle`` (the middle half, e.g. 14 of 28 as for
            Jet-Nemotron), ``"a:b"`` or ``[a, b]``; indices count inserted blocks.
        insert: positions of inserted fast-weight blocks (:func:`parse_insert`): one after each listed
            decoder layer, identity at insertion (the Ouro recipe).
        insert_ssm: keyword arguments of the inserted blocks' :class:`FastWeightMixer`.

    ``forward(input_ids [B, T], sleep, state)`` returns the wake logits ``[B, T, V]`` and the final state,
    as :meth:`lmsleep.models.HybridLM.forward`.
    """

    def __init__(
        self,
        hf: nn.Module,
        loop: Any = "all",
        insert: Sequence[int] | str | None = None,
        insert_ssm: dict[str, Any] | None = None,
    ):
        super().__init__()
        config = hf.config
        self.family = family_of(config)
        attn_impl = getattr(config, "_attn_implementation", None) or "eager"
        if attn_impl not in ATTN_IMPLEMENTATIONS:
            raise ConfigError(
                f"model=hf: attn_implementation={attn_impl!r} is not supported (lmsleep passes explicit "
                f"causal/sliding masks); load the model with attn_implementation one of {ATTN_IMPLEMENTATIONS}"
            )
        self.attn_implementation = attn_impl
        for module in hf.modules():  # transformers' own checkpointing drops the cache in training:
            if getattr(module, "gradient_checkpointing", False):  # sleep.checkpoint_windows replaces it
                module.gradient_checkpointing = False
        self.hf = hf
        inner = hf.model
        kinds = layer_kinds(config)
        if len(kinds) != len(inner.layers):
            raise ConfigError(
                f"model=hf: the config lists {len(kinds)} layer types but the model has {len(inner.layers)} layers"
            )
        dim = int(config.hidden_size)
        eps = float(getattr(config, "rms_norm_eps", None) or getattr(config, "layer_norm_epsilon", 1e-6))
        embed = hf.get_input_embeddings().weight
        self.inserted = nn.ModuleDict()
        self.blocks: list[BlockRef] = []
        positions = set(parse_insert(insert, len(kinds)))
        for i, kind in enumerate(kinds):
            self.blocks.append(BlockRef(kind, i, inner.layers[i]))
            if i in positions:
                block = FastWeightBlock(dim, eps=eps, **dict(insert_ssm or {}))
                self.inserted[str(i)] = block.to(device=embed.device, dtype=embed.dtype)
                self.blocks.append(BlockRef(INSERTED, i, block, block.mixer))
        self.kinds = [b.kind for b in self.blocks]
        try:
            self.loop_range = parse_loop(loop, len(self.blocks))
        except ValueError as exc:
            raise ConfigError(str(exc).replace("model.loop", "model.net.loop")) from None
        self._rotary = getattr(inner, "rotary_emb", None) if self.family.rotary else None
        self._rotations = {
            b.index: KeyRotation(self._rotary, sys.modules[type(b.module).__module__].apply_rotary_pos_emb)
            for b in self.blocks
            if b.kind == ATTN and self._rotary is not None
        }
        self._native_sliding = {b.index: native_sliding_window(config, b.index) for b in self.blocks}
        self._op_modules = modeling_modules(hf)
        for module in self._op_modules:
            _fallback_ops(module)  # scan now, while transformers' own bindings are in place

    # --- the interface of lmsleep.models.sleep ----------------------------------------------------------
    @property
    def has_fast_weights(self) -> bool:
        return any(k in (LINEAR, INSERTED) for k in self.kinds)

    @property
    def config(self) -> Any:
        return self.hf.config

    @property
    def dim(self) -> int:
        """The model width D (part of a saved stream's model signature)."""
        return int(self.hf.config.hidden_size)

    def adopt_state(self, state: ModelState) -> ModelState:
        """A loaded state with this model's key rotations re-attached to its attention KV."""
        layers = [
            HFKV(s.k, s.v, self._rotations.get(b.index)) if isinstance(s, HFKV) else s
            for b, s in zip(self.blocks, state.layers, strict=True)
        ]
        return ModelState(layers, state.pos, state.window_index)

    def non_hidden_parameters(self) -> list[nn.Parameter]:
        """The token embedding and the LM head (one tensor when tied): matrices, but not hidden layers, so
        :func:`lmsleep.lit.optim.split_parameters` gives them to AdamW, not Muon."""
        weights = [self.hf.get_input_embeddings().weight, self.hf.get_output_embeddings().weight]
        return list({id(w): w for w in weights}.values())

    def parameter_groups(self) -> dict[str, set[str]]:
        """Every parameter name -> its groups (:mod:`lmsleep.models.groups`), found by module, not by name:
        ``ssm`` holds the inserted blocks (their norm too: the block is new as a whole) and the wrapped
        hybrid's own linear / Mamba-2 mixers, ``attn`` its attention mixers, ``mlp`` its MLP / MoE blocks,
        ``norm`` the layers' pre-norms and the final norm (norms inside a mixer stay with the mixer), ``embed``
        and ``head`` the embedding and the LM head (a tied one is in both)."""
        own: dict[int, set[str]] = {}

        def add(module: nn.Module, *groups: str) -> None:
            for p in module.parameters():
                own.setdefault(id(p), set()).update(groups)

        add(self.hf.get_input_embeddings(), "embed")
        add(self.hf.get_output_embeddings(), "head")
        add(getattr(self.hf.model, self.family.final_norm), "norm")
        for block in self.blocks:
            if block.kind == INSERTED:
                add(block.module, "ssm")
                add(block.module.norm, "norm")
                continue
            for name, _ in block.module.named_parameters():
                part = name.split(".")[0]
                if part not in LAYER_PARTS:
                    raise ConfigError(
                        f"model=hf: {type(block.module).__name__}.{part} (decoder layer {block.index}) has no "
                        "parameter group; add its attribute name to LAYER_PARTS in lmsleep/models/hf/families.py"
                    )
            for part, module in block.module.named_children():
                group = LAYER_PARTS.get(part)
                if group is not None:
                    add(module, KIND_GROUPS[block.kind] if group == MIXER else group)
        return {name: {"all", *own.get(id(p), ())} for name, p in self.named_parameters()}

    def init_state(self, batch_size: int) -> ModelState:
        """Empty per-sequence state (no KV, zero fast weights) for a batch."""
        return ModelState([None] * len(self.blocks))

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.hf.get_input_embeddings()(input_ids)

    def output(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head: ``h [B, T, D] -> logits [B, T, V]``."""
        return self.hf.get_output_embeddings()(getattr(self.hf.model, self.family.final_norm)(h))

    def run_blocks(
        self,
        h: torch.Tensor,
        state: ModelState,
        indices: range,
        pos: int = 0,
        sliding: int | None = None,
        evict_every: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, ModelState]:
        """Run blocks ``indices`` over ``h [B, T, D]`` at window positions ``pos .. pos + T - 1``.

        Returns the output, the features after the last looped block (what sleep passes start from) and
        the state. ``evict_every = L``: ``h`` holds hard-evicted windows of L tokens end to end; they run
        one after the other here (KV and conv contexts restart at each), which equals the window loop.
        """
        T = h.shape[1]
        if evict_every is not None and T > evict_every:
            return self._hard_windows(h, state, indices, evict_every, sliding)
        layers = list(state.layers)
        by_kind: dict[str, dict[int, Any]] = {ATTN: {}, LINEAR: {}}
        for j in indices:
            if self.blocks[j].kind in by_kind:
                by_kind[self.blocks[j].kind][self.blocks[j].index] = layers[j]
        cache = WindowCache(by_kind[ATTN], by_kind[LINEAR], self._rotations)
        position_ids = torch.arange(pos, pos + T, device=h.device)[None]
        position_embeddings = None if self._rotary is None else self._rotary(h, position_ids)
        loop_out = h
        with torch_ops_on_cpu(self._op_modules, h.device.type == "cpu"):
            for j in indices:
                block = self.blocks[j]
                if block.kind == INSERTED:
                    h, layers[j] = block.module(h, layers[j])
                else:
                    kv = len(layers[j]) if block.kind == ATTN and layers[j] is not None else 0
                    mask = self._mask(block.index, T, kv, sliding, h) if block.kind == ATTN else None
                    kwargs = {"attention_mask": mask, "position_ids": position_ids, "past_key_values": cache}
                    if self._rotary is not None:
                        kwargs["position_embeddings"] = position_embeddings
                    with _copy_saved_tensors(block.kind == LINEAR and T == 1 and torch.is_grad_enabled()):
                        out = block.module(h, use_cache=True, **kwargs)
                    h = out[0] if isinstance(out, tuple) else out
                    if block.kind != STATELESS:
                        layers[j] = cache.state(block.index)
                if j == self.loop_range[-1]:
                    loop_out = h
        return h, loop_out, ModelState(layers, state.pos, state.window_index)

    def _hard_windows(
        self, h: torch.Tensor, state: ModelState, indices: range, L: int, sliding: int | None
    ) -> tuple[torch.Tensor, torch.Tensor, ModelState]:
        if not any(self.blocks[j].kind == LINEAR for j in indices):
            return self._folded_windows(h, state, indices, L, sliding)
        outs, loop_outs = [], []
        for w, start in enumerate(range(0, h.shape[1], L)):
            if w:  # a hard boundary: only the fast weights cross
                state = ModelState(
                    [None if s is None else s.evict(s, "hard", L, L) for s in state.layers],
                    0,
                    state.window_index,
                )
            y, loop_out, state = self.run_blocks(h[:, start : start + L], state, indices, 0, sliding)
            outs.append(y)
            loop_outs.append(loop_out)
        return torch.cat(outs, dim=1), torch.cat(loop_outs, dim=1), state

    def _folded_windows(
        self, h: torch.Tensor, state: ModelState, indices: range, L: int, sliding: int | None
    ) -> tuple[torch.Tensor, torch.Tensor, ModelState]:
        """Hard-evicted windows of ``h [B, T, D]`` as one batch ``[B * n, L, D]`` through attention and
        stateless layers (as :class:`lmsleep.layers.attention.Attention` does for HybridLM); inserted
        fast-weight blocks run over the sequence with ``evict_every = L``. The padding after the last real
        token is hidden by causality. Returns the state the last window leaves, as the window loop would."""
        B, T, D = h.shape
        n = -(-T // L)
        last = T - (n - 1) * L

        def fold(x: torch.Tensor) -> torch.Tensor:
            return F.pad(x, (0, 0, 0, n * L - T)).reshape(B * n, L, D)

        def unfold(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(B, n * L, D)[:, :T]

        layers = list(state.layers)
        cache = WindowCache({}, {}, self._rotations)  # every window starts with an empty KV
        position_ids = torch.arange(L, device=h.device)[None]
        position_embeddings = None if self._rotary is None else self._rotary(h, position_ids)
        x, loop_out = fold(h), h
        for j in indices:
            block = self.blocks[j]
            if block.kind == INSERTED:
                y, layers[j] = block.module(unfold(x), layers[j], evict_every=L)
                x = fold(y)
            else:
                mask = self._mask(block.index, L, 0, sliding, x) if block.kind == ATTN else None
                kwargs = {"attention_mask": mask, "position_ids": position_ids, "past_key_values": cache}
                if self._rotary is not None:
                    kwargs["position_embeddings"] = position_embeddings
                with torch_ops_on_cpu(self._op_modules, h.device.type == "cpu"):
                    out = block.module(x, use_cache=True, **kwargs)
                x = out[0] if isinstance(out, tuple) else out
                if block.kind == ATTN:  # the last window's KV, as the window loop leaves it
                    kv = cache.state(block.index)
                    k, v = (t.unflatten(0, (B, n))[:, -1, :, :last] for t in (kv.k, kv.v))
                    layers[j] = HFKV(k, v, kv.rotation)
            if j == self.loop_range[-1]:
                loop_out = unfold(x)
        return unfold(x), loop_out, ModelState(layers, state.pos, state.window_index)

    def _mask(self, index: int, T: int, kv: int, sliding: int | None, h: torch.Tensor) -> torch.Tensor | None:
        """``[1, 1, T, kv + T]`` mask of attention layer ``index`` (None: plain causal, which sdpa runs as
        ``is_causal``); sliding eviction and the model's own sliding window both narrow it."""
        widths = [w for w in (sliding, self._native_sliding.get(index)) if w is not None]
        width = min(widths) if widths else None
        allowed = Attention._mask(T, kv + T, width, h.device)
        if self.attn_implementation == "sdpa":
            return None if allowed is None else allowed[None, None]
        if allowed is None:  # eager adds the mask and applies no causality of its own
            allowed = torch.ones(T, kv + T, dtype=torch.bool, device=h.device).tril(kv)
        zero = torch.zeros((), dtype=h.dtype, device=h.device)
        return torch.where(allowed, zero, torch.finfo(h.dtype).min)[None, None]

    def forward(
        self,
        input_ids: torch.Tensor,
        sleep: SleepConfig | None = None,
        state: ModelState | None = None,
        hooks: SleepHooks = NO_HOOKS,
    ) -> tuple[torch.Tensor, ModelState]:
        """Wake logits ``[B, T, V]`` over ``input_ids [B, T]`` and the final state (Algorithm 1 per ``sleep``;
        default: one window of the whole sequence, no sleep)."""
        return run_windows(self, input_ids, sleep or SleepConfig(eviction="none"), state, hooks)
