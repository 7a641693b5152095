"""A DataLoader that Lightning can resume in the middle of an epoch.

Lightning saves the ``state_dict`` of a training DataLoader that has one and calls ``load_state_dict`` on
resume. Ours counts the batches it has handed out; on resume its batch sampler skips that many batches of
*indices*, so the skipped samples are never generated and the resumed run sees exactly the batches the
uninterrupted run would have seen next.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import BatchSampler, DataLoader, Sampler


class SkippingBatchSampler(BatchSampler):
    """A :class:`BatchSampler` whose next iteration drops its first ``skip`` batches (then resets ``skip``)."""

    def __init__(self, sampler: Sampler[int], batch_size: int, drop_last: bool = False):
        super().__init__(sampler, batch_size, drop_last)
        self.skip = 0

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.skip = self.skip, 0
        for i, batch in enumerate(super().__iter__()):
            if i >= skip:
                yield batch


class ResumableDataLoader(DataLoader):
    """A DataLoader with ``state_dict``/``load_state_dict`` = the number of batches of this epoch handed out.

    Build it with ``batch_sampler=SkippingBatchSampler(...)``.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._handed_out = 0

    def __iter__(self):
        sampler = self.batch_sampler
        self._handed_out = getattr(sampler, "skip", 0)
        for batch in super().__iter__():
            self._handed_out += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"batches": self._handed_out}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if not isinstance(self.batch_sampler, SkippingBatchSampler):
            raise TypeError("ResumableDataLoader needs a SkippingBatchSampler to resume mid-epoch")
        self.batch_sampler.skip = int(state_dict.get("batches", 0))
