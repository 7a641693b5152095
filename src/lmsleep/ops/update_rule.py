"""The fast-weight update rules, one table: each rule's op, gates, state layout and cost.

A rule is chosen by name (``model.net.ssm.rule``) and looked up here, so the layer
(:class:`lmsleep.layers.FastWeightMixer`), the FLOP count (:mod:`lmsleep.models.flops`) and the kernel
backend check (:func:`lmsleep.utils.config.check_kernel_backend`) never branch on the name. Adding a rule is
one entry (docs/extending.md#an-update-rule).

Every rule is given the same per-token inputs by the layer, all ``[B, T, H, .]``: ``q, k`` ``[.., K]``
(L2-normalised), ``v`` ``[.., V]``, the log decay ``log a_t`` and the write strength ``b_t`` ``[B, T, H]``,
and the per-head ``A = -exp(A_log)`` ``[H]``; it returns ``(o [B, T, H, V], S)`` with ``o_t = scale * S_t^T
q_t`` (docs/design.md#fast-weights-and-update-rules).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .gated_delta_rule import gated_delta_rule
from .ssd import ssd


def matmul_flops(m: int, k: int, n: int) -> float:
    """FLOPs of an ``m x k`` by ``k x n`` product (2 per multiply-add)."""
    return 2.0 * m * k * n


def unit_lower_inverse_flops(c: int) -> float:
    """Products of :func:`lmsleep.ops._common.unit_lower_inverse` for one ``c x c`` matrix: repeated
    squaring up to 16, block inversion (padded to a power of two) above."""
    if c <= 16:
        flops, covered = 0.0, 1
        while covered < c - 1:
            flops += 2 * matmul_flops(c, c, c)
            covered = 2 * covered + 1
        return flops
    size = 16
    while size < c:
        size *= 2
    return _block_inverse_flops(size)


def _block_inverse_flops(c: int) -> float:
    if c <= 16:
        return unit_lower_inverse_flops(c)
    h = c // 2
    return 2 * _block_inverse_flops(h) + 2 * matmul_flops(h, h, h)


def _gated_delta_chunk_flops(C: int, K: int, V: int) -> float:
    return (
        matmul_flops(2 * C, K, C)  # beta K K^T and Q K^T in one product
        + unit_lower_inverse_flops(C)
        + matmul_flops(C, C, V + K)  # U and W
        + 2 * matmul_flops(C, K, V)  # V' = U - W S, and the next state
        + matmul_flops(C, K, V)  # Q S
        + matmul_flops(C, C, V)  # P V'
    )


def _ssd_chunk_flops(C: int, K: int, V: int) -> float:
    return matmul_flops(C, K, C) + matmul_flops(C, C, V) + matmul_flops(V, C, K) + matmul_flops(C, K, V)


def _run_gated_delta(q, k, v, log_a, b, A, *, scale, initial_state, backend, chunk_size):
    return gated_delta_rule(
        q,
        k,
        v,
        log_a,
        b,
        scale=scale,
        initial_state=initial_state,
        output_final_state=True,
        backend=backend,
        chunk_size=chunk_size,
    )


def _run_ssd(q, k, v, log_a, b, A, *, scale, initial_state, backend, chunk_size):
    # ssd's dt (= b_t) multiplies both the decay exponent and the write: dt * A = log a_t.
    return ssd(
        v,
        b,
        A.to(b.dtype),
        k,
        q * scale,
        initial_state=initial_state,
        output_final_state=True,
        backend=backend,
        chunk_size=chunk_size,
    )


@dataclass(frozen=True)
class UpdateRule:
    """One fast-weight update rule.

    Attributes:
        name: the ``model.net.ssm.rule`` value.
        op: the name of the op in :mod:`lmsleep.ops` that runs it (kernel backends are chosen per op,
            :data:`lmsleep.ops.backend.KERNELS`).
        write_gate: ``b_t`` comes from its own projection (``sigmoid(w_b . x_t)``); otherwise ``b_t = dt_t``,
            the step size of the decay.
        state_transposed: the op keeps ``S`` as ``[B, H, V, K]`` (mamba-ssm's layout) instead of
            ``[B, H, K, V]``.
        standard_eps: the epsilon of the q/k normalisation and of the output RMSNorm in the rule's reference
            implementation (``"auto"`` selects it), or None where there is none to follow.
        run: ``(q, k, v, log_a, b, A, *, scale, initial_state, backend, chunk_size) -> (o, S)``.
        token_products: ``K x V`` products per token and head on the token loop (read, write, output).
        chunk_flops: ``(C, K, V) -> FLOPs`` of one chunk of ``C`` tokens and one head on the chunked path.
    """

    name: str
    op: str
    write_gate: bool
    state_transposed: bool
    standard_eps: float | None
    run: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    token_products: int
    chunk_flops: Callable[[int, int, int], float]

    def state_shape(self, K: int, V: int) -> tuple[int, int]:
        """The per-head shape of ``S`` as the op stores it."""
        return (V, K) if self.state_transposed else (K, V)

    def flops(self, T: int, K: int, V: int, chunk: int, recurrent: bool) -> float:
        """FLOPs of one head over ``T`` tokens, on the token loop or in chunks of ``chunk``."""
        if recurrent:
            return T * self.token_products * matmul_flops(1, K, V)
        C = min(chunk, T)
        return -(-T // C) * self.chunk_flops(C, K, V)


UPDATE_RULES: dict[str, UpdateRule] = {
    rule.name: rule
    for rule in (
        UpdateRule(
            name="gated_delta",
            op="gated_delta_rule",
            write_gate=True,
            state_transposed=False,
            standard_eps=1e-6,  # flash-linear-attention's and transformers' value
            run=_run_gated_delta,
            token_products=3,
            chunk_flops=_gated_delta_chunk_flops,
        ),
        UpdateRule(
            name="mamba2",
            op="ssd",
            write_gate=False,
            state_transposed=True,
            standard_eps=None,
            run=_run_ssd,
            token_products=1,  # the write is an outer product, not a matrix product
            chunk_flops=_ssd_chunk_flops,
        ),
    )
}


def update_rule(name: str) -> UpdateRule:
    """The rule called ``name``, or a ValueError that lists the rules there are."""
    try:
        return UPDATE_RULES[name]
    except KeyError:
        raise ValueError(
            f"fast-weight rule {name!r} is not one of {tuple(UPDATE_RULES)} (model.net.ssm.rule)"
        ) from None
