"""Shared helpers of the foundation tests: composing configs in process, running the ``lmsleep`` CLI.

Runs are tiny (a few batches of a 16-wide model) and use one torch thread: on a 2-core machine shared with
other work, torch's intra-op threads make these tiny matmuls 10x slower, not faster.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"

# Overrides that make any TaskDataModule-based run tiny (the keys every data config has).
TINY_DATA = [
    "data.batch_size=4",
    "data.train_size=16",
    "data.val_size=8",
    "data.test_size=8",
    "data.num_workers=0",
]
TINY_MODEL = ["model.net.dim=16", "model.net.heads=2"]
TINY = TINY_DATA + TINY_MODEL


def config_names(group: str) -> list[str]:
    """Every option of a config group, found on disk (so configs added later are covered too)."""
    return sorted(
        str(p.relative_to(CONFIG_DIR / group).with_suffix("")) for p in (CONFIG_DIR / group).rglob("*.yaml")
    )


def compose_config(
    overrides: Sequence[str] = (), config_name: str = "fit", output_dir: Path | None = None
) -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` as ``lmsleep <command>`` would, with the run folder at
    ``output_dir`` (``paths.log_dir`` beside it). The ``hydra`` node is set as the current HydraConfig and
    removed from the returned config, as in a Hydra job."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        if output_dir is not None:
            cfg.paths.output_dir = str(output_dir)
            cfg.paths.log_dir = str(Path(output_dir).parent / "logs")
        del cfg["hydra"]
    return cfg


@pytest.fixture(scope="session")
def compose() -> object:
    """``compose(overrides, config_name="fit", output_dir=None)``: see :func:`compose_config`."""
    return compose_config


def run_notebook_cells(path: Path) -> dict:
    """Execute a notebook's code cells top to bottom as one script (no Jupyter); returns its namespace."""
    cells = json.loads(Path(path).read_text())["cells"]
    source = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    namespace = {"__name__": "__notebook__"}
    exec(compile(source, str(path), "exec"), namespace)
    return namespace


@pytest.fixture(scope="session")
def run_notebook() -> object:
    """``run_notebook(path) -> namespace``: see :func:`run_notebook_cells`."""
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
def compose_fit(tmp_path: Path):
    """``compose_fit(*overrides, config_name="fit")``: a config whose run folder is ``tmp_path / "run"``."""

    def make(*overrides: str, config_name: str = "fit") -> DictConfig:
        return compose_config(overrides, config_name, tmp_path / "run")

    return make


@pytest.fixture
def cfg_fit(compose_fit, one_thread) -> DictConfig:
    """A tiny ``fit`` config: Rule 110, transformer, fast_dev_run, run folder in tmp_path."""
    return compose_fit("debug=fdr", *TINY)


# Variables of the process running the tests (a DDP rank's, Hydra's) that a command under test must not inherit.
FOREIGN_ENV = (
    "LOCAL_RANK",
    "NODE_RANK",
    "WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "LMSLEEP_COMMAND",
    "HYDRA_FULL_ERROR",
)


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    for name in FOREIGN_ENV:
        env.pop(name, None)
    env.update(OMP_NUM_THREADS="1", COLUMNS="200", PYTHONUNBUFFERED="1", **(extra or {}))
    return env


def run_cli(
    *args: str,
    cwd: Path,
    timeout: float = 180,
    console_script: bool = False,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``lmsleep ARGS`` in a subprocess (``python -m lmsleep``, or the installed ``lmsleep`` script), with
    this process's environment less :data:`FOREIGN_ENV`, one torch thread, and ``env`` on top.

    The command runs in its own session; on timeout the whole group (DDP ranks included) is killed and the
    output so far is returned with return code -9 and a last line saying so.
    """
    script = Path(sys.executable).parent / "lmsleep"
    command = [str(script)] if console_script and script.exists() else [sys.executable, "-m", "lmsleep"]
    command += list(args)
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        env=cli_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        stderr += f"\n[run_cli] killed after {timeout} s: {' '.join(command)}\n"
        return subprocess.CompletedProcess(command, -9, stdout, stderr)
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def run_cli_in_process(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``lmsleep ARGS`` as ``lmsleep.cli.main(ARGS)`` in this process, from ``cwd``: a second instead of
    the seconds a new process spends importing torch, for cases that stop before any training.

    Returns what :func:`run_cli` does; the return code is the ``SystemExit`` status (0 when ``main`` returns).
    Any other exception propagates, so the test fails with its traceback where the command would have printed
    one. The working directory, ``sys.argv``, the environment, logging's handlers and levels, warning filters,
    torch's thread count and the random generators' states are restored afterwards: Hydra configures logging
    and Lightning seeds the generators for each run.
    """
    from lmsleep.cli import main

    root = logging.getLogger()
    saved_loggers = {
        name: (lg.level, list(lg.handlers), lg.propagate, lg.disabled)
        for name, lg in [("", root), *logging.Logger.manager.loggerDict.items()]
        if isinstance(lg, logging.Logger)
    }
    old_cwd, old_argv, old_env, old_threads = (
        os.getcwd(),
        list(sys.argv),
        dict(os.environ),
        torch.get_num_threads(),
    )
    old_random, old_torch_rng, old_numpy_rng = (
        random.getstate(),
        torch.random.get_rng_state(),
        np.random.get_state(),
    )
    stdout, stderr = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    try:
        os.chdir(cwd)
        for name in FOREIGN_ENV:
            os.environ.pop(name, None)
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(stdout),
            contextlib.redirect_stderr(stderr),
        ):
            try:
                main(list(args))
            except SystemExit as exc:
                code = exc.code
    finally:
        os.chdir(old_cwd)
        sys.argv[:] = old_argv
        os.environ.clear()
        os.environ.update(old_env)
        torch.set_num_threads(old_threads)
        random.setstate(old_random)
        torch.random.set_rng_state(old_torch_rng)
        np.random.set_state(old_numpy_rng)
        for name, (level, handlers, propagate, disabled) in saved_loggers.items():
            logger = logging.getLogger(name or None)
            for handler in logger.handlers:
                if handler not in handlers:
                    handler.close()
            logger.setLevel(level)
            logger.handlers[:] = handlers
            logger.propagate, logger.disabled = propagate, disabled
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): printed to stderr, status 1
        stderr.write(f"{code}\n")
        code = 1
    return subprocess.CompletedProcess(["lmsleep", *args], code, stdout.getvalue(), stderr.getvalue())


@pytest.fixture(scope="session")
def cli_in_process():
    """``cli_in_process(*args, cwd=...)``: see :func:`run_cli_in_process`."""
    return run_cli_in_process


@pytest.fixture(scope="session")
def cli():
    """``cli(*args, cwd=..., timeout=180, console_script=False, env=None)``: see :func:`run_cli`."""
    return run_cli


def check_disjoint_splits(task, n: int) -> dict[str, set[str]]:
    """Draw ``n`` samples of each split; assert no problem key is in two splits and every sample's key hashes
    to its own split. Returns the keys found per split."""
    found: dict[str, set[str]] = {}
    for split in ("train", "val", "test"):
        found[split] = set()
        for i in range(n):
            problem = task.sample(split, i)
            assert task.split_of(problem) == split
            found[split].add(task.key(problem))
    assert not found["train"] & found["val"]
    assert not found["train"] & found["test"]
    assert not found["val"] & found["test"]
    return found


@pytest.fixture(scope="session")
def disjoint_splits():
    """``disjoint_splits(task, n)``: see :func:`check_disjoint_splits`."""
    return check_disjoint_splits
