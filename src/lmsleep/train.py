"""``train(cfg)``: fit a model, then test its final weights and its best checkpoint. ``lmsleep fit`` is a thin wrapper around it."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from lmsleep.callbacks.preemption import Preempted, Preemption
from lmsleep.run import as_floats, build_run, finish_run, log_hparams
from lmsleep.utils.checkpoint import check_checkpoint, check_fits_data, check_fits_model
from lmsleep.utils.config import check_required

log = logging.getLogger("lmsleep")


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
    check_required(cfg)  # a required setting left out (``???``) fails before any work
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
