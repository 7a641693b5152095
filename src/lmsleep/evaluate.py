"""``evaluate(cfg)``: test a checkpoint. ``lmsleep test ckpt_path=PATH`` is a thin wrapper around it."""

from __future__ import annotations

import signal
from typing import Any

from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from lmsleep.callbacks.preemption import Preempted
from lmsleep.run import as_floats, build_run, finish_run
from lmsleep.utils.checkpoint import check_checkpoint, check_fits_data, check_fits_model
from lmsleep.utils.config import ConfigError


def evaluate(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Test ``cfg.ckpt_path`` with the data and model of ``cfg``; returns the ``test/...`` metrics."""
    if not cfg.get("ckpt_path"):
        raise ConfigError(
            "ckpt_path is required: `lmsleep test ckpt_path=logs/fit/runs/<run>/checkpoints/last.ckpt`"
        )
    ckpt = check_checkpoint(cfg.ckpt_path)
    datamodule, model, trainer, loggers = build_run(cfg)
    check_fits_model(ckpt, model, cfg.ckpt_path)
    check_fits_data(ckpt, datamodule, cfg.ckpt_path)
    del ckpt
    try:
        trainer.test(model=model, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
    except SIGTERMException as exc:  # a SystemExit with status 0: the run must not look finished
        raise Preempted(signal.SIGTERM, trainer.global_step, None, testing=True) from exc
    metrics = as_floats(trainer.callback_metrics)
    finish_run(loggers, cfg, metrics)
    return metrics, {"trainer": trainer, "model": model, "datamodule": datamodule, "cfg": cfg}
