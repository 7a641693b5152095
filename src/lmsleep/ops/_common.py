"""Small helpers shared by the op modules: input checks, compute dtype, chunk padding, decay masks."""

from __future__ import annotations

import torch


def check_ndim(op: str, name: str, t: torch.Tensor, layout: str) -> None:
    """Raise a ValueError naming the expected layout (e.g. ``"[B, T, H, K]"``) when ``t`` has the wrong rank."""
    ndim = len(layout.strip("[]").split(","))
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor of shape {layout}, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{op}: {name} must have shape {layout} ({ndim} dims), got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")


def check_shape(op: str, name: str, t: torch.Tensor, expected: tuple[int, ...], layout: str) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{op}: {name} must have shape {layout} = {tuple(expected)}, got {tuple(t.shape)}")


def check_chunk_size(op: str, chunk_size: int) -> None:
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"{op}: chunk_size must be a positive int, got {chunk_size!r}")


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64 (exact reference tests), else float32 (bf16/fp16 accumulate in fp32)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def pad_time(t: torch.Tensor, pad: int, dim: int) -> torch.Tensor:
    """Zero-pad ``t`` at the end of dimension ``dim`` by ``pad`` steps."""
    if pad == 0:
        return t
    shape = list(t.shape)
    shape[dim] = pad
    return torch.cat([t, t.new_zeros(shape)], dim=dim)


def causal_decay(gam: torch.Tensor) -> torch.Tensor:
    """``D[..., i, j] = exp(gam_i - gam_j)`` for ``j <= i``, else 0, from in-chunk cumulative log decays.

    The upper triangle is filled with -inf *before* exp: ``gam_i - gam_j`` is positive there and can
    overflow to inf, and ``inf * 0`` would poison both the forward and the gradient with NaN.
    """
    c = gam.shape[-1]
    diff = gam.unsqueeze(-1) - gam.unsqueeze(-2)
    upper = torch.ones(c, c, dtype=torch.bool, device=gam.device).triu(1)
    return diff.masked_fill(upper, float("-inf")).exp()


_BASE = 16


def unit_lower_inverse(A: torch.Tensor) -> torch.Tensor:
    """``(I + tril(A, -1))^-1`` for a batch of ``c x c`` matrices, by matmuls only (differentiable).

    Only the strict lower triangle of ``A`` is read. Why not ``torch.linalg.solve_triangular``: on CPU it
    runs one LAPACK call per batch matrix, which is slower than batched matmuls and collapses (100x) when
    other processes compete for the cores. Blocks of <= 16 use the nilpotent identity
    ``(I - X)^-1 = (I + X)(I + X^2)(I + X^4)(I + X^8)``; larger sizes recurse on the 2 x 2 block form
    ``[[A, 0], [B, D]]^-1 = [[A^-1, 0], [-D^-1 B A^-1, D^-1]]``, with both diagonal halves in one batch.
    """
    c = A.shape[-1]
    L = A.tril(-1)
    if c <= _BASE:
        return _nilpotent_inverse(L)
    size = _BASE
    while size < c:
        size *= 2
    if size != c:  # pad with an identity block: the top-left block of the inverse is unchanged
        L = torch.nn.functional.pad(L, (0, size - c, 0, size - c))
    return _block_inverse(L)[..., :c, :c]


def _nilpotent_inverse(L: torch.Tensor) -> torch.Tensor:
    c = L.shape[-1]
    X = -L
    inv = X + torch.eye(c, dtype=L.dtype, device=L.device)
    covered = 1  # inv holds the Neumann series up to X^covered; X^c = 0
    while covered < c - 1:
        X = X @ X
        inv = inv + inv @ X
        covered = 2 * covered + 1
    return inv


def _block_inverse(L: torch.Tensor) -> torch.Tensor:
    """Inverse of ``I + L`` for strictly lower ``L`` whose size is 16 times a power of two."""
    c = L.shape[-1]
    if c <= _BASE:
        return _nilpotent_inverse(L)
    h = c // 2
    both = _block_inverse(torch.stack([L[..., :h, :h], L[..., h:, h:]]))
    Ai, Di = both[0], both[1]
    lower = -(Di @ (L[..., h:, :h] @ Ai))
    top = torch.cat([Ai, torch.zeros_like(Ai)], dim=-1)
    return torch.cat([top, torch.cat([lower, Di], dim=-1)], dim=-2)
