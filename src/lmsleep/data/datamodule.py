"""A LightningDataModule that serves any :class:`~lmsleep.data.task.Task`."""

from __future__ import annotations

from functools import partial
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from lmsleep.data.resumable import ResumableDataLoader, SkippingBatchSampler
from lmsleep.data.task import IGNORE_INDEX, Task


class TaskDataset(Dataset):
    """Samples ``offset .. offset + size - 1`` of one split of a task, generated on access.

    Generation is a pure function of ``(task seed, split, index)``, so data-loader workers and DDP ranks
    (which receive disjoint index sets from their samplers) produce disjoint, reproducible samples.
    """

    def __init__(self, task: Task, split: str, size: int, offset: int = 0):
        if size < 1:
            raise ValueError(f"{split} dataset size must be >= 1, got {size}")
        self.task, self.split, self.size, self.offset = task, split, int(size), int(offset)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.size:
            raise IndexError(i)
        return self.task.sample(self.split, self.offset + i)


def collate(samples: list[dict[str, Any]], pad_id: int = 0, multiple_of: int = 1) -> dict[str, torch.Tensor]:
    """Right-pad ``input_ids`` (with ``pad_id``) and ``labels`` (with -100) to a common length.

    Returns ``input_ids`` and ``labels`` ``[B, T]`` (long) and ``depth`` ``[B]`` (long), and
    ``answer_depth`` ``[B, T]`` (the depth of each labelled position's answer) when the samples carry it.
    """
    longest = max(len(s["input_ids"]) for s in samples)
    length = -(-longest // multiple_of) * multiple_of
    ids = torch.full((len(samples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
    for b, s in enumerate(samples):
        n = len(s["input_ids"])
        ids[b, :n] = torch.as_tensor(s["input_ids"])
        labels[b, :n] = torch.as_tensor(s["labels"])
    depth = torch.as_tensor([s["depth"] for s in samples], dtype=torch.long)
    batch = {"input_ids": ids, "labels": labels, "depth": depth}
    if any("answer_depth" in s for s in samples):
        answer_depth = depth[:, None].repeat(1, length)
        for b, s in enumerate(samples):
            if "answer_depth" in s:
                answer_depth[b, : len(s["answer_depth"])] = torch.as_tensor(s["answer_depth"])
        batch["answer_depth"] = answer_depth
    return batch


class TaskDataModule(L.LightningDataModule):
    """Train/val/test loaders over a task.

    The training set is ``train_size`` fresh samples per epoch: epoch ``e`` reads indices
    ``e * train_size ...`` (requires ``reload_dataloaders_every_n_epochs=1``, set by our trainer configs),
    so a long run never repeats a training sample; a run resumed from a mid-epoch checkpoint continues with
    the batch it would have seen next (:class:`ResumableDataLoader`).

    Args:
        task: the task (instantiated by Hydra from ``data.task``).
        batch_size: per-device batch size.
        train_size, val_size, test_size: samples per epoch / in the fixed evaluation splits.
        num_workers: data-loader worker processes.
        fresh_train_samples: read new training samples every epoch (False: the same ones, to overfit).
        window: the window L the model's sleep follows (``data.window``, which every data config defines
            and ``model.sleep.window`` reads); it must be the task's own window. None: the task's.
    """

    def __init__(
        self,
        task: Task,
        batch_size: int = 64,
        train_size: int = 10_000,
        val_size: int = 512,
        test_size: int = 1024,
        num_workers: int = 0,
        fresh_train_samples: bool = True,
        window: int | None = None,
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        for name, size in (("train_size", train_size), ("val_size", val_size), ("test_size", test_size)):
            if int(size) < 1:
                raise ValueError(f"data.{name} must be >= 1 sample, got {size}")
        if window is not None and int(window) != task.window:
            raise ValueError(
                f"data.window={window} differs from the task's window data.task.window={task.window}; "
                "set data.task.window (data.window follows it) or model.sleep.window for the model alone"
            )
        self.task = task
        self.window = task.window
        self.batch_size = int(batch_size)
        self.sizes = {"train": int(train_size), "val": int(val_size), "test": int(test_size)}
        self.num_workers = int(num_workers)
        self.fresh_train_samples = fresh_train_samples
        self.save_hyperparameters(ignore=["task"], logger=False)

    @property
    def vocab_size(self) -> int:
        return self.task.vocab_size

    def _loader(self, split: str) -> DataLoader:
        return DataLoader(
            TaskDataset(self.task, split, self.sizes[split]),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=partial(collate, pad_id=self.task.vocab.pad_id),
        )

    def train_dataloader(self) -> DataLoader:
        epoch = self.trainer.current_epoch if (self.trainer is not None and self.fresh_train_samples) else 0
        dataset = TaskDataset(self.task, "train", self.sizes["train"], offset=epoch * self.sizes["train"])
        # Resumable mid-epoch: Lightning saves how many batches were handed out and the sampler skips them.
        return ResumableDataLoader(
            dataset,
            batch_sampler=SkippingBatchSampler(SequentialSampler(dataset), self.batch_size, drop_last=False),
            num_workers=self.num_workers,
            collate_fn=partial(collate, pad_id=self.task.vocab.pad_id),
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
