"""Preemption: on SIGTERM (or SIGUSR1) write a checkpoint at the current step and end the fit with a
non-zero status, so a scheduler sees a preempted run as unfinished and the run can resume where it stopped.

The signal handler only records the signal. At the end of every training batch all ranks agree (one small
all-reduce) whether any rank was signalled, and if so set Lightning's stop flag on all of them, so its loop
raises ``SIGTERMException`` on every rank after that same batch; this callback's ``on_exception`` then has ``Trainer.save_checkpoint`` write the checkpoint (every
rank takes part) and the entry point exits with ``128 + signal``. Lightning's own SIGTERM handler is replaced
while the fit runs: it broadcasts from inside the signal handler, which under DDP can meet another rank's
gradient all-reduce and hang both. Where Lightning's SLURM auto-requeue handles SIGUSR1 it keeps it.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger("lmsleep")


class Preempted(RuntimeError):
    """A fit stopped by a signal; ``exit_code`` is ``128 + signum`` (143 for SIGTERM, 138 for SIGUSR1)."""

    def __init__(self, signum: int, step: int, checkpoint: str | None, testing: bool = False):
        self.signum, self.step, self.checkpoint = int(signum), int(step), checkpoint
        self.exit_code = 128 + self.signum
        name = signal.Signals(self.signum).name
        if testing:
            what = "while testing; test the checkpoint again with `lmsleep test ckpt_path=...`"
            super().__init__(f"preempted by {name} {what}")
            return
        if checkpoint:
            what = f"saved {checkpoint}; resume with `lmsleep fit ckpt_path={checkpoint}` (or ckpt_path=last)"
        else:
            what = (
                "no checkpoint saved (the Preemption callback is not configured: callbacks=default adds it)"
            )
        super().__init__(f"preempted by {name} at step {self.step}: {what}")


class Preemption(Callback):
    """Checkpoint at the current step when the fit is stopped by a signal.

    Args:
        signals: signal names that stop the fit (``SIGTERM`` always goes through Lightning's handler).
        filename: checkpoint name without ``.ckpt``, in the folder of the run's ModelCheckpoint (else
            ``<run>/checkpoints``). ``last``: the run's ``last.ckpt`` is always its newest state.
    """

    def __init__(self, signals: tuple[str, ...] | list[str] = ("SIGTERM", "SIGUSR1"), filename: str = "last"):
        unknown = [s for s in signals if not isinstance(getattr(signal, str(s), None), signal.Signals)]
        if unknown:
            raise ValueError(f"Preemption signals {unknown} are not signal names such as SIGTERM or SIGUSR1")
        self.signals = [getattr(signal, str(s)) for s in signals]
        self.filename = filename
        self.signum: int | None = None
        self.saved: str | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning has registered its handlers by now; its teardown restores the ones from before the fit.
        self.signum, self.saved = None, None
        for signum in self.signals:
            current = signal.getsignal(signum)
            if signum != signal.SIGTERM and current not in (signal.SIG_DFL, signal.SIG_IGN, None):
                continue  # somebody handles it already (Lightning's SLURM requeue)
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        log.info(f"Received {signal.Signals(signum).name}: stopping after this batch")
        self.signum = self.signum or signum

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # every rank, every batch: the largest signal number any rank received (0 = none)
        flag = torch.tensor(self.signum or 0, device=pl_module.device)
        signum = int(trainer.strategy.reduce(flag, reduce_op="max")) if trainer.world_size > 1 else int(flag)
        if signum:
            self.signum = signum
            # Lightning's own flag, set on every rank at the same batch: its loop raises SIGTERMException once
            # this batch is logged and counted (raising here would lose the batch's scalars).
            trainer._signal_connector.received_sigterm = True

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        path = self.checkpoint_path(trainer)
        callback = trainer.checkpoint_callback
        if (
            isinstance(callback, ModelCheckpoint)
            and callback.save_last
            and path.stem == callback.CHECKPOINT_NAME_LAST
        ):
            # the checkpoint callback's own last.ckpt: a resumed run then overwrites it instead of writing last-v1
            callback.last_model_path = str(path)
        trainer.save_checkpoint(
            path, weights_only=False
        )  # the full state; every rank calls it (a collective); rank 0 writes the file
        self.saved = str(path)
        log.info(f"Preempted at step {trainer.global_step}: checkpoint saved to {path}")

    def checkpoint_path(self, trainer: L.Trainer) -> Path:
        callback = trainer.checkpoint_callback
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            folder = Path(callback.dirpath)
        else:
            folder = Path(trainer.default_root_dir) / "checkpoints"
        return folder / f"{self.filename}.ckpt"
