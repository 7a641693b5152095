"""``scripts/gpu_check.sh --dry-run``: every step of the first GPU hour, end to end on CPU at tiny sizes, so
the script cannot rot before a GPU arrives. It needs no kernel package, but takes a minute or more, so it
runs with the kernel tests (``make test-kernels``, which CI runs) rather than in ``make test``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.kernels
from tests.support import REPO  # noqa: E402

SECTIONS = [
    "## Steps",
    "## Tests",
    "## Training step at the paper's size",
    "## Kernels against the torch chunked path",
    "## Wake latency",
    "## A 2-minute fit",
]


def test_gpu_check_dry_run_writes_the_report(tmp_path):
    out = tmp_path / "gpu_check"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    statuses = dict(line.split("\t")[:2] for line in (out / "steps.tsv").read_text().splitlines())
    assert set(statuses) == {"env", "install", "test-gpu", "kernels", "train", "ops", "wake", "fit"}
    assert {k for k, v in statuses.items() if v == "skipped"} == {"install", "kernels"}
    assert {v for k, v in statuses.items() if v != "skipped"} == {"0"}
    report = (out / "report.md").read_text()
    positions = [report.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    assert "No result" not in report
    for row in ("| 1 |", "| gated_delta_rule | fp32 | 64 |", "| hybrid N=4 | 128 |", "test/loss"):
        assert row in report
