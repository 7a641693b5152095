"""SleepMonitor: observes wake and sleep and writes what it sees to TensorBoard."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import lightning as L
import torch
from lightning import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from lmsleep.layers.fast_weight_mixer import FastWeightMixer, FastWeights
from lmsleep.models.state import ModelState


def _fast_weights(state: ModelState) -> dict[int, torch.Tensor]:
    return {i: s.S for i, s in enumerate(state.layers) if isinstance(s, FastWeights)}


class SleepMonitor(Callback):
    """Every ``every_n_steps`` training steps, logs for the sleeps of that step:

    - ``sleep_monitor/passes`` and ``sleep_monitor/sleeps`` (how many windows were consolidated),
    - ``sleep_monitor/seconds_per_sleep`` (wall time of passes 2..N of one window),
    - ``sleep_monitor/fast_weight_norm/layer<i>`` (Frobenius norm of S per example, after the last sleep),
    - ``sleep_monitor/rel_change/layer<i>/pass<p>`` (``||S_after - S_before|| / ||S_before||`` of pass p,
      averaged over the step's sleeps: how much each extra pass still rewrites the fast weights),
    - ``sleep_monitor/peak_kv`` (longest KV cache at the end of a wake, in tokens; at N = 1 all windows wake
      as one span, so this is the last window's),
    - histograms ``sleep_monitor/gates/layer<i>/{decay,write}`` of the fast-weight gates ``a_t`` and ``b_t``.

    Scalars and histograms go to the TensorBoard logger (histograms need one); nothing is logged elsewhere.
    """

    def __init__(self, every_n_steps: int = 50):
        if every_n_steps < 1:
            raise ValueError(f"SleepMonitor every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.active = False
        self.step = 0
        self._taps: list[Any] = []
        self._reset()

    def _reset(self) -> None:
        self.sleeps, self.seconds, self.peak_kv = 0, 0.0, 0
        self.rel_change: dict[tuple[int, int], list[float]] = defaultdict(list)
        self.norms: dict[int, float] = {}
        self.gates: dict[int, dict[str, torch.Tensor]] = {}
        self._t0 = 0.0

    def _mixers(self, pl_module: L.LightningModule) -> dict[int, FastWeightMixer]:
        blocks = getattr(pl_module.net, "blocks", [])
        return {i: b.mixer for i, b in enumerate(blocks) if isinstance(b.mixer, FastWeightMixer)}

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.active = trainer.is_global_zero and trainer.global_step % self.every_n_steps == 0
        # the step this batch is logged under (global_step has moved on by the batch's end)
        self.step = trainer.global_step
        self._reset()
        self._remove_taps()
        if self.active:  # forward hooks on the layers' gate taps record the last gates of this step
            for i, mixer in self._mixers(pl_module).items():
                self._taps.append(mixer.gate_tap.register_forward_hook(self._recorder(i)))

    def _recorder(self, layer: int):
        def record(module, inputs, output) -> None:
            log_a, b = output
            self.gates[layer] = {"decay": log_a.detach().exp(), "write": b.detach()}

        return record

    def _remove_taps(self) -> None:
        for handle in self._taps:
            handle.remove()
        self._taps = []

    # --- hooks from LitLM (wake/sleep phases) -----------------------------------------------------------
    def on_wake_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, window: int, state: ModelState
    ) -> None:
        if self.active and pl_module.training:
            self.peak_kv = max(self.peak_kv, state.kv_length())

    def on_sleep_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, window: int, passes: int
    ) -> None:
        if self.active and pl_module.training:
            self._t0 = time.perf_counter()

    def on_sleep_pass(
        self, trainer, pl_module, window: int, pass_index: int, before: ModelState, after: ModelState
    ) -> None:
        if not (self.active and pl_module.training):
            return
        b, a = _fast_weights(before), _fast_weights(after)
        with torch.no_grad():
            for i, S in a.items():
                if i in b and b[i] is not None:
                    rel = (S - b[i]).norm() / b[i].norm().clamp(min=1e-12)
                    self.rel_change[(i, pass_index)].append(float(rel))

    def on_sleep_end(self, trainer, pl_module, window: int, passes: int, state: ModelState) -> None:
        if not (self.active and pl_module.training):
            return
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self.seconds += time.perf_counter() - self._t0
        self.sleeps += 1
        with torch.no_grad():
            self.norms = {i: float(S.flatten(1).norm(dim=1).mean()) for i, S in _fast_weights(state).items()}

    # --- write ------------------------------------------------------------------------------------------
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx
    ) -> None:
        if not self.active:
            return
        writer = next((lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        self._remove_taps()
        if writer is None:
            return
        step = self.step
        scalars = {
            "sleep_monitor/passes": float(pl_module.sleep.passes),
            "sleep_monitor/sleeps": float(self.sleeps),
            "sleep_monitor/peak_kv": float(self.peak_kv),
        }
        if self.sleeps:
            scalars["sleep_monitor/seconds_per_sleep"] = self.seconds / self.sleeps
        scalars.update({f"sleep_monitor/fast_weight_norm/layer{i}": v for i, v in self.norms.items()})
        scalars.update(
            {
                f"sleep_monitor/rel_change/layer{i}/pass{p}": sum(v) / len(v)
                for (i, p), v in self.rel_change.items()
            }
        )
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, step)
        for i, gates in self.gates.items():
            for name, values in gates.items():
                writer.add_histogram(
                    f"sleep_monitor/gates/layer{i}/{name}", values.float().flatten().cpu(), step
                )
        self.gates = {}
