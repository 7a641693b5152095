"""Fixtures of the whole suite. The helpers they hand out live in tests/support (importable as
``tests.support``); a test module may import them from there directly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from tests.support import (
    TINY,
    check_disjoint_splits,
    compose_config,
    run_cli,
    run_cli_in_process,
    run_notebook_cells,
)


@pytest.fixture(scope="session")
def compose() -> object:
    """``compose(overrides, config_name="fit", output_dir=None)``: see :func:`tests.support.compose_config`."""
    return compose_config


@pytest.fixture(scope="session")
def run_notebook() -> object:
    """``run_notebook(path) -> namespace``: see :func:`tests.support.run_notebook_cells`."""
    return run_notebook_cells


@pytest.fixture(scope="session")
def tiny() -> list[str]:
    """Overrides that make a Rule 110 / transformer run tiny."""
    return list(TINY)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for the tests of a module (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def one_thread_and_seed() -> Iterator[None]:
    """One torch thread and ``torch.manual_seed(0)`` for a test (the thread count restored after): autouse in
    tests/models and tests/layers, asked for by the model-level tests elsewhere."""
    # Tiny matmuls on a 2-core machine shared with other work are much slower with several intra-op threads.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def compose_fit(tmp_path: Path):
    """``compose_fit(*overrides, config_name="fit")``: a config whose run folder is ``tmp_path / "run"``."""

    def make(*overrides: str, config_name: str = "fit") -> DictConfig:
        return compose_config(overrides, config_name, tmp_path / "run")

    return make


@pytest.fixture
def cfg_fit(compose_fit, one_thread) -> DictConfig:
    """A tiny ``fit`` config: Rule 110, transformer, fast_dev_run, run folder in tmp_path."""
    return compose_fit("debug=fdr", *TINY)


@pytest.fixture(scope="session")
def cli_in_process():
    """``cli_in_process(*args, cwd=...)``: see :func:`tests.support.run_cli_in_process`."""
    return run_cli_in_process


@pytest.fixture(scope="session")
def cli():
    """``cli(*args, cwd=..., timeout=180, console_script=False, env=None)``: see
    :func:`tests.support.run_cli`."""
    return run_cli


@pytest.fixture(scope="session")
def disjoint_splits():
    """``disjoint_splits(task, n)``: see :func:`tests.support.check_disjoint_splits`."""
    return check_disjoint_splits
