"""What the tests share: the repository's paths, composing a config as ``lmsleep`` would, running the
``lmsleep`` command (or any Python code) in a subprocess or in process, and reading a run's CSV log.

Importable as ``tests.support`` in the test process and in a subprocess that has the repository root on
``PYTHONPATH`` (:func:`run_python` puts it there; :func:`run_cli` with ``env={"PYTHONPATH":
repo_on_pythonpath()}``). Fixtures that hand these out are in tests/conftest.py. Runs are tiny (a few batches
of a 16-wide model) and use one torch thread: on a 2-core machine shared with other work, torch's intra-op
threads make these tiny matmuls 10x slower.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import random
import signal
import subprocess
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

REPO = Path(__file__).resolve().parents[2]
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
    """Every option of a config group, found on disk (so configs added later are covered too); nested ones
    by their path (``paper/rule110_sleep``)."""
    return sorted(
        str(p.relative_to(CONFIG_DIR / group).with_suffix("")) for p in (CONFIG_DIR / group).rglob("*.yaml")
    )


def compose_config(
    overrides: Sequence[str] = (),
    config_name: str = "fit",
    output_dir: Path | None = None,
    keep_callbacks: Sequence[str] | None = None,
    keep_hydra: bool = False,
) -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` as ``lmsleep <command>`` would, with the run folder at
    ``output_dir`` (``paths.log_dir`` beside it). The ``hydra`` node is set as the current HydraConfig and
    removed from the returned config, as in a Hydra job (``keep_hydra`` keeps it, to read ``hydra.run.dir``).
    ``keep_callbacks`` drops every other callback entry (progress bars, pictures, ...: only what a test needs,
    whatever the defaults grow into)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    if keep_hydra:
        return cfg
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        if output_dir is not None:
            cfg.paths.output_dir = str(output_dir)
            cfg.paths.log_dir = str(Path(output_dir).parent / "logs")
        del cfg["hydra"]
        if keep_callbacks is not None and cfg.get("callbacks"):
            for name in list(cfg.callbacks):
                if name not in keep_callbacks:
                    del cfg.callbacks[name]
    return cfg


def run_notebook_cells(path: Path) -> dict:
    """Execute a notebook's code cells top to bottom as one script (no Jupyter); returns its namespace."""
    cells = json.loads(Path(path).read_text())["cells"]
    source = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    namespace = {"__name__": "__notebook__"}
    exec(compile(source, str(path), "exec"), namespace)
    return namespace


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


def cli_env(extra: dict[str, str] | None = None, drop: Sequence[str] = ()) -> dict[str, str]:
    """This process's environment less :data:`FOREIGN_ENV` and ``drop``, with one torch thread, unbuffered
    output, a wide terminal, and ``extra`` on top."""
    env = dict(os.environ)
    for name in (*FOREIGN_ENV, *drop):
        env.pop(name, None)
    env.update(OMP_NUM_THREADS="1", COLUMNS="200", PYTHONUNBUFFERED="1", **(extra or {}))
    return env


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of ``proc`` (a command started by :func:`start`: it and its DDP ranks)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def start(
    command: Sequence[str | os.PathLike],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    drop_env: Sequence[str] = (),
    stderr: int = subprocess.PIPE,
) -> subprocess.Popen:
    """Start ``command`` in its own session (so :func:`kill_group` ends it and whatever it launched), with
    :func:`cli_env`'s environment (``env`` on top, ``drop_env`` removed), text pipes for stdout and ``stderr``
    (``subprocess.STDOUT`` merges them)."""
    return subprocess.Popen(
        [str(c) for c in command],
        cwd=cwd,
        env=cli_env(env, drop_env),
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        start_new_session=True,
    )


def lmsleep_command(*args: str, console_script: bool = False) -> list[str]:
    """``python -m lmsleep ARGS``, or the installed ``lmsleep`` script where asked and present."""
    script = Path(sys.executable).parent / "lmsleep"
    command = [str(script)] if console_script and script.exists() else [sys.executable, "-m", "lmsleep"]
    return command + list(args)


def start_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, stderr: int = subprocess.PIPE):
    """Start ``lmsleep ARGS`` (``python -m lmsleep``) with :func:`start`; the caller waits for it."""
    return start(lmsleep_command(*args), cwd=cwd, env=env, stderr=stderr)


def run(
    command: Sequence[str | os.PathLike],
    cwd: Path | None = None,
    timeout: float = 180,
    env: dict[str, str] | None = None,
    drop_env: Sequence[str] = (),
) -> subprocess.CompletedProcess:
    """Run ``command`` to its end with :func:`start`. On timeout the whole group (DDP ranks included) is killed
    and the output so far is returned with return code -9 and a last line saying so."""
    proc = start(command, cwd=cwd, env=env, drop_env=drop_env)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        stdout, stderr = proc.communicate()
        stderr += f"\n[run] killed after {timeout} s: {' '.join(map(str, command))}\n"
        return subprocess.CompletedProcess(proc.args, -9, stdout, stderr)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def run_cli(
    *args: str,
    cwd: Path,
    timeout: float = 180,
    console_script: bool = False,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``lmsleep ARGS`` in a subprocess (``python -m lmsleep``, or the installed ``lmsleep`` script), with
    this process's environment less :data:`FOREIGN_ENV`, one torch thread, and ``env`` on top: see :func:`run`.
    """
    return run(lmsleep_command(*args, console_script=console_script), cwd=cwd, timeout=timeout, env=env)


def repo_on_pythonpath() -> str:
    """``PYTHONPATH`` with the repository root first (so a subprocess can import ``tests.support``), keeping
    what this process had (a worktree's ``src``, say)."""
    return os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)


def run_python(
    code: str, *args: str, cwd: Path = REPO, timeout: float = 180, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -c CODE ARGS`` with :func:`run`, the repository root on ``PYTHONPATH`` (so the code can
    import ``tests.support``) unless ``env`` says otherwise."""
    return run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        timeout=timeout,
        env={"PYTHONPATH": repo_on_pythonpath(), **(env or {})},
    )


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


def csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file with a header (a CSVLogger's ``metrics.csv``, a report's raw ``*.csv``)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def logged_scalars(path: Path) -> dict[tuple[int, str], str]:
    """``{(step, name): value}`` of every scalar in a CSVLogger's ``metrics.csv``."""
    return {
        (int(row["step"]), name): value
        for row in csv_rows(path)
        for name, value in row.items()
        if value and name not in ("step", "epoch")
    }


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
