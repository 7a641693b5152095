"""FLOPs of a training step, counted analytically from the model and sleep settings.

Counts the matrix products the torch path executes (what ``torch.utils.flop_counter`` counts: ``mm``,
``bmm``, ``baddbmm``, attention's two products on the dense ``T x S`` grid), 2 FLOPs per multiply-add;
elementwise work (norms, gates, activations) is left out, as is customary. The fast-weight ops are counted
as the chunked algorithm runs them (UT transform, chunk states, intra-chunk products), so the figure is the
work this implementation does, not the recurrence's minimum. Backward is taken as twice the forward
(``training = 3 x forward``), the usual convention: it is within a few percent of the counted backward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmsleep.layers.attention import Attention
from lmsleep.layers.fast_weight_mixer import FastWeightMixer
from lmsleep.models.sleep import SleepConfig, wakes_in_one_span
from lmsleep.models.state import ModelState
from lmsleep.ops.update_rule import matmul_flops as _mm

COMPONENTS = ("projections", "attention", "fast_weight_op", "mlp", "head")


@dataclass
class FlopCount:
    """Forward FLOPs of one sequence by component; ``tokens`` is its length."""

    tokens: int
    forward: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COMPONENTS, 0.0))

    @property
    def forward_total(self) -> float:
        return sum(self.forward.values())

    @property
    def training_total(self) -> float:
        """Forward + backward (backward = 2 x forward)."""
        return 3 * self.forward_total

    @property
    def training_per_token(self) -> float:
        return self.training_total / self.tokens

    def add(self, component: str, flops: float) -> None:
        self.forward[component] += flops


class _Counter:
    def __init__(self, model, cfg: SleepConfig, count: FlopCount):
        self.model, self.cfg, self.count = model, cfg, count

    def block(self, i: int, T: int, keys: int | None = None, evict_every: int | None = None) -> None:
        """Block ``i`` over T tokens; attention queries see ``keys`` keys each (dense grid)."""
        block = self.model.blocks[i]
        D = self.model.dim
        mixer = block.mixer
        if isinstance(mixer, Attention):
            if evict_every is not None and T > evict_every:  # windows folded into a batch, the last padded
                n, L = -(-T // evict_every), evict_every
                self.count.add("projections", _mm(n * L, D, 3 * D) + _mm(n * L, D, D))
                self.count.add("attention", n * 2 * _mm(L, mixer.head_dim, L) * mixer.heads)
            else:
                S = T if keys is None else keys
                self.count.add("projections", _mm(T, D, 3 * D) + _mm(T, D, D))
                self.count.add("attention", 2 * _mm(T, mixer.head_dim, S) * mixer.heads)
        elif isinstance(mixer, FastWeightMixer):
            H, K, V = mixer.heads, mixer.key_dim, mixer.value_dim
            width = 2 * H * K + H * V + H * (2 if mixer.gate_b is not None else 1) + H * V
            self.count.add("projections", _mm(T, D, width) + _mm(T, H * V, D))
            recurrent = T < mixer.recurrent_below and mixer.backend == "auto"
            chunk = mixer.chunk_size if evict_every is None else min(mixer.chunk_size, evict_every)
            self.count.add("fast_weight_op", H * mixer.update_rule.flops(T, K, V, chunk, recurrent))
        hidden = block.mlp.down.in_features
        self.count.add("mlp", _mm(T, D, 2 * hidden) + _mm(T, hidden, D))

    def head(self, T: int) -> None:
        self.count.add("head", _mm(T, self.model.dim, self.model.head.out_features))


def forward_flops(model, cfg: SleepConfig, seq_len: int) -> FlopCount:
    """Forward FLOPs of :func:`lmsleep.models.sleep.run_windows` over one sequence of ``seq_len`` tokens
    (a :class:`~lmsleep.models.HybridLM` on CPU: the torch backends), following the same schedule: the
    one-span path without sleep, else each window's wake pass, its N - 1 sleep passes over the looped
    blocks and the blocks after the loop once more, with the KV each attention query sees under the
    eviction."""
    count = FlopCount(seq_len)
    c = _Counter(model, cfg, count)
    depth = len(model.blocks)
    T = seq_len
    L = T if cfg.eviction == "none" else cfg.window
    if T > L and wakes_in_one_span(model, cfg, ModelState([None] * depth)):
        hard = cfg.eviction == "hard"
        for i in range(depth):
            c.block(i, T, keys=T, evict_every=L if hard else None)
        c.head(T)
        return count
    sleeps = cfg.passes > 1 and model.has_fast_weights
    prefix = 0  # KV entries kept from the previous window (sliding eviction)
    for start in range(0, T, L):
        length = min(L, T - start)
        for i in range(depth):
            c.block(i, length, keys=prefix + length)
        c.head(length)
        if start + L < T and sleeps:
            for _ in range(cfg.passes - 1):
                for i in model.loop_range:
                    c.block(i, length, keys=prefix + length)
            for i in range(model.loop_range[-1] + 1, depth):  # Eq. 6's coda, once on the last pass
                c.block(i, length, keys=prefix + length)
        if cfg.eviction == "sliding":
            prefix = min(prefix + length, L - 1)
    return count
