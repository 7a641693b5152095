"""Where a study's runs came from: the git revision each ran at and its wall time.

``scripts/study_queue.py`` leaves two files in every run folder it runs: ``queue.jsonl``, a line per attempt
(the revision, the overrides, the checkpoint it resumed from, its exit code and seconds), and
``queue_done.json`` once the run finished. ``lmsleep report`` copies a summary of them into the run's raw
JSON (``queue``), so the revision and the wall time travel with the committed metrics; ``summary.md`` then ends
with a table of them. A run folder the queue did not make (a plain ``lmsleep fit``) has neither file, and its
raw JSON no ``queue``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DONE, ATTEMPTS = "queue_done.json", "queue.jsonl"
NOT_RECORDED = "not recorded"


def queue_record(run_dir: Path) -> dict[str, Any] | None:
    """What the queue recorded of the run in ``run_dir``: ``{"revisions": [...], "attempts": n,
    "wall_seconds": s, "finished": bool}`` (revisions in the order the attempts ran, each once; the seconds of
    every attempt, the pieces of a resumed run included), or None where the queue did not run it."""
    log = run_dir / ATTEMPTS
    if not log.is_file():
        return None
    attempts = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    if not attempts:
        return None
    revisions = list(dict.fromkeys(str(a.get("revision")) for a in attempts))
    return {
        "revisions": revisions,
        "attempts": len(attempts),
        "wall_seconds": round(sum(float(a.get("seconds", 0.0)) for a in attempts), 1),
        "finished": (run_dir / DONE).is_file(),
    }


def provenance_table(groups: dict[str, list[dict[str, Any]]]) -> str:
    """A row per run (configuration and seed): its revision(s), attempts and wall time; empty when no run's
    raw JSON holds a queue record (``groups`` as :func:`lmsleep.reporting.report.load_raw` returns them)."""
    if not any("queue" in r["meta"] for runs in groups.values() for r in runs):
        return ""
    lines = [
        "Runs: the revision each ran at and its wall time, as scripts/study_queue.py recorded them (attempts: "
        f"the pieces a resumed run ran in; wall: their sum; {NOT_RECORDED}: a raw file written without the "
        "queue's record).",
        "",
        "| configuration | seed | revision | attempts | wall, min |",
        "|---|---|---|---|---|",
    ]
    for label, runs in groups.items():
        for r in sorted(runs, key=lambda r: (r["seed"] is None, r["seed"])):
            q = r["meta"].get("queue")
            if q is None:
                lines.append(f"| {label} | {r['seed']} | {NOT_RECORDED} | | |")
                continue
            revisions = ", ".join(_short(rev) for rev in q["revisions"])
            unfinished = "" if q["finished"] else " (unfinished)"
            lines.append(
                f"| {label} | {r['seed']} | {revisions} | {q['attempts']}{unfinished} | "
                f"{q['wall_seconds'] / 60:.1f} |"
            )
    return "\n".join(lines) + "\n"


def _short(revision: str) -> str:
    """A revision as git's 12-digit short form, keeping the queue's ``+uncommitted`` mark of a dirty tree."""
    sha, _, mark = revision.partition("+")
    return sha[:12] + (f"+{mark}" if mark else "")
