"""Muon for hidden weight matrices, AdamW for everything else, with warm-up and cosine decay (SPEC section 1)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

NONFINITE = ("stop", "skip")


@dataclass
class OptimConfig:
    """Optimiser settings. Paper: Muon lr 2e-3 (synthetic) / 1e-3 (pretrained), AdamW lr 5e-5.

    Args:
        muon_lr: learning rate of Muon (2-D hidden weight matrices).
        adamw_lr: learning rate of AdamW (embeddings, output head, and every non-matrix parameter: norms,
            biases, A_log and dt_bias, convolution kernels). 2-D gate projections are hidden matrices: Muon.
        muon_weight_decay, adamw_weight_decay: decoupled weight decay of each optimiser.
        betas: AdamW betas.
        momentum: Muon momentum.
        warmup_steps: linear warm-up from 0 to the peak rate.
        min_lr_ratio: the cosine decays to this fraction of the peak at the last step.
        grad_clip: global gradient-norm clip over all parameters (0 = off).
        muon_adjust_lr: Muon's ``adjust_lr_fn`` (``original`` or ``match_rms_adamw``; None = torch's default).
        nonfinite: what a training step whose loss or gradient norm is NaN or infinite does: ``stop`` (the fit
            ends with an error naming the step and the quantity; no optimiser step is taken) or ``skip``
            (the batch is dropped without an optimiser step and counted in ``train/skipped_batches``).
    """

    muon_lr: float = 2e-3
    adamw_lr: float = 1e-3
    muon_weight_decay: float = 0.0
    adamw_weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    momentum: float = 0.95
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    muon_adjust_lr: str | None = None
    nonfinite: str = "stop"

    def __post_init__(self) -> None:
        for name in ("muon_lr", "adamw_lr"):
            if getattr(self, name) <= 0:
                raise ValueError(f"optim.{name} must be > 0, got {getattr(self, name)}")
        if self.nonfinite not in NONFINITE:
            raise ValueError(f"optim.nonfinite={self.nonfinite!r} is not one of {NONFINITE}")
        if self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("optim.warmup_steps must be >= 0 and optim.min_lr_ratio in [0, 1]")


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(Muon parameters, AdamW parameters). Muon takes the 2-D weights of hidden layers; the embedding and
    output head are matrices too but are not hidden layers (Muon's authors keep them on AdamW). Frozen
    parameters are included, so a training stage may unfreeze them later."""
    muon, adamw = [], []
    for name, p in model.named_parameters():
        hidden_matrix = p.dim() == 2 and not name.startswith(("embed.", "head."))
        (muon if hidden_matrix else adamw).append(p)
    return muon, adamw


def build_optimizers(model: nn.Module, cfg: OptimConfig) -> list[torch.optim.Optimizer]:
    """Muon over the hidden matrices and AdamW over the rest (either omitted when it has no parameters)."""
    muon, adamw = split_parameters(model)
    opts: list[torch.optim.Optimizer] = []
    if muon:
        opts.append(
            torch.optim.Muon(
                muon,
                lr=cfg.muon_lr,
                weight_decay=cfg.muon_weight_decay,
                momentum=cfg.momentum,
                adjust_lr_fn=cfg.muon_adjust_lr,
            )
        )
    if adamw:
        opts.append(
            torch.optim.AdamW(
                adamw, lr=cfg.adamw_lr, betas=tuple(cfg.betas), weight_decay=cfg.adamw_weight_decay
            )
        )
    return opts


def warmup_cosine(total_steps: int | Callable[[], int], warmup_steps: int, min_lr_ratio: float):
    """Multiplier of the peak rate at a step: linear warm-up, then cosine to ``min_lr_ratio`` at ``total_steps``
    (an int, or a function read at every step, so the total can be known only once training starts)."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        total = total_steps() if callable(total_steps) else total_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
