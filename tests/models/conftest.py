"""Fixtures of the model tests: one torch thread and a fixed seed for every test."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread_and_seed(one_thread_and_seed) -> None:
    """tests/conftest.py's ``one_thread_and_seed`` for every test here."""
