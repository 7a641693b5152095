"""Fixtures of the model tests: one torch thread and a fixed seed for every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread_and_seed() -> Iterator[None]:
    # Tiny matmuls on a 2-core machine shared with other work are much slower with several intra-op threads.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
