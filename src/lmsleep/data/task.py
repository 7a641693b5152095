"""The task interface: deterministic, split-disjoint generation of token problems.

A task turns a random generator into a *problem* (the raw, human-checkable facts: states and steps, edges
and queries, a program) and encodes it as ``input_ids`` and ``labels`` of equal length, where
``labels[t]`` is the target for the model's output at position ``t`` and ``-100`` means no loss (the Hugging
Face convention after its internal shift: for next-token prediction ``labels[t] = input_ids[t + 1]``).

Determinism and disjoint splits (docs/design.md#tasks): sample ``index`` of ``split`` is drawn from a
generator seeded by ``(task name, seed, split, index, attempt)``; a candidate is kept only if the hash of its
canonical key falls in the split's bucket, so no problem can be in two splits, whatever the seeds, ranks or
workers.
"""

from __future__ import annotations

import hashlib
import random
import re
from abc import ABC, abstractmethod
from typing import Any

from lmsleep.data.vocab import Vocab

IGNORE_INDEX = -100

# Share of the key-hash space that belongs to each split (out of 1000).
SPLIT_BUCKETS: dict[str, tuple[int, int]] = {"train": (0, 900), "val": (900, 950), "test": (950, 1000)}
MAX_ATTEMPTS = 20_000


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


class Task(ABC):
    """Base class of the synthetic tasks.

    Subclasses define ``name``, build ``self.vocab`` in ``__init__``, and implement :meth:`generate`,
    :meth:`key`, :meth:`encode` and :meth:`depth`. ``window`` is the sleep/eviction window L the task was
    designed for; ``max_length`` bounds every encoded sample.
    """

    name: str = "task"
    depth_name: str = "depth"

    def __init__(self, seed: int = 0, window: int = 16):
        if window < 1:
            raise ValueError(f"window L must be >= 1 token, got {window}")
        self.seed = int(seed)
        self.window = int(window)
        self.vocab: Vocab

    # --- what a subclass provides -------------------------------------------------------------------
    @abstractmethod
    def generate(self, rng: random.Random) -> dict[str, Any]:
        """Draw one raw problem (JSON-serialisable) from ``rng``."""

    @abstractmethod
    def key(self, problem: dict[str, Any]) -> str:
        """A canonical string that identifies the problem (equal problems, equal keys)."""

    @abstractmethod
    def encode(self, problem: dict[str, Any]) -> tuple[list[int], list[int]]:
        """Token ids and aligned labels (``-100`` = no loss) of a problem."""

    @abstractmethod
    def depth(self, problem: dict[str, Any]) -> int:
        """The problem's depth on the task's difficulty axis (steps t, hops k, operations)."""

    @property
    @abstractmethod
    def max_length(self) -> int:
        """Upper bound on ``len(input_ids)`` of every sample."""

    @property
    def depths(self) -> list[int]:
        """Every depth a sample can have, for depth-stratified metrics."""
        return []

    def answer_depths(self, problem: dict[str, Any], labels: list[int]) -> list[int] | None:
        """Per position, the depth of the answer a labelled position belongs to, when the answers of one
        problem differ in depth (else None: every answer has the problem's :meth:`depth`)."""
        return None

    # --- shared machinery ----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def sample(self, split: str, index: int) -> dict[str, Any]:
        """Problem ``index`` of ``split``: the raw fields plus ``input_ids``, ``labels`` and ``depth``."""
        if split not in SPLIT_BUCKETS:
            raise ValueError(f"unknown split {split!r}; valid splits are {sorted(SPLIT_BUCKETS)}")
        if index < 0:
            raise ValueError(f"sample index must be >= 0, got {index}")
        for attempt in range(MAX_ATTEMPTS):
            rng = random.Random(_stable_int(f"{self.name}|{self.seed}|{split}|{index}|{attempt}"))
            problem = self.generate(rng)
            if self.split_of(problem) == split:
                break
        else:
            raise ValueError(
                f"{self.name}: found no problem for split {split!r} in {MAX_ATTEMPTS} draws; the task's "
                "problem space is too small to give disjoint train/val/test splits. Make it larger "
                "(e.g. a wider state, more states, a larger step or hop range)."
            )
        input_ids, labels = self.encode(problem)
        if len(input_ids) != len(labels):
            raise AssertionError(
                f"{self.name}: encode returned {len(input_ids)} ids but {len(labels)} labels"
            )
        if len(input_ids) > self.max_length:
            raise AssertionError(
                f"{self.name}: sample of {len(input_ids)} tokens exceeds max_length {self.max_length}"
            )
        sample = {**problem, "input_ids": input_ids, "labels": labels, "depth": self.depth(problem)}
        answer_depths = self.answer_depths(problem, labels)
        if answer_depths is not None:
            sample["answer_depth"] = answer_depths
        return sample

    def split_of(self, problem: dict[str, Any]) -> str:
        """The split a problem belongs to (its key's bucket)."""
        bucket = _stable_int(f"{self.name}|{self.key(problem)}") % 1000
        return next(s for s, (lo, hi) in SPLIT_BUCKETS.items() if lo <= bucket < hi)

    def decode(self, ids: list[int]) -> str:
        return self.vocab.decode(ids)

    def export(self, split: str, index: int) -> dict[str, Any]:
        """One JSON-lines record: the sample with its decoded ``text``."""
        record = self.sample(split, index)
        record["text"] = self.decode(record["input_ids"])
        record["split"] = split
        record["index"] = index
        return record


