"""``evaluate(cfg)``: test a checkpoint. ``lmsleep test ckpt_path=PATH`` is a thin wrapper around it."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from lmsleep.train import _scalars, log_hparams
from lmsleep.utils.config import ConfigError, build_data_and_model, check_checkpoint, instantiate_group

log = logging.getLogger("lmsleep")


def evaluate(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Test ``cfg.ckpt_path`` with the data and model of ``cfg``; returns the ``test/...`` metrics."""
    if not cfg.get("ckpt_path"):
        raise ConfigError(
            "ckpt_path is required: `lmsleep test ckpt_path=logs/fit/runs/<run>/checkpoints/last.ckpt`"
        )
    check_checkpoint(cfg.ckpt_path)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule, model = build_data_and_model(cfg)
    loggers = instantiate_group(cfg.get("logger"), "logger")
    callbacks = instantiate_group(cfg.get("callbacks"), "callback")
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    trainer.test(model=model, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=False)
    metrics = _scalars(trainer.callback_metrics)
    log_hparams(loggers, cfg, metrics)
    for logger in loggers:
        logger.finalize("success")
    return metrics, {"trainer": trainer, "model": model, "datamodule": datamodule, "cfg": cfg}
