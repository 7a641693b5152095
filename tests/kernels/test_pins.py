"""The versions the interpreter patches rely on are the ones ``make test-kernels`` installs (runs in
``make test``: no kernel package needed)."""

from __future__ import annotations

import re
from pathlib import Path

from interpreter_patches import PINNED

MAKEFILE = Path(__file__).resolve().parents[2] / "Makefile"


def test_makefile_installs_the_pinned_versions():
    pins = dict(re.findall(r"\b(fla-core|triton|mamba-ssm)==([\w.]+)", MAKEFILE.read_text()))
    assert pins == PINNED
