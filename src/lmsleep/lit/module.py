"""LitLM: the LightningModule that trains and evaluates every model (transformer baseline or sleeping hybrid)."""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.optim.lr_scheduler import LambdaLR

from lmsleep.data.task import IGNORE_INDEX
from lmsleep.lit.metrics import AnswerMetrics, WindowLMMetrics, masked_cross_entropy
from lmsleep.lit.optim import OptimConfig, build_optimizer, lr_schedule
from lmsleep.models.compilation import (
    compile_modules,
    compile_seconds,
    graphs_compiled,
    modules_to_compile,
    parse_targets,
)
from lmsleep.models.hybrid import HybridLM
from lmsleep.models.sleep import SleepConfig, SleepHooks
from lmsleep.models.state import ModelState

log = logging.getLogger("lmsleep")


class NonFiniteError(RuntimeError):
    """A training step met a NaN or infinite loss, gradient norm or weight (``optim.nonfinite=stop``)."""


def _plain(settings: Any) -> dict[str, Any] | None:
    """A config mapping (e.g. an OmegaConf DictConfig) as a plain dict of plain values."""
    if settings is None:
        return None
    if isinstance(settings, DictConfig):
        return OmegaConf.to_container(settings, resolve=True)
    return dict(settings)


class LitLM(L.LightningModule, SleepHooks):
    """Masked cross-entropy on ``labels``; one Muon + AdamW optimiser under Lightning's automatic optimisation;
    answer metrics by depth (tasks) or loss and bits per byte by window (text).

    Lightning runs backward, ``trainer.gradient_clip_val`` (global norm), ``accumulate_grad_batches`` and the
    optimiser step. Precision: ``32-true`` (CPU) and ``bf16-mixed`` (GPU) are the tested settings. ``16-mixed``
    is now possible on GPUs: Lightning's GradScaler sees the one optimiser, so it unscales every gradient
    before clipping and skips the step of both update rules together after an overflow. It has not been run
    here (the test suite has no GPU), and whether the fast-weight ops stay finite in fp16 at the paper's sizes
    is unmeasured. On CPU Lightning replaces ``16-mixed`` by ``bf16-mixed``.

    The wake and sleep phases of every forward call the hooks ``on_wake_start(window)``, ``on_wake_end(window, state)``,
    ``on_sleep_start/end(window, passes)`` and ``on_sleep_pass(...)`` of every callback that defines them, with
    the trainer and this module first: ``cb.on_sleep_end(trainer, pl_module, window, passes, state)``.
    Callbacks may change ``self.sleep`` (a :class:`SleepConfig`) between steps; it is saved in checkpoints.

    Args:
        net: the model (:class:`HybridLM`).
        sleep: keyword arguments of :class:`SleepConfig` (passes N, window L, eviction, ...).
        optim: keyword arguments of :class:`OptimConfig`.
        depth_name: the task's depth axis (``t``, ``k``, ``ops``) for metric names such as ``test/acc@t=4``.
        metrics: ``answer`` (tasks: :class:`AnswerMetrics` by depth) or ``text`` (language modelling:
            :class:`WindowLMMetrics`, ``val/bpb`` and ``val/bpb@window=3``, with windows of ``sleep.window``);
            set from the data at run time (``TextDataModule.metrics``).
        compile: ``torch.compile`` targets (``lmsleep.models.compilation``): false (default), true (the
            targets that paid back on CPU) or a list such as ``[mlp, attn]``; compiled in place in
            :meth:`configure_model`, so checkpoints keep the eager model's keys. The first training step logs
            how long compiling took (``perf/compile_s``).
    """

    def __init__(
        self,
        net: HybridLM,
        sleep: dict[str, Any] | None = None,
        optim: dict[str, Any] | None = None,
        depth_name: str = "depth",
        metrics: str = "answer",
        compile: bool | str | list[str] | None = False,
    ):
        super().__init__()
        # Plain dicts, not Hydra's DictConfigs: checkpoints then hold only tensors and plain containers and
        # load with torch.load(weights_only=True) (no pickled objects that could run code).
        sleep, optim = _plain(sleep), _plain(optim)
        if isinstance(compile, ListConfig):
            compile = OmegaConf.to_container(compile, resolve=True)
        self.compile_targets = parse_targets(compile)  # a bad value stops here, before any work
        modules_to_compile(net, self.compile_targets)  # as does a target this model lacks
        self.save_hyperparameters(ignore=["net"], logger=False)
        self.net = net
        self.sleep = SleepConfig(**dict(sleep or {}))
        self.optim_cfg = OptimConfig.from_dict(optim)
        if metrics not in ("answer", "text"):
            raise ValueError(
                f"model.metrics={metrics!r} must be 'answer' (tasks) or 'text' (language modelling)"
            )
        self.metrics = metrics
        if metrics == "text":
            self.val_metrics, self.test_metrics = WindowLMMetrics(), WindowLMMetrics()
        else:
            self.val_metrics, self.test_metrics = AnswerMetrics(depth_name), AnswerMetrics(depth_name)
        self._total_steps = 1  # of the learning-rate schedule; set when training starts
        self._window_checked = False
        self.skipped_batches = 0  # batches dropped for a non-finite loss or gradient (optim.nonfinite=skip)
        self.batches_done = 0  # training batches of this fit, resumed runs included: the step scalars log at
        self.optimizer_steps, self.clipped_steps = 0, 0  # train/clipped_share, resumed runs included
        # the name a test logs under: test/ (the checkpoint a test loaded), or test_final/ while `lmsleep fit`
        # tests the weights of its last step beside its best checkpoint (docs/design.md#training)
        self.test_prefix = "test"
        self._resync_log_step = False
        self.compiled: list[str] = []  # the submodules compiled in place (configure_model)
        self.compile_s: float | None = None  # compile seconds up to the first training step's end, once known
        self._compile_base = 0.0  # compile seconds of this process before configure_model compiled
        self._compile_clock: tuple[float, float] | None = (
            None  # (compile seconds, wall time) at a step's start
        )

    # --- forward and hooks ------------------------------------------------------------------------------
    def forward(
        self, input_ids: torch.Tensor, state: ModelState | None = None
    ) -> tuple[torch.Tensor, ModelState]:
        return self.net(input_ids, self.sleep, state, hooks=self)

    def _dispatch(self, hook: str, *args: Any) -> None:
        if self._trainer is None:
            return
        for cb in self.trainer.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(self.trainer, self, *args)

    def on_wake_start(self, window: int) -> None:
        self._dispatch("on_wake_start", window)

    def on_wake_end(self, window: int, state: ModelState) -> None:
        self._dispatch("on_wake_end", window, state)

    def on_sleep_start(self, window: int, passes: int) -> None:
        self._dispatch("on_sleep_start", window, passes)

    def on_sleep_pass(self, window: int, pass_index: int, before: ModelState, after: ModelState) -> None:
        self._dispatch("on_sleep_pass", window, pass_index, before, after)

    def on_sleep_end(self, window: int, passes: int, state: ModelState) -> None:
        self._dispatch("on_sleep_end", window, passes, state)

    # --- steps ------------------------------------------------------------------------------------------
    def _check_window(self, input_ids: torch.Tensor) -> None:
        """Say once if the window never fills: then nothing is evicted and sleep never runs."""
        length, cfg = input_ids.shape[1], self.sleep
        if self._window_checked or cfg.eviction == "none":
            return
        self._window_checked = True
        if cfg.window >= length:
            rank_zero_warn(
                f"model.sleep.window={cfg.window} >= the sequence length {length}: every sequence is one "
                f"window, so nothing is evicted and sleep (passes={cfg.passes}) never runs; set "
                f"model.sleep.window below {length} (e.g. to the data's window, data.window)"
            )

    # --- compilation ------------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Compile the ``compile`` targets in place: Lightning's place for it (called for every fit and test,
        before a strategy wraps the model). ``nn.Module.compile`` keeps the parameters where they were, so
        the ``state_dict`` has no ``_orig_mod.`` keys and checkpoints load into eager models and back."""
        if self.compile_targets and not self.compiled:
            self.compiled = compile_modules(self.net, self.compile_targets)
            self._compile_base = compile_seconds()

    def _time_first_compiled_step(self, end: bool) -> None:
        """Once per process, at the first training step's end: the seconds spent compiling since
        :meth:`configure_model` (the sanity check's evaluation graphs included), as one log line and the metric
        ``perf/compile_s``."""
        if not self.compiled or self.compile_s is not None:
            return
        if not end:
            self._compile_clock = (compile_seconds(), time.perf_counter())
            return
        in_step, started = self._compile_clock or (self._compile_base, time.perf_counter())
        now = compile_seconds()
        self.compile_s = now - self._compile_base
        self.log("perf/compile_s", self.compile_s, batch_size=1)
        if self.global_rank == 0:
            log.info(
                f"lmsleep: compiled {', '.join(self.compile_targets)} ({len(self.compiled)} modules) in "
                f"{self.compile_s:.1f} s ({now - in_step:.1f} s of it in the first training step, which took "
                f"{time.perf_counter() - started:.1f} s); {graphs_compiled()} graphs"
            )

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._time_first_compiled_step(end=False)
        if self._resync_log_step:
            # Lightning restores its logging step (``_batches_that_stepped``) one too high from a checkpoint
            # saved after an epoch's validation, so a resumed run's curves would sit one step to the right;
            # the count this module saved is exact wherever the checkpoint was taken.
            self.trainer.fit_loop.epoch_loop._batches_that_stepped = self.batches_done
            self._resync_log_step = False

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        # Lightning does backward, clipping, accumulation, the optimiser step and the schedule.
        self.batches_done += 1
        self._check_window(batch["input_ids"])
        logits, _ = self(batch["input_ids"])
        loss = masked_cross_entropy(logits, batch["labels"])
        if not self._finite("train/loss", loss):
            return None  # Lightning skips the backward and the optimiser step of this batch
        with torch.no_grad():  # a local per-batch figure: no cross-rank sync on every step
            mask = batch["labels"] != IGNORE_INDEX
            acc = ((logits.argmax(-1) == batch["labels"]) & mask).sum() / mask.sum().clamp(min=1)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=len(logits))
        self.log("train/acc", acc, prog_bar=True, batch_size=len(logits))
        self.log("sleep/passes", float(self.sleep.passes), batch_size=len(logits))
        self.log("sleep/window", float(self.sleep.window), batch_size=len(logits))
        self.log("train/skipped_batches", float(self.skipped_batches), batch_size=len(logits))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._time_first_compiled_step(end=True)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Before clipping and the step (DDP has already averaged the gradients): one global norm.
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        if not grads:
            return
        norm = torch.nn.utils.get_total_norm(grads)
        if not self._finite("the gradient norm", norm):
            optimizer.zero_grad(set_to_none=True)  # no gradient: Muon and AdamW leave every parameter be
            return
        self._log_clipping(norm.detach())

    def _log_clipping(self, norm: torch.Tensor) -> None:
        """``train/grad_norm`` (the global norm before clipping), ``train/clipped`` (1 when
        ``trainer.gradient_clip_val`` clips this step) and ``train/clipped_share`` (the share of this fit's
        optimiser steps clipped so far, resumed runs included)."""
        clip = self.trainer.gradient_clip_val if self._trainer is not None else None
        # by value (gradient_clip_algorithm=value) clipping touches single entries: not counted here
        by_norm = self._trainer is not None and self.trainer.gradient_clip_algorithm != "value"
        clipped = bool(clip) and by_norm and float(norm) > float(clip)
        self.optimizer_steps += 1
        self.clipped_steps += int(clipped)
        self.log("train/grad_norm", norm, batch_size=1)
        self.log("train/clipped", float(clipped), batch_size=1)
        self.log("train/clipped_share", self.clipped_steps / self.optimizer_steps, batch_size=1)

    def _finite(self, what: str, value: torch.Tensor) -> bool:
        """False when ``value`` (this step's loss or gradient norm) is NaN/inf on any rank (then
        ``optim.nonfinite=skip`` counts the batch; ``stop`` raises :class:`NonFiniteError` before any
        optimiser step)."""
        finite = bool(torch.isfinite(value))
        if self._trainer is not None and self.trainer.world_size > 1:  # every rank decides the same
            finite = not self.trainer.strategy.reduce_boolean_decision(not finite, all=False)
        if finite:
            return True
        message = f"{what} is {value.item()} at step {self.global_step}"
        if self.optim_cfg.nonfinite == "stop":
            raise NonFiniteError(
                f"{message} (batch {self.global_step + self.skipped_batches}); lower the learning rates "
                "(model.optim.*_lr), clip gradients (trainer.gradient_clip_val) or skip such batches with "
                "model.optim.nonfinite=skip"
            )
        self.skipped_batches += 1
        log.warning(f"{message}: batch skipped ({self.skipped_batches} so far)")
        self.log("train/skipped_batches", float(self.skipped_batches), batch_size=1)
        return False

    def _eval_step(self, batch: dict[str, torch.Tensor], split: str) -> None:
        self._check_window(batch["input_ids"])
        logits, _ = self(batch["input_ids"])
        metric = getattr(self, f"{split}_metrics")
        if self.metrics == "text":  # by window of the current sleep settings (a schedule may change them)
            metric.update(logits, batch["labels"], self.sleep.window, batch.get("token_bytes"))
            return
        depth = batch.get("answer_depth", batch["depth"])  # per answer where a sample mixes depths
        metric.update(logits, batch["labels"], depth)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _log_epoch(self, split: str, prefix: str | None = None) -> dict[str, torch.Tensor]:
        metric = getattr(self, f"{split}_metrics")
        values = metric.compute()  # already reduced over DDP ranks
        metric.reset()
        for name, value in values.items():
            self.log(
                f"{prefix or split}/{name}",
                value,
                prog_bar="@" not in name,
                sync_dist=False,
                rank_zero_only=False,
            )
        return values

    def on_validation_epoch_end(self) -> None:
        self.last_val_metrics = self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self.last_test_metrics = self._log_epoch("test", self.test_prefix)

    # --- optimisation -----------------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = build_optimizer(self.net, self.optim_cfg)
        # The total is read when training starts: asking Lightning for it here would build the training
        # loader before a resumed run restores the loader's position. One factor, applied to each group's
        # own peak rate (Muon's and AdamW's); model.optim.schedule chooses its shape after the warm-up.
        factor = lr_schedule(self.optim_cfg, lambda: self._total_steps)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": LambdaLR(optimizer, factor), "interval": "step"},
        }

    def on_train_start(self) -> None:
        self._total_steps = max(1, int(self.trainer.estimated_stepping_batches))

    # --- checkpoints ------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        weights = checkpoint.get("state_dict", {})
        bad = [k for k, t in weights.items() if t.is_floating_point() and not t.isfinite().all()]
        if bad:  # a checkpoint must never make non-finite weights "best" or "last"
            raise NonFiniteError(
                f"the weights are non-finite at step {self.global_step} ({bad[0]}"
                f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}); no checkpoint saved"
            )
        checkpoint["sleep_config"] = self.sleep.to_dict()
        checkpoint["skipped_batches"] = self.skipped_batches
        checkpoint["batches_done"] = self.batches_done
        checkpoint["clipped_steps"] = [self.clipped_steps, self.optimizer_steps]
        # The run's overrides let `lmsleep test ckpt_path=...` rebuild the same data and model.
        if getattr(self, "run_config", None):
            checkpoint["lmsleep_run"] = self.run_config

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Resuming a fit continues with the sleep settings it had (a schedule may have changed them);
        # testing uses the configured ones, so a checkpoint can be evaluated at another N.
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        if fitting:  # the counts of a resumed fit go on
            self.skipped_batches = int(checkpoint.get("skipped_batches", 0))
            self.clipped_steps, self.optimizer_steps = checkpoint.get("clipped_steps", (0, 0))
            if "batches_done" in checkpoint:
                self.batches_done, self._resync_log_step = int(checkpoint["batches_done"]), True
        if fitting and "sleep_config" in checkpoint:
            self.sleep = SleepConfig(**checkpoint["sleep_config"])
