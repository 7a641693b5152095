"""``train(cfg)``: fit a model, then test its final weights and its best checkpoint. ``lmsleep fit`` is a thin wrapper around it."""

from __future__ import annotations

import inspect
import logging
import signal
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from lmsleep.callbacks.preemption import Preempted, Preemption
from lmsleep.utils.config import (
    ConfigError,
    build,
    build_data_and_model,
    check_checkpoint,
    check_fits_data,
    check_fits_model,
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
            "on every CPU measured, AMX included (0.87-0.95x fp32's speed at N = 1, 0.76-0.82x at N = 2: matmuls "
            "are a small share of a step and autocast adds casts); use trainer.precision=32-true on CPU, bf16-mixed "
            "on GPUs"
        )


def build_run(cfg: DictConfig) -> tuple[Any, Any, L.Trainer, list]:
    """Seed, then the DataModule, the LightningModule, the loggers and a Trainer with the configured callbacks."""
    check_precision(cfg.trainer)
    check_trainer(cfg)
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


def _keep_earlier_csv_logs(cfg: DictConfig, step: int) -> None:
    """A run resumed in its own folder would make Lightning's CSVLogger delete the metrics.csv written before
    the interruption: the resumed part goes to ``<csv dir>/resumed_step_<step>/metrics.csv`` instead."""
    for conf in (cfg.get("logger") or {}).values():
        if not (isinstance(conf, DictConfig) and str(conf.get("_target_", "")).endswith("CSVLogger")):
            continue
        folder = Path(str(conf.save_dir)) / str(conf.get("name") or "") / str(conf.get("version") or "")
        if (folder / "metrics.csv").is_file():
            with open_dict(conf):
                conf.version = str(Path(str(conf.get("version") or "")) / f"resumed_step_{step}")


def train(cfg: DictConfig, overrides: list[str] | None = None) -> tuple[dict[str, float], dict[str, Any]]:
    """Train ``cfg.model`` on ``cfg.data``, then test its final weights (``test_final/...``) and its best
    checkpoint (``test/...``).

    Args:
        cfg: a composed ``fit`` config (see ``configs/fit.yaml``).
        overrides: the command-line overrides of this run, stored in checkpoints so ``lmsleep test`` can
            rebuild the same data and model.

    Returns:
        the metrics (``train/...``, ``val/...``, ``test/...``, ``test_final/...``) and the objects built
        (trainer, model, data).
    """
    resume = check_checkpoint(cfg.get("ckpt_path"))  # a bad resume path fails before any work
    if resume is not None:
        _keep_earlier_csv_logs(cfg, int(resume.get("global_step", 0)))
    datamodule, model, trainer, loggers = build_run(cfg)
    check_fits_model(resume, model, cfg.get("ckpt_path"))
    check_fits_data(resume, datamodule, cfg.get("ckpt_path"))
    del resume
    model.run_config = {
        "overrides": list(overrides or []),
        "config": OmegaConf.to_container(cfg, resolve=False),
    }
    output_dir = Path(cfg.paths.output_dir)
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
    log_hparams(loggers, cfg)

    if cfg.get("train", True):
        try:
            trainer.fit(model=model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
        except SIGTERMException as exc:  # Lightning's stop on SIGTERM is a SystemExit with status 0
            stopper = next((cb for cb in trainer.callbacks if isinstance(cb, Preemption)), None)
            signum = (stopper.signum if stopper else None) or signal.SIGTERM
            raise Preempted(signum, trainer.global_step, stopper.saved if stopper else None) from exc
    metrics = as_floats(trainer.callback_metrics)

    if cfg.get("test", True):
        cb = trainer.checkpoint_callback
        ckpt = (cb.best_model_path or cb.last_model_path) if cb else ""
        if not ckpt and not cfg.get("train", True):
            ckpt = cfg.get("ckpt_path") or ""  # `train=false ckpt_path=X`: test X, not the untrained weights
        if not ckpt:
            log.warning("No checkpoint (checkpointing off or fast_dev_run); testing the current weights")
        # A fit tests its final weights (``test_final/...``, while they are still in memory), then the best
        # validated checkpoint (``test/...``, what every earlier run and `lmsleep test` report).
        tests = [("test_final", None), ("test", ckpt or None)] if cfg.get("train", True) else []
        for prefix, path in tests or [("test", ckpt or None)]:
            model.test_prefix = prefix
            try:
                trainer.test(model=model, datamodule=datamodule, ckpt_path=path, weights_only=True)
            except SIGTERMException as exc:  # a SystemExit with status 0: the run must not look finished
                raise Preempted(signal.SIGTERM, trainer.global_step, None, testing=True) from exc
            finally:
                model.test_prefix = "test"
            metrics.update(as_floats(trainer.callback_metrics))
        final = " (test/...) and the final weights (test_final/...)" if tests else ""
        log.info(f"Tested checkpoint: {ckpt or '(current weights)'}{final}")
    finish_run(loggers, cfg, metrics)
    return metrics, {"trainer": trainer, "model": model, "datamodule": datamodule, "cfg": cfg}
