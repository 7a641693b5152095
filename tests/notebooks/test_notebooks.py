"""The notebooks' code cells run top to bottom (without Jupyter: cells are executed as one script)."""

from __future__ import annotations

import pytest

from tests.support import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, capsys, tmp_path, monkeypatch, run_notebook):
    monkeypatch.setenv("LMSLEEP_NOTEBOOK_FIGURES", str(tmp_path))  # results.ipynb saves its figures here
    run_notebook(path)
    assert capsys.readouterr().out.strip(), f"{path.name} printed nothing"


def test_there_is_a_notebook():
    assert NOTEBOOKS, "notebooks/ holds no .ipynb"
