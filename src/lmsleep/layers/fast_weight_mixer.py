"""The fast-weight ("SSM") sequence mixer: matrix-valued recurrent state written by the forward pass only.

Per head, the state ``S`` is a ``K x V`` matrix (docs/design.md#fast-weights-and-update-rules) updated token
by token by one of the rules of :data:`lmsleep.ops.update_rule.UPDATE_RULES`:

- ``gated_delta`` (Gated DeltaNet, what the paper ran, the default):
  ``S_t = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T`` with ``b_t = sigmoid(w_b.x_t)`` and
  ``log a_t = -exp(A_log) softplus(w_a.x_t + dt_bias)``; computed by :func:`lmsleep.ops.gated_delta_rule`.
- ``mamba2`` (Eq. 3 in Mamba-2's parametrisation):
  ``S_t = a_t S_{t-1} + b_t k_t v_t^T`` with ``b_t = dt_t = softplus(w.x_t + dt_bias)`` and
  ``a_t = exp(-dt_t exp(A_log))``; computed by :func:`lmsleep.ops.ssd` (x = v, B = k, C = q; its state is
  stored transposed, ``[B, H, V, K]``).

Both read ``o_t = scale * S_t^T q_t``. Around the rule: q/k/v projections, a short causal depthwise
convolution and SiLU on q, k, v, L2-normalised q and k, a per-head gated RMSNorm on the output and an output
projection.

With ``rule="gated_delta"`` and ``key_heads`` (fewer q/k heads than value heads, each q/k head serving
``heads / key_heads`` consecutive value heads), the layer is Gated DeltaNet as flash-linear-attention and
transformers' Qwen3.5 ``GatedDeltaNet`` compute it, epsilons included: q and k normalised as
``x / sqrt(|x|^2 + 1e-6)`` and the gated RMSNorm at eps 1e-6 (:func:`lmsleep.models.hf.gdn.from_qwen3_5`
copies such a layer's weights; tests/hf/test_gdn.py holds it to transformers' outputs and states).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmsleep.ops import short_conv
from lmsleep.ops.update_rule import UPDATE_RULES, update_rule

RULES = tuple(UPDATE_RULES)


@dataclass
class FastWeights:
    """Per-sequence state of a fast-weight layer.

    ``S``: the fast weights, ``[B, H, K, V]`` (gated_delta) or ``[B, H, V, K]`` (mamba2), fp32.
    ``conv``: the last ``conv_size - 1`` convolution inputs ``[B, C, conv_size - 1]`` (window-local context,
    like a tiny KV cache), or None at a window start under hard eviction.
    """

    S: torch.Tensor
    conv: torch.Tensor | None = None

    def detach(self) -> FastWeights:
        return FastWeights(self.S.detach(), None if self.conv is None else self.conv.detach())

    def to(self, *args, **kwargs) -> FastWeights:
        return FastWeights(
            self.S.to(*args, **kwargs), None if self.conv is None else self.conv.to(*args, **kwargs)
        )

    def with_local_from(self, other: FastWeights | None) -> FastWeights:
        """These fast weights with ``other``'s window-local context (conv tail)."""
        return FastWeights(self.S, None if other is None else other.conv)

    def without_local(self) -> FastWeights:
        """Only the fast weights: what crosses a hard-eviction boundary."""
        return FastWeights(self.S, None)

    def start_sleep_pass(self, pre: FastWeights | None, state_mode: str) -> FastWeights | None:
        """A sleep pass re-reads the window from its pre-window local context, with these fast weights
        (``accumulate``, the paper) or the pre-window ones (``restart``)."""
        return self.with_local_from(pre) if state_mode == "accumulate" else pre

    def evict(self, woke: FastWeights, eviction: str, window: int, woke_pos: int) -> FastWeights:
        """Only S crosses a hard boundary; under sliding eviction the conv context continues from the wake
        pass, as the tokens do."""
        return self.without_local() if eviction == "hard" else self.with_local_from(woke)

    def last_window_of_span(self, window: int, last: int, span: int) -> FastWeights:
        """A fast-weight layer carries its state through a one-span wake by itself: nothing to adjust."""
        return self


