"""``torch.optim.Muon`` with its Newton-Schulz orthogonalisation in a chosen dtype (docs/design.md#training).

torch's Muon orthogonalises every update in bfloat16: the fast choice on GPUs and on CPUs with bf16 matrix
units (AMX). A CPU without them runs those many small bf16 matmuls far slower than fp32: on the 2-core
development machine (no AMX) Muon's bf16 iterations took about 110 ms of a 600 ms Rule 110 training step at
d = 64, against about 10 ms in fp32 (README, "Figures measured on a 2-core CPU"). ``ns_dtype="auto"`` keeps torch's own step
(bf16) for CUDA parameters and orthogonalises in fp32 elsewhere. fp32 is the more precise of the two: the
orthogonalised update differs from the bf16 one by bf16 rounding (about 1e-2 relative per entry).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

NS_DTYPES = {"auto": None, "bfloat16": torch.bfloat16, "float32": torch.float32}


def orthogonalize(
    update: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float, dtype: torch.dtype
) -> torch.Tensor:
    """Muon's quintic Newton-Schulz iteration of a 2-D ``update [A, B]`` in ``dtype`` (torch's arithmetic:
    normalise by the Frobenius norm, then ``X <- a X + (b G + c G^2) X`` with ``G = X X^T`` on the short side).

    Returns ``[A, B]`` in ``dtype``: approximately ``U V^T`` of the update's SVD, singular values in ~[0.5, 1.5].
    """
    a, b, c = coefficients
    x = update.to(dtype)
    tall = update.size(0) > update.size(1)
    if tall:
        x = x.T
    x = x.div(x.norm().clamp(min=eps))
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def adjusted_lr(lr: float, adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """Muon's per-matrix rate: ``original`` scales by sqrt(max(1, A / B)), ``match_rms_adamw`` by
    0.2 sqrt(max(A, B)) (torch.optim.Muon's ``adjust_lr_fn``)."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1.0, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr


class Muon(torch.optim.Muon):
    """``torch.optim.Muon`` whose orthogonalisation runs in ``ns_dtype``.

    Args:
        params: 2-D parameters (as torch.optim.Muon).
        ns_dtype: ``auto`` (torch's bf16 for CUDA parameters, fp32 for the others), ``bfloat16`` (torch's
            step everywhere) or ``float32``. A property of the machine, not of the training state: it is not
            saved in ``state_dict``, so a run resumed on another machine uses that machine's choice.
        **kwargs: torch.optim.Muon's settings (lr, weight_decay, momentum, nesterov, ns_coefficients, eps,
            ns_steps, adjust_lr_fn).
    """

    def __init__(self, params: Any, ns_dtype: str = "auto", **kwargs: Any):
        if ns_dtype not in NS_DTYPES:
            raise ValueError(f"Muon ns_dtype={ns_dtype!r} is not one of {sorted(NS_DTYPES)}")
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    def _dtype_for(self, p: torch.Tensor) -> torch.dtype:
        chosen = NS_DTYPES[self.ns_dtype]
        if chosen is not None:
            return chosen
        return torch.bfloat16 if p.is_cuda else torch.float32

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        if all(self._dtype_for(p) == torch.bfloat16 for p in params):
            return super().step(closure)  # torch's own arithmetic, unchanged
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            with_grad: list[torch.Tensor] = []
            grads: list[torch.Tensor] = []
            bufs: list[torch.Tensor] = []
            self._init_group(group, with_grad, grads, bufs)  # torch's checks and momentum buffers
            lr, momentum = float(group["lr"]), group["momentum"]
            for p, grad, buf in zip(with_grad, grads, bufs, strict=True):
                buf.lerp_(grad, 1 - momentum)
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = orthogonalize(
                    update, group["ns_coefficients"], group["ns_steps"], group["eps"], self._dtype_for(p)
                )
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-adjusted_lr(lr, group["adjust_lr_fn"], p.shape))
        return loss
