"""ValidationPictures: figures in TensorBoard at the end of every validation."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from lmsleep.data.datamodule import collate
from lmsleep.data.task import IGNORE_INDEX


class ValidationPictures(Callback):
    """At each validation end (rank 0, TensorBoard logger only), adds to TensorBoard:

    - ``pictures/acc_by_<depth>`` and ``pictures/acc_exact_by_<depth>``: bar charts of the validation accuracy
      per depth bucket (the per-depth learning curves are the ``val/acc@...`` scalars);
    - ``pictures/rule110``: space-time diagrams of ``num_samples`` validation samples with the predicted and
      true answer bits marked (Rule 110 only);
    - text data (no task): ``pictures/bpb_by_window``, the validation bits per byte by window index within
      the sequence (the per-window curves are the ``val/bpb@window=...`` scalars).
    """

    def __init__(self, num_samples: int = 4):
        self.num_samples = num_samples

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        writer = next((lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        datamodule = getattr(trainer, "datamodule", None)
        if writer is None or datamodule is None:
            return
        from lmsleep.reporting.plots import depth_bar_figure, rule110_figure

        step = trainer.global_step
        metrics = {
            k.split("/", 1)[1]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")
        }
        task = getattr(datamodule, "task", None)
        if task is None:  # text: bits per byte by window, unbounded above
            writer.add_figure(
                "pictures/bpb_by_window", depth_bar_figure(metrics, "window", "bpb", None), step
            )
            return
        for metric in ("acc", "acc_exact"):
            writer.add_figure(
                f"pictures/{metric}_by_{task.depth_name}",
                depth_bar_figure(metrics, task.depth_name, metric),
                step,
            )
        if task.name == "rule110" and self.num_samples > 0:
            samples = [task.sample("val", i) for i in range(self.num_samples)]
            writer.add_figure(
                "pictures/rule110", rule110_figure(samples, self._answers(pl_module, samples, task)), step
            )

    @staticmethod
    @torch.no_grad()
    def _answers(pl_module: L.LightningModule, samples: list[dict[str, Any]], task) -> list[list[int]]:
        """The model's predicted bit at every query position (-1 where it predicts a non-bit token)."""
        batch = collate(samples, task.vocab.pad_id)
        was_training = pl_module.training
        pl_module.eval()
        logits, _ = pl_module(batch["input_ids"].to(pl_module.device))
        pl_module.train(was_training)
        predicted = logits.argmax(-1).cpu()
        bit = {task.vocab.id("0"): 0, task.vocab.id("1"): 1}
        return [
            [bit.get(int(p), -1) for p in predicted[b][batch["labels"][b] != IGNORE_INDEX]]
            for b in range(len(samples))
        ]
