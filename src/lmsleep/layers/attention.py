"""Causal softmax attention with an explicit, window-bounded KV cache."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmsleep.layers.rotary import Rotary, inv_frequencies, rotate


@dataclass
class KVCache:
    """Keys (already rotated, positions counted from the current window start) and values of one layer.

    ``k``, ``v``: ``[B, H, T_cache, D_head]``; ``rope_base``: the rotary base the keys were rotated with, so
    the cache can move them to a new window origin by itself. Like every per-layer state it owns its
    lifecycle in a sleeping model: where a sleep pass starts (:meth:`start_sleep_pass`), what crosses a
    window boundary (:meth:`evict`) and the last window of a one-span wake (:meth:`last_window_of_span`).
    """

    k: torch.Tensor
    v: torch.Tensor
    rope_base: float = 10_000.0

    def __len__(self) -> int:
        return self.k.shape[2]

    def detach(self) -> KVCache:
        return KVCache(self.k.detach(), self.v.detach(), self.rope_base)

    def to(self, *args, **kwargs) -> KVCache:
        return KVCache(self.k.to(*args, **kwargs), self.v.to(*args, **kwargs), self.rope_base)

    def shifted(self, keep: int, shift: int) -> KVCache:
        """The last ``keep`` entries with their positions moved by ``-shift`` (a new window start).

        Rotations compose, so rotating the stored keys by ``-shift`` re-expresses them relative to the new
        window start without recomputing them from features.
        """
        k, v = self.k[:, :, len(self) - keep :], self.v[:, :, len(self) - keep :]
        if keep and shift:
            # float32 frequencies in the keys' dtype: what the layer's rotary buffer holds after .to(dtype)
            inv_freq = inv_frequencies(k.shape[-1], self.rope_base).to(
                k.device, torch.promote_types(k.dtype, torch.float32)
            )
            k = rotate(k, torch.full((keep,), -shift, device=k.device), inv_freq)
        return KVCache(k, v, self.rope_base)

    def start_sleep_pass(self, pre: KVCache | None, state_mode: str) -> KVCache | None:
        """A sleep pass attends over the window again from the KV prefix it had before the window."""
        return pre

    def evict(self, woke: KVCache, eviction: str, window: int, woke_pos: int) -> KVCache | None:
        """Hard: nothing crosses. Sliding: the wake pass's last ``L - 1`` entries, moved to the next window."""
        if eviction == "sliding" and window > 1:
            return woke.shifted(keep=min(len(woke), window - 1), shift=woke_pos)
        return None

    def last_window_of_span(self, window: int, last: int, span: int) -> KVCache:
        """After one sliding-window pass over ``span`` tokens: the cache the window loop holds in the last
        window (its ``last`` tokens and the ``L - 1`` before them, positions from its start)."""
        return self.shifted(keep=min(len(self), window - 1 + last), shift=span - last)


class Attention(nn.Module):
    """Multi-head causal attention (``F.scaled_dot_product_attention``) with rotary positions.

    ``forward(x, cache, pos)`` attends from the new tokens ``x [B, T, D]`` at window positions
    ``pos .. pos + T - 1`` to the cached keys and to themselves, and returns the output and the cache grown by
    the new keys. ``sliding`` limits each query to the ``sliding`` most recent keys (itself included).
    """

    def __init__(self, dim: int, heads: int, rope_base: float = 10_000.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention: dim={dim} must be divisible by heads={heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.rotary = Rotary(self.head_dim, rope_base)

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        pos: int = 0,
        sliding: int | None = None,
        evict_every: int | None = None,
    ) -> tuple[torch.Tensor, KVCache]:
        """``evict_every = L``: ``x`` holds windows of L tokens end to end under hard eviction (``pos`` 0, no
        cache): each window attends only within itself at positions from its own start, computed as one
        batch of windows. The returned cache is the last window's, as the windows one by one would leave it.
        """
        B, T, _ = x.shape
        if evict_every is not None and T > evict_every:
            if pos or (cache is not None and len(cache)):
                raise ValueError("attention over hard-evicted windows must start at an empty window")
            L = evict_every
            n = -(-T // L)
            # Padding sits after the last real token of the last window, so causality hides it.
            folded = F.pad(x, (0, 0, 0, n * L - T)).view(B * n, L, -1)
            y, kv = self.forward(folded, None, 0, sliding)
            last = T - (n - 1) * L
            k, v = (t.unflatten(0, (B, n))[:, -1, :, :last] for t in (kv.k, kv.v))
            return y.view(B, n * L, -1)[:, :T], KVCache(k, v, self.rotary.base)
        qkv = self.qkv(x).view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        positions = torch.arange(pos, pos + T, device=x.device)
        (q, k), v = self.rotary(qkv[:2], positions).unbind(0), qkv[2]  # q and k rotated in one call
        if cache is not None and len(cache):
            k, v = torch.cat((cache.k, k), dim=2), torch.cat((cache.v, v), dim=2)
        mask = self._mask(T, k.shape[2], sliding, x.device)
        # Without a mask the queries are the keys (causal) or a lone query sees every key. Decided by a branch:
        # under torch.compile with dynamic lengths a comparison of lengths is symbolic, and SDPA refuses a
        # symbolic is_causal (a graph break); a branch makes it a plain bool (one guard on the lengths).
        causal = False
        if mask is None and T == k.shape[2]:
            causal = True
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return self.out(y.transpose(1, 2).reshape(B, T, -1)), KVCache(k, v, self.rotary.base)

    @staticmethod
    def _mask(T: int, S: int, sliding: int | None, device: torch.device) -> torch.Tensor | None:
        """Boolean ``[T, S]`` mask (True = may attend), or None where plain causal attention is exact."""
        if S == T and (sliding is None or sliding >= T):
            return None
        if T == 1 and (sliding is None or sliding >= S):
            return None
        qi = torch.arange(S - T, S, device=device)[:, None]
        kj = torch.arange(S, device=device)[None, :]
        allowed = kj <= qi
        if sliding is not None:
            allowed &= kj > qi - sliding
        return allowed

    def shift_cache(self, cache: KVCache, keep: int, shift: int) -> KVCache:
        """Keep the last ``keep`` cached entries and move their positions by ``-shift`` (a new window start)."""
        return cache.shifted(keep, shift)
