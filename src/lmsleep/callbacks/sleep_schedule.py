"""SleepSchedule: decides *when* N, L and eviction change, and which parameters train, by step or epoch."""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import replace
from typing import Any

import lightning as L
from lightning import Callback

from lmsleep.models.groups import GROUPS, groups_of
from lmsleep.models.sleep import SleepConfig
from lmsleep.utils.config import ConfigError

log = logging.getLogger("lmsleep")

MODES = ("constant", "ramp", "stages")
SETTINGS = ("passes", "window", "eviction", "grad_passes", "tbptt_windows", "state_mode")


class SleepSchedule(Callback):
    """Sets the sleep settings (and trainable parameters) of a :class:`~lmsleep.lit.LitLM` as training goes.

    Modes:
        ``constant``: ``settings`` (e.g. ``{passes: 4}``) from the start.
        ``ramp``: ``passes`` goes linearly from ``start`` to ``end`` between ``begin`` and ``until``
            (rounded to an int), other ``settings`` constant.
        ``stages``: a list of ``{at: <step or epoch>, <setting>: value, train: [groups], freeze: [groups]}``;
            each stage holds from its ``at`` until the next, and a setting it names holds until a later stage
            names it again. Groups are ``embed, head, norm, attn, ssm, mlp, all``
            (:mod:`lmsleep.models.groups`: the model says which parameters each holds, for
            :class:`~lmsleep.models.HybridLM` and a wrapped transformers model alike) or fnmatch patterns on
            parameter names; an entry that is neither stops the run at setup. The paper's recipe: an SSM-only
            warm-up under hard eviction (``{at: 0, eviction: hard, train: [ssm]}``), then the full model
            (``{at: 2000, train: [all]}``).

    The schedule is a pure function of the step (or epoch), so a resumed run continues it exactly. Under DDP,
    freezing parameters needs ``trainer.strategy=ddp_find_unused_parameters_true``.

    Args:
        mode: ``constant``, ``ramp`` or ``stages``.
        interval: ``step`` (optimizer steps) or ``epoch``.
        settings: sleep settings applied in every mode (``passes``, ``window``, ``eviction``, ...).
        start, end, begin, until: the ramp of ``passes``.
        stages: the stage list.
    """

    def __init__(
        self,
        mode: str = "constant",
        interval: str = "step",
        settings: dict[str, Any] | None = None,
        start: int = 1,
        end: int = 1,
        begin: int = 0,
        until: int = 1,
        stages: list[dict[str, Any]] | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"SleepSchedule mode={mode!r} is not one of {MODES}")
        if interval not in ("step", "epoch"):
            raise ValueError(f"SleepSchedule interval={interval!r} must be 'step' or 'epoch'")
        self.mode, self.interval = mode, interval
        self.settings = self._check_settings(dict(settings or {}), "settings")
        self.start, self.end, self.begin, self.until = int(start), int(end), int(begin), int(until)
        if mode == "ramp" and (self.start < 1 or self.end < 1 or self.until <= self.begin):
            raise ValueError(
                f"SleepSchedule ramp needs passes start, end >= 1 and until > begin, got {start, end, begin, until}"
            )
        self.stages = sorted((dict(s) for s in (stages or [])), key=lambda s: int(s.get("at", 0)))
        if mode == "stages":
            if not self.stages:
                raise ValueError("SleepSchedule mode='stages' needs a non-empty `stages` list")
            for i, stage in enumerate(self.stages):
                unknown = set(stage) - {"at", "train", "freeze", *SETTINGS}
                if unknown:
                    raise ValueError(
                        f"stage {i} has unknown keys {sorted(unknown)}; allowed: at, train, freeze, {SETTINGS}"
                    )
                self._check_settings({k: v for k, v in stage.items() if k in SETTINGS}, f"stage {i}")
        self.applied: dict[str, Any] = {}

    @staticmethod
    def _check_settings(settings: dict[str, Any], where: str) -> dict[str, Any]:
        unknown = set(settings) - set(SETTINGS)
        if unknown:
            raise ValueError(
                f"SleepSchedule {where} has unknown settings {sorted(unknown)}; allowed: {SETTINGS}"
            )
        SleepConfig(**{"passes": 1, "window": 1, **settings})  # validates values early
        return settings

    def at(self, t: int) -> tuple[dict[str, Any], int | None]:
        """(sleep settings, stage index) in force at step or epoch ``t``."""
        settings = dict(self.settings)
        if self.mode == "ramp":
            frac = min(1.0, max(0.0, (t - self.begin) / (self.until - self.begin)))
            settings["passes"] = round(self.start + frac * (self.end - self.start))
            return settings, None
        if self.mode == "stages":
            index = max((i for i, s in enumerate(self.stages) if int(s.get("at", 0)) <= t), default=0)
            for stage in self.stages[: index + 1]:  # a setting holds until a later stage changes it
                settings.update({k: v for k, v in stage.items() if k in SETTINGS})
            return settings, index
        return settings, None

    def _apply(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        t = trainer.global_step if self.interval == "step" else trainer.current_epoch
        settings, stage = self.at(t)
        new = replace(pl_module.sleep, **settings)
        if new != pl_module.sleep:
            log.info(f"SleepSchedule at {self.interval} {t}: {settings}")
            pl_module.sleep = new
        if stage is not None and stage != self.applied.get("stage"):
            self._set_trainable(pl_module, self.stages[stage])
        self.applied = {"t": t, "stage": stage, **settings}

    @staticmethod
    def _check_names(net: Any, groups: dict[str, set[str]], stages: list[dict[str, Any]]) -> None:
        """Every ``train``/``freeze`` entry is a group or a pattern that matches some parameter name: a typo
        (``train: [sssm]``) would otherwise freeze or train nothing without a word."""
        for i, stage in enumerate(stages):
            for entry in [*stage.get("train", []), *stage.get("freeze", [])]:
                if entry in GROUPS or any(fnmatch.fnmatch(name, entry) for name in groups):
                    continue
                raise ConfigError(
                    f"SleepSchedule stage {i}: {entry!r} is not a parameter group ({', '.join(GROUPS)}) and matches "
                    f"no parameter name of {type(net).__name__} (patterns are fnmatch, e.g. 'blocks.3.*')"
                )

    @classmethod
    def _set_trainable(cls, pl_module: L.LightningModule, stage: dict[str, Any]) -> None:
        train, freeze = list(stage.get("train", ["all"])), list(stage.get("freeze", []))
        net = pl_module.net
        groups = groups_of(net)  # the model says which of its parameters each group holds
        cls._check_names(net, groups, [{"train": train, "freeze": freeze}])

        def matches(name: str, names: list[str]) -> bool:
            return any(g in groups[name] or fnmatch.fnmatch(name, g) for g in names)

        trainable = 0
        for name, p in net.named_parameters():
            p.requires_grad_(matches(name, train) and not matches(name, freeze))
            trainable += p.numel() if p.requires_grad else 0
        if trainable == 0:
            raise ValueError(f"SleepSchedule stage {stage} leaves no trainable parameter")
        log.info(f"SleepSchedule stage {stage}: {trainable} trainable parameters")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # before any step (and before the sanity check): a stage naming nothing of this model stops the run
        if self.mode == "stages":
            self._check_names(pl_module.net, groups_of(pl_module.net), self.stages)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(trainer, pl_module)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._apply(trainer, pl_module)
        if self.applied.get("stage") is not None:
            pl_module.log("sleep/stage", float(self.applied["stage"]), on_step=True, on_epoch=False)

    def state_dict(self) -> dict[str, Any]:
        return {"applied": dict(self.applied)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # The schedule is recomputed from the step; forgetting the stage makes the first batch re-apply freezing.
        self.applied = {k: v for k, v in state_dict.get("applied", {}).items() if k != "stage"}
