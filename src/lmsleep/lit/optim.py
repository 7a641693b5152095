"""One optimiser for the whole model: Muon for the hidden weight matrices, AdamW for everything else, with
warm-up and then a cosine decay, a constant rate, or a constant rate with a final decay (warm-up-stable-decay)
(docs/design.md#training)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lmsleep.lit.muon import NS_DTYPES, Muon

NONFINITE = ("stop", "skip")
SCHEDULES = ("cosine", "constant", "wsd")


@dataclass
class OptimConfig:
    """Optimiser settings. Paper: Muon lr 2e-3 (synthetic) / 1e-3 (pretrained), AdamW lr 5e-5.

    Gradient clipping is Lightning's: ``trainer.gradient_clip_val`` (a global norm over all parameters).

    Args:
        muon_lr: learning rate of Muon (2-D hidden weight matrices).
        adamw_lr: learning rate of AdamW (embeddings, output head, and every non-matrix parameter: norms,
            biases, A_log and dt_bias, convolution kernels). 2-D gate projections are hidden matrices: Muon.
        muon_weight_decay, adamw_weight_decay: decoupled weight decay of each update rule.
        betas: AdamW betas.
        momentum: Muon momentum.
        warmup_steps: linear warm-up from 0 to the peak rate.
        schedule: the rate after warm-up, as a multiple of each group's peak: ``cosine`` (a cosine decay to
            ``min_lr_ratio`` at the last step), ``constant`` (the peak to the end: no run is judged at a
            cooled rate because it started learning late) or ``wsd`` (warm-up, stable, decay: the peak, then
            a linear decay to ``min_lr_ratio`` over the last ``decay_fraction`` of the steps).
        min_lr_ratio: the rate at the last step of ``cosine`` and ``wsd``, as a fraction of the peak.
        decay_fraction: the share of all training steps that ``wsd`` spends decaying (0 = ``constant``).
        muon_adjust_lr: Muon's ``adjust_lr_fn`` (``original`` or ``match_rms_adamw``; None = torch's default).
        muon_ns_dtype: dtype of Muon's Newton-Schulz orthogonalisation: ``auto`` (torch's bfloat16 on CUDA,
            float32 on CPU, where bf16 matmuls without AMX made Muon's step about 10x slower), ``bfloat16``
            or ``float32`` (:class:`lmsleep.lit.muon.Muon`).
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
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2
    muon_adjust_lr: str | None = None
    muon_ns_dtype: str = "auto"
    nonfinite: str = "stop"

    def __post_init__(self) -> None:
        for name in ("muon_lr", "adamw_lr"):
            if getattr(self, name) <= 0:
                raise ValueError(f"optim.{name} must be > 0, got {getattr(self, name)}")
        if self.nonfinite not in NONFINITE:
            raise ValueError(f"optim.nonfinite={self.nonfinite!r} is not one of {NONFINITE}")
        if self.muon_ns_dtype not in NS_DTYPES:
            raise ValueError(
                f"optim.muon_ns_dtype={self.muon_ns_dtype!r} is not one of {sorted(NS_DTYPES)} (auto: bfloat16 "
                "on CUDA, float32 on CPU)"
            )
        if self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("optim.warmup_steps must be >= 0 and optim.min_lr_ratio in [0, 1]")
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"optim.schedule={self.schedule!r} is not one of {SCHEDULES} (cosine: decay to min_lr_ratio; "
                "constant: the peak after warm-up; wsd: the peak, then a linear decay over the last "
                "decay_fraction of the steps)"
            )
        if not 0 <= self.decay_fraction <= 1:
            raise ValueError(f"optim.decay_fraction={self.decay_fraction} must be in [0, 1]")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> OptimConfig:
        """The config from ``model.optim``; an unknown key is an error that names the known ones."""
        values = dict(values or {})
        if "grad_clip" in values:
            raise ValueError(
                "model.optim.grad_clip was replaced by Lightning's trainer.gradient_clip_val (the same global "
                "gradient-norm clip); set trainer.gradient_clip_val=... instead"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"model.optim has no setting {unknown}; the settings are {sorted(known)}")
        return cls(**values)


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(Muon parameters, AdamW parameters). Muon takes the 2-D weights of hidden layers; the embedding and
    output head are matrices too but are not hidden layers (Muon's authors keep them on AdamW). Frozen
    parameters are included, so a training stage may unfreeze them later."""
    muon, adamw = [], []
    # A wrapped model names its embedding and head itself (lmsleep.models.hf.HFSleepLM)
    named = getattr(model, "non_hidden_parameters", None)
    not_hidden = {id(p) for p in named()} if named is not None else set()
    for name, p in model.named_parameters():
        hidden_matrix = p.dim() == 2 and not name.startswith(("embed.", "head.")) and id(p) not in not_hidden
        (muon if hidden_matrix else adamw).append(p)
    return muon, adamw


class MuonAdamW(torch.optim.Optimizer):
    """One ``torch.optim.Optimizer`` whose parameter groups are stepped by Muon (groups with ``muon=True``;
    :class:`lmsleep.lit.muon.Muon`, i.e. ``torch.optim.Muon`` with a choice of orthogonalisation dtype) or
    ``torch.optim.AdamW`` (the others).

    The two torch optimisers do the arithmetic; they hold this optimiser's own group dicts and its ``state``,
    so everything that handles one optimiser sees all parameters: Lightning's automatic optimisation
    (gradient accumulation, ``gradient_clip_val``, fp16 loss scaling), learning-rate schedulers (one rate per
    group), and ``state_dict``/``load_state_dict`` (checkpoints).

    Args:
        muon_params: 2-D hidden weight matrices.
        adamw_params: every other parameter.
        muon: keyword arguments of :class:`lmsleep.lit.muon.Muon` (lr, weight_decay, momentum, adjust_lr_fn,
            ns_dtype, ...).
        adamw: keyword arguments of ``torch.optim.AdamW`` (lr, betas, weight_decay, ...).
    """

    def __init__(
        self,
        muon_params: Iterable[nn.Parameter],
        adamw_params: Iterable[nn.Parameter],
        muon: dict[str, Any] | None = None,
        adamw: dict[str, Any] | None = None,
    ):
        muon_params, adamw_params = list(muon_params), list(adamw_params)
        if not muon_params and not adamw_params:
            raise ValueError("MuonAdamW got no parameters to optimise")
        inner: list[torch.optim.Optimizer] = []
        if muon_params:
            inner.append(Muon(muon_params, **(muon or {})))
        if adamw_params:
            inner.append(torch.optim.AdamW(adamw_params, **(adamw or {})))
        groups = []
        for opt in inner:
            for group in opt.param_groups:  # each filled with its optimiser's defaults
                group["muon"] = isinstance(opt, torch.optim.Muon)
                group["name"] = "muon" if group["muon"] else "adamw"  # LearningRateMonitor: lr-MuonAdamW/muon
                groups.append(group)
        super().__init__(groups, defaults={})
        self._inner = inner
        self._link()

    def _link(self) -> None:
        """Point the inner optimisers at this optimiser's groups and state (again after loading a state)."""
        for opt in self._inner:
            is_muon = isinstance(opt, torch.optim.Muon)
            opt.param_groups = [g for g in self.param_groups if g["muon"] == is_muon]
            opt.state = self.state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # load_state_dict installs new group dicts and a new state through here
        super().__setstate__(state)
        if "_inner" in self.__dict__:
            self._link()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self._inner:
            opt.step()
        return loss


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> MuonAdamW:
    """Muon over the model's hidden matrices and AdamW over the rest, as one optimiser."""
    muon, adamw = split_parameters(model)
    return MuonAdamW(
        muon,
        adamw,
        muon=dict(
            lr=cfg.muon_lr,
            weight_decay=cfg.muon_weight_decay,
            momentum=cfg.momentum,
            adjust_lr_fn=cfg.muon_adjust_lr,
            ns_dtype=cfg.muon_ns_dtype,
        ),
        adamw=dict(lr=cfg.adamw_lr, betas=tuple(cfg.betas), weight_decay=cfg.adamw_weight_decay),
    )


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


def warmup_stable_decay(
    total_steps: int | Callable[[], int], warmup_steps: int, min_lr_ratio: float, decay_fraction: float
):
    """Multiplier of the peak rate at a step: linear warm-up, the peak, then a linear decay to ``min_lr_ratio``
    over the last ``decay_fraction`` of ``total_steps`` (never into the warm-up); ``decay_fraction=0`` keeps
    the peak to the end (``schedule=constant``)."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if decay_fraction <= 0:
            return 1.0
        total = total_steps() if callable(total_steps) else total_steps
        start = max(warmup_steps, total - round(decay_fraction * total))
        progress = min(1.0, max(0.0, (step - start) / max(1, total - start)))
        return 1.0 - (1.0 - min_lr_ratio) * progress

    return factor


def lr_schedule(cfg: OptimConfig, total_steps: int | Callable[[], int]):
    """The multiplier of ``cfg.schedule`` (``cosine``, ``constant`` or ``wsd``) at a step, for ``LambdaLR``."""
    if cfg.schedule == "cosine":
        return warmup_cosine(total_steps, cfg.warmup_steps, cfg.min_lr_ratio)
    decay = cfg.decay_fraction if cfg.schedule == "wsd" else 0.0
    return warmup_stable_decay(total_steps, cfg.warmup_steps, cfg.min_lr_ratio, decay)
