"""The hyperparameters of a run that a study varies or fixes, as ``lmsleep report`` records them in each
run's raw JSON (``settings``), beside the data settings, N, eviction, window, width and layout.

They are read from the run's saved ``config.yaml``, with the defaults of :class:`~lmsleep.lit.optim.OptimConfig`
and :class:`~lmsleep.models.sleep.SleepConfig` filled in where the config leaves a setting out, so a raw file
says what the run trained with, not only what its command line changed. Raw files written before these were
recorded lack them; :mod:`lmsleep.reporting.report` then treats them as unknown (such a run groups as it did).
"""

from __future__ import annotations

import dataclasses
from typing import Any

# recorded in every raw JSON written since; runs that differ in any of them are separate configurations
HPARAMS = (
    "muon_lr",
    "adamw_lr",
    "muon_weight_decay",
    "adamw_weight_decay",
    "schedule",
    "warmup_steps",
    "min_lr_ratio",
    "decay_fraction",
    "gradient_clip_val",
    "accumulate_grad_batches",
    "batch_size",
    "precision",
    "grad_passes",
    "tbptt_windows",
    "state_mode",
    "loop",
    "rule",
)
# What a raw file written before these were recorded can still be said to have used: every run before
# model.optim.schedule existed had the warm-up and cosine schedule. So such a run and a new constant-schedule
# run of one label are two configurations (schedule=cosine, schedule=constant), not two seeds of one.
BEFORE_RECORDED = {"schedule": "cosine"}
# recorded, but a function of other settings: not a grouping setting. token_budget is the samples' tokens
# (padding included) of max_steps optimiser steps: max_steps x tokens_per_step (which counts every batch an
# optimiser step accumulates, on every device)
DERIVED = ("token_budget",)


def _defaults(cls: type) -> dict[str, Any]:
    return {
        f.name: f.default
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING and not callable(f.default)
    }


def run_hparams(cfg: dict[str, Any], tokens_per_step: int) -> dict[str, Any]:
    """The settings of :data:`HPARAMS` and :data:`DERIVED` of a run's config (a plain, resolved dict);
    ``tokens_per_step``: the tokens of one optimiser step (``lmsleep.reporting.report.run_settings``)."""
    from lmsleep.lit.optim import OptimConfig
    from lmsleep.models.sleep import SleepConfig
    from lmsleep.utils.config import is_hf_net

    model, trainer = cfg["model"], cfg["trainer"]
    optim = {**_defaults(OptimConfig), **(model.get("optim") or {})}
    sleep = {**_defaults(SleepConfig), **(model.get("sleep") or {})}
    net = model.get("net") or {}
    hf = is_hf_net(net)  # model=hf: its own linear layers, or inserted ones
    hybrid = "ssm" in str(net.get("layout", "")) or hf
    max_steps = trainer.get("max_steps")
    steps = max_steps if isinstance(max_steps, int) and max_steps > 0 else None  # -1: epochs decide
    accumulate = int(trainer.get("accumulate_grad_batches", 1) or 1)
    values = {
        **{k: optim.get(k) for k in HPARAMS[:8]},
        "gradient_clip_val": trainer.get("gradient_clip_val"),
        "accumulate_grad_batches": accumulate,
        "batch_size": cfg["data"].get("batch_size"),
        "precision": str(trainer.get("precision", "32-true")),
        "grad_passes": sleep.get("grad_passes"),
        "tbptt_windows": sleep.get("tbptt_windows"),
        "state_mode": sleep.get("state_mode"),
        # the fast-weight settings of a model without fast-weight layers say nothing
        "loop": net.get("loop", "all") if hybrid else None,
        # lmsleep's own fast-weight layers: the hybrid's, or those inserted into a wrapped model
        "rule": ((net.get("insert_ssm") if hf else net.get("ssm")) or {}).get("rule", "gated_delta")
        if hybrid and (not hf or net.get("insert"))
        else None,
        "token_budget": steps * tokens_per_step if steps else None,
    }
    return values


def grouping_hparams(settings: dict[str, Any]) -> dict[str, Any]:
    """The :data:`HPARAMS` a raw file's ``settings`` hold, with :data:`BEFORE_RECORDED` for a file that
    predates them (one without any of them)."""
    known = {k: settings[k] for k in HPARAMS if k in settings}
    return known if known else dict(BEFORE_RECORDED)