class GateTap(nn.Module):
    """An observation point for the gates ``(log a_t, b_t)`` (log decay, write) of a fast-weight layer, each
    ``[B, T, H]``: it returns its input unchanged, and forward hooks on it (``SleepMonitor``) see them.
    It has no parameters, so checkpoints are unaffected."""

    def forward(self, gates: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return gates


class FastWeightMixer(nn.Module):
    """``x [B, T, D] -> y [B, T, D]`` with fast weights carried in a :class:`FastWeights` state.

    Args:
        dim: model width D.
        rule: ``gated_delta`` or ``mamba2`` (a key of :data:`~lmsleep.ops.update_rule.UPDATE_RULES`).
        heads: fast-weight heads H.
        head_dim: key width K per head (the state is K x V per head).
        expand: value width V = ``expand * head_dim``.
        conv_size: causal depthwise convolution width (1 = none).
        backend: op backend (``auto``: GPU kernel on CUDA when installed, else chunked torch).
        chunk_size: chunk length of the chunked backend.
        recurrent_below: sequences shorter than this use the token-loop backend (cheaper for streaming).
        key_heads: q/k heads (default ``heads``); ``heads`` must be a multiple. transformers' Qwen3.5 layers
            have fewer key than value heads.
        qk_norm_eps: q/k L2 normalisation ``x / sqrt(|x|^2 + eps)``, or None for ``F.normalize``
            (``x / max(|x|, 1e-12)``). ``"auto"``: 1e-6 for ``gated_delta`` (flash-linear-attention's and
            transformers' value), None for ``mamba2``.
        norm_eps: eps of the gated output RMSNorm (None: the dtype's machine epsilon). ``"auto"``: 1e-6 for
            ``gated_delta`` (the standard Gated DeltaNet value), None for ``mamba2``. On heads whose output is
            small the choice is visible: machine epsilon against 1e-6 moved fp32 outputs by up to 29 %.
            Both default to ``"auto"``; None for both gives lmsleep's values before December 2026 (checkpoints trained
            with them keep their exact function only with ``model.net.ssm.qk_norm_eps=null
            model.net.ssm.norm_eps=null``).
    """

    def __init__(
        self,
        dim: int,
        rule: str = "gated_delta",
        heads: int = 4,
        head_dim: int | None = None,
        expand: int = 1,
        conv_size: int = 4,
        backend: str = "auto",
        chunk_size: int = 64,
        recurrent_below: int = 8,
        key_heads: int | None = None,
        qk_norm_eps: float | str | None = "auto",
        norm_eps: float | str | None = "auto",
    ):
        super().__init__()
        self.update_rule = update_rule(rule)
        head_dim = head_dim or dim // heads
        if head_dim < 1 or conv_size < 1 or expand < 1:
            raise ValueError(
                f"ssm head_dim={head_dim}, expand={expand} and conv_size={conv_size} must be >= 1"
            )
        key_heads = key_heads or heads
        if key_heads < 1 or heads % key_heads:
            raise ValueError(f"ssm heads={heads} must be a multiple of key_heads={key_heads}")
        standard = self.update_rule.standard_eps
        self.qk_norm_eps = standard if qk_norm_eps == "auto" else qk_norm_eps
        norm_eps = standard if norm_eps == "auto" else norm_eps
        self.rule, self.heads, self.key_dim, self.value_dim = rule, heads, head_dim, expand * head_dim
        self.key_heads = key_heads
        self.backend, self.chunk_size, self.recurrent_below = backend, chunk_size, recurrent_below
        qk, v = key_heads * head_dim, heads * self.value_dim
        self.qkv = nn.Linear(dim, 2 * qk + v, bias=False)
        self.conv_size = conv_size
        self.conv = (
            nn.Conv1d(2 * qk + v, 2 * qk + v, conv_size, groups=2 * qk + v, bias=True)
            if conv_size > 1
            else None
        )
        # Gate projections: b_t (write strength) and a_t (decay) per head, as the rule defines them.
        self.gate_a = nn.Linear(dim, heads, bias=False)
        self.gate_b = nn.Linear(dim, heads, bias=False) if self.update_rule.write_gate else None
        # Mamba-2's init: A in [1, 16], dt = softplus(dt_bias) log-uniform in [1e-3, 1e-1].
        self.A_log = nn.Parameter(torch.log(torch.empty(heads).uniform_(1, 16)))
        dt = torch.exp(torch.empty(heads).uniform_(math.log(1e-3), math.log(1e-1)))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.out_gate = nn.Linear(dim, v, bias=False)
        self.out_norm = nn.RMSNorm(self.value_dim, eps=norm_eps)
        self.out = nn.Linear(v, dim, bias=False)
        self.gate_tap = GateTap()

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token ``(log a_t, b_t)``, each ``[B, T, H]``: decay (log, <= 0) and write strength."""
        return self.gates_from_projections(self.gate_a(x), None if self.gate_b is None else self.gate_b(x))

    def gates_from_projections(
        self, a_proj: torch.Tensor, b_proj: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log a_t, b_t)`` from the gate projections ``w_a.x_t`` and ``w_b.x_t`` (None for mamba2)."""
        acc = torch.promote_types(a_proj.dtype, torch.float32)  # gates in fp32 at least, fp64 stays fp64
        dt = F.softplus(a_proj.to(acc) + self.dt_bias)
        log_a = -torch.exp(self.A_log.to(acc)) * dt
        b = torch.sigmoid(b_proj.to(acc)) if self.update_rule.write_gate else dt
        return log_a, b

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(qkv, w_a.x, w_b.x or None, out_gate)`` of ``x [B, T, D]`` in one matmul.

        The weights stay separate parameters (Muon orthogonalises each matrix on its own); concatenating
        them per call reads ``x`` once and replaces four small matmuls (and their backward) by one.
        """
        linears = [self.qkv, self.gate_a, self.gate_b, self.out_gate]
        present = [lin for lin in linears if lin is not None]
        parts = F.linear(x, torch.cat([lin.weight for lin in present])).split(
            [lin.out_features for lin in present], dim=-1
        )
        it = iter(parts)
        return tuple(None if lin is None else next(it) for lin in linears)

    def _conv(
        self, u: torch.Tensor, tail: torch.Tensor | None, evict_every: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Causal depthwise conv over time of ``u [B, T, C]`` continuing from ``tail [B, C, conv_size-1]``
        (:func:`lmsleep.ops.short_conv`). With ``evict_every = L`` the time axis holds windows of L tokens
        laid end to end and the context restarts (zeros) at every window start after the first, as hard
        eviction does."""
        if self.conv is None:
            return u, None
        weight, bias = self.conv.weight[:, 0], self.conv.bias
        B, T, C = u.shape
        L = evict_every
        if L is None or T <= L:
            return short_conv(u, weight, bias, tail, output_final_state=True)
        n, width = -(-T // L), self.conv_size - 1
        windows = F.pad(u, (0, 0, 0, n * L - T)).view(B * n, L, C)
        first = u.new_zeros(B, 1, C, width) if tail is None else tail.to(u.dtype)[:, None]
        starts = torch.cat((first, u.new_zeros(B, n - 1, C, width)), dim=1).view(B * n, C, width)
        y, _ = short_conv(windows, weight, bias, starts)
        last = T - (n - 1) * L  # the last window's context: its final `width` inputs, zeros before it
        new_tail = torch.cat((u.new_zeros(B, width, C), u[:, T - last :]), dim=1)[:, -width:]
        return y.view(B, n * L, C)[:, :T], new_tail.transpose(1, 2)

    def _l2norm(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., K]`` over its last axis: ``x / sqrt(|x|^2 + eps)``, or ``F.normalize`` without eps."""
        if self.qk_norm_eps is None:
            return F.normalize(x, dim=-1)
        return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + self.qk_norm_eps)

    def initial_state(self, batch_size: int, device: torch.device | None = None) -> FastWeights:
        shape = self.update_rule.state_shape(self.key_dim, self.value_dim)
        return FastWeights(torch.zeros(batch_size, self.heads, *shape, device=device))

    def forward(
        self,
        x: torch.Tensor,
        state: FastWeights | None = None,
        evict_every: int | None = None,
        **_: object,
    ) -> tuple[torch.Tensor, FastWeights]:
        """``x [B, T, D]`` from ``state`` -> ``(y [B, T, D], state after the last token)``.

        ``evict_every = L``: ``x`` holds windows of L tokens end to end under hard eviction, so the
        convolution's context restarts at each window start; the fast weights run through (only they cross
        a hard boundary), so this equals the windows one by one.
        """
        B, T, _ = x.shape
        H, K, V = self.heads, self.key_dim, self.value_dim
        qkv, a_proj, b_proj, out_gate = self._project(x)
        u, conv_tail = self._conv(qkv, None if state is None else state.conv, evict_every)
        Hk = self.key_heads
        qk, v = F.silu(u).split((2 * Hk * K, H * V), dim=-1)
        q, k = self._l2norm(qk.view(B, T, 2 * Hk, K)).split(Hk, dim=2)  # both in one call
        if Hk != H:  # each q/k head serves H / Hk consecutive value heads
            q, k = q.repeat_interleave(H // Hk, dim=2), k.repeat_interleave(H // Hk, dim=2)
        v = v.view(B, T, H, V)
        log_a, b = self.gates_from_projections(a_proj, b_proj)
        self.gate_tap((log_a, b))  # identity; forward hooks on it observe the gates
        S0 = None if state is None else state.S
        backend = (
            "recurrent"
            if (T < self.recurrent_below and self.backend == "auto" and not x.is_cuda)
            else self.backend
        )
        # Chunks no longer than a window keep the chunk boundaries on the window boundaries.
        chunk = self.chunk_size if evict_every is None else min(self.chunk_size, evict_every)
        o, S = self.update_rule.run(
            q,
            k,
            v,
            log_a,
            b,
            -torch.exp(self.A_log.to(b.dtype)),
            scale=K**-0.5,
            initial_state=S0,
            backend=backend,
            chunk_size=chunk,
        )
        o = self.out_norm(o.to(x.dtype)) * F.silu(out_gate).view(B, T, H, V)
        return self.out(o.reshape(B, T, H * V)), FastWeights(S, conv_tail)
