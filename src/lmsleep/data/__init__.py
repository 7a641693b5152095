"""Tasks (deterministic, split-disjoint problem generators) and the DataModule that serves them."""

from lmsleep.data.datamodule import TaskDataModule, TaskDataset, collate
from lmsleep.data.depo import DepoTask
from lmsleep.data.gsm_inf import GSMInfTask
from lmsleep.data.rule110 import Rule110Task
from lmsleep.data.task import IGNORE_INDEX, Task
from lmsleep.data.vocab import Vocab

__all__ = [
    "IGNORE_INDEX",
    "DepoTask",
    "GSMInfTask",
    "Rule110Task",
    "Task",
    "TaskDataModule",
    "TaskDataset",
    "Vocab",
    "collate",
]