def parse_range(value: int | list[int] | tuple[int, int] | str, what: str) -> tuple[int, int]:
    """Accept ``4``, ``[4, 16]`` or ``"4-16"`` and return an inclusive ``(lo, hi)`` range."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*)?", value)
        if match is None:
            raise ValueError(
                f"{what} must be an int or an inclusive range 'lo-hi' or [lo, hi], got {value!r}"
            )
        value = [int(g) for g in match.groups() if g is not None]
    if isinstance(value, int):
        return int(value), int(value)
    value = list(value)
    if len(value) == 1:
        return int(value[0]), int(value[0])
    if len(value) != 2 or value[0] > value[1]:
        raise ValueError(f"{what} must be an int or an inclusive range [lo, hi] with lo <= hi, got {value}")
    return int(value[0]), int(value[1])


def known_tasks() -> dict[str, type[Task]]:
    """Every task class imported so far (lmsleep's own, and any the running program imported), by the dotted
    names a config may give it: its module's (``lmsleep.data.rule110.Rule110Task``) and its package's
    (``lmsleep.data.Rule110Task``)."""
    found: dict[str, type[Task]] = {}
    todo = list(Task.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if not getattr(cls, "__abstractmethods__", None):
            found[f"{cls.__module__}.{cls.__qualname__}"] = cls
            found[f"{cls.__module__.rsplit('.', 1)[0]}.{cls.__qualname__}"] = cls
    return found


def task_from_config(conf: dict[str, Any], where: str = "data.task") -> Task:
    """A task built from a plain config node read from a file someone else may have written (a run folder's
    ``config.yaml``): unlike Hydra's ``instantiate``, it builds only a task class already imported (it never
    imports what the file names) and passes only plain values (a nested ``_target_`` is not called)."""
    kwargs = dict(conf)
    target = str(kwargs.pop("_target_", ""))
    cls = known_tasks().get(target)
    if cls is None:
        raise ValueError(
            f"{where}._target_={target} is not a task lmsleep knows ({', '.join(sorted(set(known_tasks())))}); "
            "a config read from a file is built only from tasks already imported, so it never runs code the "
            "file names: import your task's module first and call lmsleep's Python API"
        )
    nested = [
        k for k, v in kwargs.items() if isinstance(v, dict) or (isinstance(k, str) and k.startswith("_"))
    ]
    if nested:
        raise ValueError(f"{where}.{nested[0]} is not a plain setting (a config node or a Hydra key)")
    return cls(**kwargs)
