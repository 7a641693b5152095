"""Every committed study in results/ rebuilds from its raw files: its summary.md starts with exactly the tables
``lmsleep report results/<study>/raw`` writes (a study reported with ``baseline=`` adds its paired sections
after them, and a queued study ends with its runs' revisions and wall times), so no number in results/ exists
only as text."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmsleep.reporting.provenance import provenance_table
from lmsleep.reporting.report import load_raw, summary_table

RESULTS = Path(__file__).resolve().parents[2] / "results"
STUDIES = sorted(p.parent for p in RESULTS.glob("**/raw") if (p.parent / "summary.md").is_file())


def test_there_are_committed_studies():
    assert len(STUDIES) >= 5


@pytest.mark.parametrize("study", STUDIES, ids=lambda p: str(p.relative_to(RESULTS)))
def test_the_committed_summary_rebuilds_from_raw(study):
    committed = (study / "summary.md").read_text()
    groups = load_raw(study / "raw")
    rebuilt = summary_table(groups)
    assert committed.startswith(rebuilt), (
        f"{study}/summary.md differs from its raw files: rerun lmsleep report"
    )
    # then any paired sections, and last the queue's table of revisions and wall times, also from raw
    rest = committed[len(rebuilt) :]
    runs = provenance_table(groups)
    assert rest.endswith(runs), f"{study}/summary.md: its runs table differs from its raw files"
    rest = rest[: len(rest) - len(runs)].strip("\n")
    assert not rest or rest.startswith("Paired by seed against the baseline")
