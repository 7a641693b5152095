"""reporting/provenance.py: the queue's records of a run folder, read back for its raw JSON."""

from __future__ import annotations

import json

from lmsleep.reporting.provenance import ATTEMPTS, DONE, provenance_table, queue_record


def test_queue_record_sums_the_pieces_of_a_resumed_run_and_names_each_revision_once(tmp_path):
    assert queue_record(tmp_path) is None  # a plain `lmsleep fit` folder
    (tmp_path / ATTEMPTS).write_text(
        "".join(
            json.dumps({"revision": rev, "seconds": s}) + "\n"
            for rev, s in (("b" * 40, 10.04), ("b" * 40, 20.0), ("c" * 40 + "+uncommitted", 5.0))
        )
    )
    record = queue_record(tmp_path)
    assert record == {
        "revisions": ["b" * 40, "c" * 40 + "+uncommitted"],
        "attempts": 3,
        "wall_seconds": 35.0,
        "finished": False,
    }
    (tmp_path / DONE).write_text("{}")
    assert queue_record(tmp_path)["finished"] is True
    groups = {"d hybrid N=1": [{"seed": 2, "meta": {"queue": record}}, {"seed": 1, "meta": {}}]}
    table = provenance_table(groups).splitlines()
    assert table[-2:] == [
        "| d hybrid N=1 | 1 | not recorded | | |",
        f"| d hybrid N=1 | 2 | {'b' * 12}, {'c' * 12}+uncommitted | 3 (unfinished) | 0.6 |",
    ]
    assert provenance_table({"d hybrid N=1": [{"seed": 1, "meta": {}}]}) == ""
