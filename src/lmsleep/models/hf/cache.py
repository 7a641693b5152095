"""Per-sequence state of a transformers model as lmsleep objects, and the cache view its layers write to.

lmsleep's state is explicit and immutable (docs/design.md#contracts): a :class:`ModelState` holds one entry
per block, passed in and returned. transformers' decoder layers instead read and write a ``Cache`` object
passed to them. :class:`WindowCache` bridges the two for one call of some layers: it is built from the
lmsleep states, the layers read them through transformers' cache API, and every write *reassigns* a tensor
(the stock ``LinearAttentionLayer`` ``copy_``-s into fixed buffers, which breaks backpropagation across
windows: "modified by an inplace operation"). The states it hands back are new objects; the ones it was
built from are never modified, so a sleep pass can restart from the pre-window state.

- Attention layers: :class:`HFKV`, keys (already rotated) and values ``[B, H_kv, S, D]``, positions counted
  from the current window start. Under sliding eviction the last ``L - 1`` entries cross the boundary with
  their keys rotated by ``-L`` (RoPE composes, ``R(p - L) = R(-L) R(p)``), the model's own rotary
  embedding doing the rotation (:class:`KeyRotation`).
- Linear layers (Gated DeltaNet, Mamba-2): :class:`lmsleep.layers.fast_weight_mixer.FastWeights`, the same
  object lmsleep's own fast-weight layers use: ``S`` is the layer's recurrent state (``[B, H, K, V]`` for
  Gated DeltaNet, ``[B, H, P, N]`` for Mamba-2, fp32) and ``conv`` its convolution context ``[B, C, W]``,
  window-local like a KV cache (dropped under hard eviction, continued under sliding eviction).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import Cache

from lmsleep.layers.fast_weight_mixer import FastWeights
from lmsleep.models.state import register_layer_state


class KeyRotation:
    """Rotates cached keys ``[B, H, S, D]`` by ``-shift`` positions with a model's own rotary embedding.

    ``rotary`` is the model's ``rotary_emb`` (``cos, sin = rotary(x, position_ids)``), ``apply`` its
    module's ``apply_rotary_pos_emb`` (partial rotary and Qwen3.5's multimodal sections included). cos/sin
    are divided by the embedding's ``attention_scaling`` (YaRN), which the keys already carry once.
    """

    def __init__(self, rotary: nn.Module, apply: Any):
        self.rotary, self.apply = rotary, apply

    @classmethod
    def for_attention(cls, rotary: nn.Module, attention: nn.Module) -> KeyRotation:
        return cls(rotary, sys.modules[type(attention).__module__].apply_rotary_pos_emb)

    def __call__(self, k: torch.Tensor, shift: int) -> torch.Tensor:
        positions = torch.full((1, 1), -int(shift), device=k.device, dtype=torch.long)
        cos, sin = self.rotary(k, positions)  # [1, 1, d] (rotary dims may be fewer than D)
        scale = float(getattr(self.rotary, "attention_scaling", 1.0) or 1.0)
        rotated, _ = self.apply(k, k, cos / scale, sin / scale)
        return rotated


@dataclass
class HFKV:
    """KV cache of one transformers attention layer: ``k``, ``v`` ``[B, H_kv, S, D]``; ``rotation`` moves
    keys to a new window origin (None for models without positions, e.g. Nemotron-H).

    Implements the per-layer state protocol of :mod:`lmsleep.models.sleep` (as
    :class:`lmsleep.layers.attention.KVCache` does): :meth:`start_sleep_pass`, :meth:`evict`,
    :meth:`last_window_of_span`, :meth:`detach`, :meth:`to`, and ``len()`` = tokens held.
    """

    k: torch.Tensor
    v: torch.Tensor
    rotation: KeyRotation | None = None

    def __len__(self) -> int:
        return self.k.shape[2]

    def saved_fields(self) -> dict[str, torch.Tensor]:
        """What :meth:`ModelState.to_dict` saves: the tensors (the model re-attaches ``rotation`` on load,
        :meth:`lmsleep.models.hf.HFSleepLM.adopt_state`)."""
        return {"k": self.k, "v": self.v}

    def detach(self) -> HFKV:
        return HFKV(self.k.detach(), self.v.detach(), self.rotation)

    def to(self, *args: Any, **kwargs: Any) -> HFKV:
        return HFKV(self.k.to(*args, **kwargs), self.v.to(*args, **kwargs), self.rotation)

    def shifted(self, keep: int, shift: int) -> HFKV:
        """The last ``keep`` entries with positions moved by ``-shift`` (to a new window start)."""
        k, v = self.k[:, :, len(self) - keep :], self.v[:, :, len(self) - keep :]
        if keep and shift and self.rotation is not None:
            k = self.rotation(k, shift)
        return HFKV(k, v, self.rotation)

    def start_sleep_pass(self, pre: HFKV | None, state_mode: str) -> HFKV | None:
        """A sleep pass attends over the window again from the KV prefix it had before the window."""
        return pre

    def evict(self, woke: HFKV, eviction: str, window: int, woke_pos: int) -> HFKV | None:
        """Hard: nothing crosses. Sliding: the wake pass's last ``L - 1`` entries, moved to the next window."""
        if eviction == "sliding" and window > 1:
            return woke.shifted(keep=min(len(woke), window - 1), shift=woke_pos)
        return None

    def last_window_of_span(self, window: int, last: int, span: int) -> HFKV:
        """After one sliding pass over ``span`` tokens: the cache the window loop holds in the last window."""
        return self.shifted(keep=min(len(self), window - 1 + last), shift=span - last)


