"""Every committed study in results/ rebuilds from its raw files: its summary.md starts with exactly the tables
``lmsleep report results/<study>/raw`` writes (a study reported with ``baseline=`` adds its paired sections
after them), so no number in results/ exists only as text."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmsleep.reporting.report import load_raw, summary_table

RESULTS = Path(__file__).resolve().parents[2] / "results"
STUDIES = sorted(p.parent for p in RESULTS.glob("**/raw") if (p.parent / "summary.md").is_file())


def test_there_are_committed_studies():
    assert len(STUDIES) >= 5


@pytest.mark.parametrize("study", STUDIES, ids=lambda p: str(p.relative_to(RESULTS)))
def test_the_committed_summary_rebuilds_from_raw(study):
    committed = (study / "summary.md").read_text()
    rebuilt = summary_table(load_raw(study / "raw"))
    assert committed.startswith(rebuilt), (
        f"{study}/summary.md differs from its raw files: rerun lmsleep report"
    )
    rest = committed[len(rebuilt) :]
    assert not rest or rest.lstrip("\n").startswith("Paired by seed against the baseline")
