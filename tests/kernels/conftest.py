"""The kernel tests: each suite of ``kernel_cases.py`` runs once, in a subprocess under the Triton
interpreter, and every case becomes one test. ``make test-kernels`` installs the pinned packages and runs
them; the plain ``make test`` deselects the ``kernels`` marker. With ``LMSLEEP_KERNELS_NATIVE=1`` on a CUDA
machine the same cases run the compiled kernels on the GPU instead (``scripts/gpu_check.sh``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from interpreter_patches import missing

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"
_RESULTS: dict[str, dict[str, dict]] = {}
NATIVE = os.environ.get("LMSLEEP_KERNELS_NATIVE") == "1"


def run_suite(suite: str) -> dict[str, dict]:
    """``{case: result}`` of one suite, computed once per session."""
    if suite not in _RESULTS:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run(
            [sys.executable, str(HERE / "kernel_cases.py"), suite],
            capture_output=True,
            text=True,
            env=env,
            timeout=1800,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"kernel_cases.py {suite} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
            )
        rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        _RESULTS[suite] = {row["case"]: row for row in rows}
    return _RESULTS[suite]


@pytest.fixture
def kernel_result():
    """``kernel_result(suite, case)``: that case's errors; skips (one line) without the kernel packages."""
    if NATIVE:
        import torch

        if not torch.cuda.is_available():
            pytest.skip("LMSLEEP_KERNELS_NATIVE=1 needs CUDA")
    elif reason := missing():
        pytest.skip(reason)

    def get(suite: str, case: str) -> dict:
        result = run_suite(suite)[case]
        if "error" in result:
            pytest.fail(f"{suite}/{case} raised:\n{result['error']}", pytrace=False)
        return result

    return get


def pytest_terminal_summary(terminalreporter) -> None:
    """The error figures of every case that ran: max |kernel - torch| / max |torch| per case."""
    if not _RESULTS:
        return
    write = terminalreporter.write_line
    terminalreporter.section("kernel vs torch chunked (relative max error)")
    for suite, rows in _RESULTS.items():
        for name, row in rows.items():
            if "error" in row:
                write(f"{suite:5} {name:28} ERROR")
                continue
            if suite == "model":
                figures = "  ".join(f"{k} {row[k]:.1e}" for k in ("logits", "loss", "grads"))
                write(f"{suite:5} {name:28} {figures} (worst grad: {row['worst_grad']})")
                continue
            figures = {k: v for k, v in row.items() if isinstance(v, float)}
            worst = max((k for k in figures if not k.endswith("fp64")), key=figures.get)
            write(
                f"{suite:5} {name:28} worst {figures[worst]:.1e} ({worst})  kernel vs fp64 "
                f"{figures['worst_vs_fp64']:.1e} (torch {figures['torch_worst_vs_fp64']:.1e})"
            )
