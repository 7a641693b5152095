"""Tasks (deterministic, split-disjoint problem generators) and the DataModule that serves them; your own text
(``TextDataModule``, ``data=text``)."""

from lmsleep.data.datamodule import TaskDataModule, TaskDataset, collate
from lmsleep.data.depo import DepoTask
from lmsleep.data.gsm_inf import GSMInfTask
from lmsleep.data.gsm_inf_text import GSMInfTextTask
from lmsleep.data.rule110 import Rule110Task
from lmsleep.data.task import IGNORE_INDEX, Task
from lmsleep.data.text import TextDataModule
from lmsleep.data.tokenizer import ByteTokenizer, TokenizersTokenizer, load_tokenizer
from lmsleep.data.vocab import Vocab

__all__ = [
    "IGNORE_INDEX",
    "ByteTokenizer",
    "DepoTask",
    "GSMInfTask",
    "GSMInfTextTask",
    "Rule110Task",
    "Task",
    "TaskDataModule",
    "TaskDataset",
    "TextDataModule",
    "TokenizersTokenizer",
    "Vocab",
    "collate",
    "load_tokenizer",
]