class WindowCache(Cache):
    """A transformers ``Cache`` over lmsleep states, for one call of some decoder layers.

    Args:
        kv: transformers layer index -> :class:`HFKV` or None (empty), one entry per attention layer called.
        linear: transformers layer index -> :class:`FastWeights` or None (zero state), per linear layer.
        rotations: transformers layer index -> :class:`KeyRotation` for attention layers with positions.

    The states passed in are read, never modified.

    After the call, :meth:`state` gives each layer's new state. Conv contexts are kept as transformers
    keeps them (the last ``W`` inputs, zero-padded on the left), but always by reassignment, and the layers
    are told they are "recording the past" so that single-token calls take the concatenating path instead
    of the in-place ``causal_conv1d_update``.
    """

    def __init__(
        self,
        kv: dict[int, HFKV | None],
        linear: dict[int, FastWeights | None],
        rotations: dict[int, KeyRotation] | None = None,
    ):
        # Cache.__init__ wants layer objects; this view keeps lmsleep states instead.
        self.layers, self.layer_class_to_replicate, self.offloading = [], None, False
        self._kv = dict(kv)
        self._S = {i: None if s is None else s.S for i, s in linear.items()}
        self._conv = {i: None if s is None else s.conv for i, s in linear.items()}
        self._rotations = rotations or {}

    def state(self, layer_idx: int) -> HFKV | FastWeights | None:
        """The state of layer ``layer_idx`` after the call (None if it holds nothing)."""
        if layer_idx in self._kv:
            return self._kv[layer_idx]
        S = self._S.get(layer_idx)
        return None if S is None else FastWeights(S, self._conv.get(layer_idx))

    # --- attention ------------------------------------------------------------------------------------
    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        prev = self._kv.get(layer_idx)
        if prev is not None and len(prev):
            key_states = torch.cat((prev.k.to(key_states.dtype), key_states), dim=-2)
            value_states = torch.cat((prev.v.to(value_states.dtype), value_states), dim=-2)
        self._kv[layer_idx] = HFKV(key_states, value_states, self._rotations.get(layer_idx))
        return key_states, value_states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        held = [len(kv) for kv in self._kv.values() if kv is not None]
        return max(held, default=0)

    # --- linear layers (conv context and recurrent state) ---------------------------------------------
    def has_previous_state(self, layer_idx: int | None = None, state_idx: int | None = None) -> bool:
        return self._S.get(layer_idx) is not None or self._conv.get(layer_idx) is not None

    def is_recording_past(self, layer_idx: int) -> bool:
        return True  # keeps single-token calls off the in-place conv update

    def get_conv_state(self, layer_idx: int, state_idx: int = 0) -> torch.Tensor | None:
        return self._conv.get(layer_idx)

    def get_recurrent_state(self, layer_idx: int, state_idx: int = 0) -> torch.Tensor | None:
        S = self._S.get(layer_idx)
        if S is None:
            return None
        # Mamba-2's single-token path writes the state it is handed in place (and never calls
        # update_recurrent_state): hand it a copy, which becomes this layer's new state.
        S = S.clone()
        self._S[layer_idx] = S
        return S

    def update_conv_state(
        self,
        conv_states: torch.Tensor,
        layer_idx: int,
        state_idx: int = 0,
        conv_kernel_size: int | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Append the new conv inputs ``[B, C, T]``; returns the context and them (what the conv reads)."""
        prev = self._conv.get(layer_idx)
        full = conv_states if prev is None else torch.cat((prev.to(conv_states.dtype), conv_states), dim=-1)
        width = conv_kernel_size or (prev.shape[-1] if prev is not None else conv_states.shape[-1])
        self._conv[layer_idx] = F.pad(full, (max(0, width - full.shape[-1]), 0))[..., -width:]
        return full

    def update_recurrent_state(
        self, recurrent_states: torch.Tensor, layer_idx: int, state_idx: int = 0, **kwargs: Any
    ) -> torch.Tensor:
        self._S[layer_idx] = recurrent_states
        return recurrent_states


register_layer_state("hf_kv", HFKV)
