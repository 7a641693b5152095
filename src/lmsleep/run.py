"""What every command that runs a Trainer shares (``lmsleep fit`` and ``lmsleep test``): building the run from
its config (seed, data, model, callbacks, loggers, Trainer) and finishing it (final metrics beside the config,
loggers closed)."""

from __future__ import annotations

import inspect
import logging
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig

from lmsleep.utils.config import (
    ConfigError,
    build,
    build_data_and_model,
    check_kernel_backend,
    check_required,
    check_trainer,
    flat_hparams,
    instantiate_group,
)

log = logging.getLogger("lmsleep")

# the final metrics beside the config in TensorBoard's HPARAMS tab (answer accuracy of tasks, bits per byte of text)
HPARAM_METRICS = tuple(
    f"{split}/{m}" for split in ("val", "test", "test_final") for m in ("loss", "acc", "acc_exact", "bpb")
)


def as_floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def log_hparams(loggers: list, cfg: DictConfig, metrics: dict[str, float] | None = None) -> None:
    """Record the config (and final metrics, under ``hp/``) for TensorBoard's HPARAMS tab."""
    params = flat_hparams(cfg)
    hp_metrics = {f"hp/{k.replace('/', '_')}": v for k, v in (metrics or {}).items() if k in HPARAM_METRICS}
    for logger in loggers:
        # only some loggers (TensorBoard's) take metrics with the hyperparameters; CSVLogger has them anyway
        if hp_metrics and "metrics" in inspect.signature(logger.log_hyperparams).parameters:
            logger.log_hyperparams(params, metrics=hp_metrics)
        else:
            logger.log_hyperparams(params)


def check_precision(trainer_cfg: DictConfig) -> None:
    """Refuse bf16 on CPU: measured here it is slower than fp32, not faster (see benchmarks/RESULTS.md)."""
    precision = str(trainer_cfg.get("precision", "32-true"))
    if trainer_cfg.get("accelerator") == "cpu" and precision.startswith("bf16"):
        raise ConfigError(
            f"trainer.precision={precision} on CPU is refused: bf16 made the training step slower than fp32 "
            "on every CPU measured, AMX included (matmuls are a small share of a step and autocast adds casts; "
            "benchmarks/RESULTS.md); use trainer.precision=32-true on CPU, bf16-mixed on GPUs"
        )


def build_run(cfg: DictConfig) -> tuple[Any, Any, L.Trainer, list]:
    """Seed, then the DataModule, the LightningModule, the loggers and a Trainer with the configured callbacks."""
    check_required(cfg)
    check_precision(cfg.trainer)
    check_trainer(cfg)
    check_kernel_backend(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    if cfg.get("flush_denormal", True):
        # Decays drive fast weights towards subnormal floats, whose arithmetic is ~100x slower on x86 CPUs
        # (a whole training step ran 5x slower); flushing them to zero changes nothing measurable.
        torch.set_flush_denormal(True)
    datamodule, model = build_data_and_model(cfg)
    callbacks = instantiate_group(cfg.get("callbacks"), "callback")
    loggers = instantiate_group(cfg.get("logger"), "logger")
    log.info(f"Instantiating trainer <{cfg.trainer._target_}>")
    trainer: L.Trainer = build(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False)
    return datamodule, model, trainer, loggers


def finish_run(loggers: list, cfg: DictConfig, metrics: dict[str, float]) -> None:
    """Record the final metrics beside the config (HPARAMS) and close the loggers."""
    log_hparams(loggers, cfg, metrics)
    for logger in loggers:
        logger.finalize("success")
