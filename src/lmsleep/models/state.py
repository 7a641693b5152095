"""Per-sequence state of a model: one entry per block, passed in and out, never a module buffer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lmsleep.layers.attention import KVCache
from lmsleep.layers.fast_weight_mixer import FastWeights

_LAYER_TYPES = {"kv": KVCache, "fast_weights": FastWeights}


def register_layer_state(name: str, cls: type) -> None:
    """Make another per-layer state type savable by :meth:`ModelState.to_dict` (a wrapped model's KV).
    Its ``saved_fields()``, if it defines one, says what to save (default: all its attributes)."""
    _LAYER_TYPES[name] = cls


@dataclass
class ModelState:
    """Per-block state: a :class:`KVCache` for attention, fast weights for fast-weight mixers, or None (empty).

    ``pos`` counts the tokens of the current window already consumed; ``window_index`` counts finished
    windows. Methods return new objects and never modify tensors in place, so autograd graphs stay valid.
    """

    layers: list[Any]
    pos: int = 0
    window_index: int = 0

    def _map(self, fn) -> ModelState:
        return ModelState([None if s is None else fn(s) for s in self.layers], self.pos, self.window_index)

    def detach(self) -> ModelState:
        return self._map(lambda s: s.detach())

    def to(self, *args: Any, **kwargs: Any) -> ModelState:
        return self._map(lambda s: s.to(*args, **kwargs))

    def clear_kv(self) -> ModelState:
        """Evict every attention layer's KV cache (hard eviction)."""
        layers = [None if _holds_kv(s) else s for s in self.layers]
        return ModelState(layers, self.pos, self.window_index)

    def kv_length(self) -> int:
        """Longest KV cache over the attention layers (tokens held in memory)."""
        return max((len(s) for s in self.layers if _holds_kv(s)), default=0)

    def replace(self, index: int, layer_state: Any) -> ModelState:
        layers = list(self.layers)
        layers[index] = layer_state
        return ModelState(layers, self.pos, self.window_index)

    def tensors(self) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        for s in self.layers:
            if s is not None:
                out += [t for t in vars(s).values() if isinstance(t, torch.Tensor)]
        return out

    def to_dict(self) -> dict[str, Any]:
        """A plain, ``torch.save``-able form (tensors moved to CPU)."""
        names = {cls: name for name, cls in _LAYER_TYPES.items()}
        layers = [
            None if s is None else {"type": names[type(s)], **{k: _cpu(v) for k, v in _fields(s).items()}}
            for s in self.layers
        ]
        return {"layers": layers, "pos": self.pos, "window_index": self.window_index}

    @classmethod
    def from_dict(cls, data: dict[str, Any], device: torch.device | str | None = None) -> ModelState:
        layers = []
        for entry in data["layers"]:
            if entry is None:
                layers.append(None)
                continue
            fields = {
                k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                for k, v in entry.items()
                if k != "type"
            }
            layers.append(_LAYER_TYPES[entry["type"]](**fields))
        return cls(layers, int(data["pos"]), int(data["window_index"]))


def _fields(layer_state: Any) -> dict[str, Any]:
    saved = getattr(layer_state, "saved_fields", None)
    return saved() if saved is not None else vars(layer_state)


def _holds_kv(layer_state: Any) -> bool:
    """Attention states (:class:`KVCache`, a wrapped model's KV) have a length: the tokens they hold."""
    return layer_state is not None and hasattr(layer_state, "__len__")


def _cpu(value: Any) -> Any:
    return value.detach().cpu() if isinstance(value, torch.Tensor) else value
