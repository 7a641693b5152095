#!/usr/bin/env python
"""Run a study's fits one at a time, from one pinned revision, resumably.

    python scripts/study_queue.py QUEUE [--rev REV] [--log-dir DIR] [--dry-run]

``QUEUE`` is a text file with one run per line, its ``lmsleep fit`` overrides (blank lines and ``#`` comments
are skipped), e.g.::

    experiment=study/text model.sleep.passes=1 seed=0
    experiment=study/text model.sleep.passes=2 seed=0

Each run has a fixed folder, ``<log-dir>/queue/<its overrides as a name>/`` (e.g. ``experiment-text_stdlib_sleep_seed-1``), so running the same queue again
(after a crash, a preemption or the end of a working session) skips the runs that finished, resumes the one
that was interrupted from its newest checkpoint (``ckpt_path=``; set ``callbacks.step_checkpoint`` in the
experiment to checkpoint every few hundred steps) and starts the rest. Runs go one at a time: two fits side
by side on a 2-core machine each ran about 10x slower than one alone.

``--rev REV`` runs every fit with the code and configs of that git revision, checked out once into a
worktree under ``.study-trees/``, so that commits made while a study runs cannot change it halfway. Each
attempt is recorded in the run folder's ``queue.jsonl`` (revision, overrides, exit code, seconds), and a
finished run gets ``queue_done.json``. SIGTERM or Ctrl-C stops the running fit as a preemption does (it saves
a checkpoint) and then the queue.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from lmsleep.reporting.provenance import ATTEMPTS, DONE  # what `lmsleep report` reads back
from lmsleep.utils.checkpoint import newest_checkpoint

ROOT = Path(__file__).resolve().parents[1]
PREEMPTED = (143, 138)  # SIGTERM, SIGUSR1: the fit saved a checkpoint and can resume


def read_queue(path: Path) -> list[list[str]]:
    """The runs of a queue file, each as its list of overrides."""
    if not path.is_file():
        raise SystemExit(f"study_queue: no queue file {path}")
    runs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        bad = [w for w in words if "=" not in w or w.startswith(("-", "ckpt_path=", "hydra.run.dir="))]
        if bad:
            raise SystemExit(
                f"study_queue: {path}:{number}: {bad[0]!r} is not a fit override of one run (key=value; the "
                "queue sets ckpt_path and hydra.run.dir itself, and runs no -m sweeps: list each run)"
            )
        runs.append(words)
    if not runs:
        raise SystemExit(f"study_queue: {path} lists no runs")
    return runs


def run_name(overrides: list[str], limit: int = 200) -> str:
    """A folder name that says what the run is: its overrides joined by ``_``, with ``key-value`` for
    ``key=value`` and any other character Hydra's override grammar would trip on made ``-``. A name longer
    than ``limit`` keeps its start and its end (where the seed is) around a hash of the whole: cutting it
    short would give runs that differ only in their last override (``seed=0``, ``seed=1``) one folder."""
    name = "_".join(overrides).replace("=", "-").replace(",", "+")
    name = re.sub(r"[^A-Za-z0-9_.+-]+", "-", name).strip("-")
    if len(name) <= limit:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    head = (limit - len(digest) - 2) * 2 // 3
    tail = limit - len(digest) - 2 - head
    return f"{name[:head]}-{digest}-{name[-tail:]}"


def pinned_tree(rev: str | None) -> tuple[Path, str]:
    """The source tree to run (``ROOT``, or a worktree of ``rev``) and its revision."""
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev or 'HEAD'}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if head.returncode:
        raise SystemExit(f"study_queue: {rev!r} is not a git revision of {ROOT}")
    sha = head.stdout.strip()
    if rev is None:
        return ROOT, sha + ("+uncommitted" if _dirty() else "")
    tree = ROOT / ".study-trees" / sha[:12]
    if not (tree / "src" / "lmsleep").is_dir():
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force", str(tree), sha],
            check=True,
            capture_output=True,
        )
    return tree, sha


def _dirty() -> bool:
    status = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True)
    return bool(status.stdout.strip())


def run_dir(log_dir: Path, overrides: list[str]) -> Path:
    return log_dir / "queue" / run_name(overrides)


def plan(folder: Path) -> str:
    if (folder / DONE).is_file():
        return "done"
    return "resume" if newest_checkpoint([folder]) else "start"


class Queue:
    def __init__(self, tree: Path, sha: str, log_dir: Path):
        self.tree, self.sha, self.log_dir = tree, sha, log_dir
        self.child: subprocess.Popen | None = None
        self.stopping = False

    def stop(self, signum, _frame) -> None:
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            os.killpg(self.child.pid, signal.SIGTERM)  # the fit's preemption handler saves a checkpoint

    def run(self, overrides: list[str]) -> int:
        folder = run_dir(self.log_dir, overrides)
        args = [*overrides, f"paths.log_dir={self.log_dir}", f"hydra.run.dir={folder}"]
        ckpt = newest_checkpoint([folder])
        if ckpt is not None:
            args.append(f"ckpt_path={ckpt}")
        folder.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(self.tree / "src")}
        start = time.time()
        with open(folder / "queue.out", "a") as out:
            self.child = subprocess.Popen(
                [sys.executable, "-m", "lmsleep", "fit", *args],
                cwd=self.tree,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            rc = self.child.wait()
        record = {
            "revision": self.sha,
            "overrides": overrides,
            "resumed_from": None if ckpt is None else str(ckpt),
            "returncode": rc,
            "seconds": round(time.time() - start, 1),
            "ended": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        with open(folder / ATTEMPTS, "a") as f:
            f.write(json.dumps(record) + "\n")
        if rc == 0:
            (folder / DONE).write_text(json.dumps(record, indent=1) + "\n")
        return rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("queue", type=Path, help="file with one run's fit overrides per line")
    p.add_argument("--rev", default=None, help="git revision to run (default: this checkout as it is)")
    p.add_argument("--log-dir", type=Path, default=ROOT / "logs", help="paths.log_dir of every run")
    p.add_argument("--dry-run", action="store_true", help="say what each run would do, run nothing")
    args = p.parse_args(argv)
    runs = read_queue(args.queue)
    log_dir = args.log_dir.expanduser().resolve()
    if args.dry_run:
        for overrides in runs:
            print(f"{plan(run_dir(log_dir, overrides)):<6}  {' '.join(overrides)}")
        return 0
    tree, sha = pinned_tree(args.rev)
    queue = Queue(tree, sha, log_dir)
    signal.signal(signal.SIGTERM, queue.stop)
    signal.signal(signal.SIGINT, queue.stop)
    failed = 0
    for overrides in runs:
        what = plan(run_dir(log_dir, overrides))
        print(f"[{time.strftime('%H:%M:%S')}] {what:<6}  {' '.join(overrides)}", flush=True)
        if what == "done":
            continue
        rc = queue.run(overrides)
        print(f"[{time.strftime('%H:%M:%S')}] exit {rc}", flush=True)
        if queue.stopping or rc in PREEMPTED:
            print("study_queue: stopped; run the same command again to resume", flush=True)
            return 143
        failed += rc != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
