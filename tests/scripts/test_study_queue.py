"""scripts/study_queue.py: one fit at a time, finished runs skipped, an unfinished run resumed from its folder."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from tests.support import REPO

SCRIPT = REPO / "scripts" / "study_queue.py"
spec = importlib.util.spec_from_file_location("study_queue", SCRIPT)
study_queue = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study_queue)


def _tail(run_dir: Path) -> str:
    return (run_dir / "queue.out").read_text()[-3000:]


def test_queue_file_lines_comments_and_errors(tmp_path):
    q = tmp_path / "q.txt"
    q.write_text("# the study\n\nexperiment=a seed=0  # first\n  experiment=a seed=1\n")
    assert study_queue.read_queue(q) == [["experiment=a", "seed=0"], ["experiment=a", "seed=1"]]
    for bad, word in (
        ("-m experiment=a", "-m"),
        ("experiment=a ckpt_path=last", "ckpt_path"),
        ("fit", "fit"),
    ):
        q.write_text(bad + "\n")
        with pytest.raises(SystemExit, match=f"q.txt:1: '{word}"):
            study_queue.read_queue(q)
    q.write_text("# nothing\n")
    with pytest.raises(SystemExit, match="lists no runs"):
        study_queue.read_queue(q)
    with pytest.raises(SystemExit, match="no queue file"):
        study_queue.read_queue(tmp_path / "missing.txt")
    with pytest.raises(SystemExit, match="not a git revision"):
        study_queue.pinned_tree("no-such-revision-anywhere")


def test_run_names_are_fixed_folder_names():
    name = study_queue.run_name(["experiment=text_stdlib_sleep", "data.paths=[/a/b c]", "seed=1"])
    assert name == "experiment-text_stdlib_sleep_data.paths--a-b-c-_seed-1"
    assert name == study_queue.run_name(["experiment=text_stdlib_sleep", "data.paths=[/a/b c]", "seed=1"])
    # long names keep their start and end, and runs that differ only in their last override stay apart
    long = ["experiment=study_gsm_sleep", *(f"data.task.setting_{i}=[{i},{i + 1}]" for i in range(12))]
    names = [study_queue.run_name([*long, f"seed={seed}"]) for seed in (0, 1, 10)]
    assert len(set(names)) == 3 and all(len(n) == 200 for n in names)
    assert all(n.startswith("experiment-study_gsm_sleep_data.task.setting_0") for n in names)
    assert [n[-7:] for n in names] == ["_seed-0", "_seed-1", "seed-10"]
    assert names[0] == study_queue.run_name([*long, "seed=0"])


def test_finished_runs_are_skipped_and_an_unfinished_one_resumes(tmp_path, monkeypatch, capsys, tiny):
    RUN = [  # noqa: N806
        "experiment=rule110_transformer",
        *tiny,
        "trainer.max_steps=2",
        "trainer.max_epochs=1",
        "callbacks=model_checkpoint",  # last.ckpt at the end
        "logger=csv",
        "test=false",
    ]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for name in ("LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    q = tmp_path / "q.txt"
    q.write_text(" ".join(RUN) + "\n")
    logs = tmp_path / "logs"
    run_dir = study_queue.run_dir(logs, RUN)
    assert study_queue.main([str(q), "--log-dir", str(logs), "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("start")

    assert study_queue.main([str(q), "--log-dir", str(logs)]) == 0, _tail(run_dir)
    attempts = [json.loads(line) for line in (run_dir / "queue.jsonl").read_text().splitlines()]
    assert len(attempts) == 1 and attempts[0]["returncode"] == 0 and attempts[0]["resumed_from"] is None
    assert (run_dir / "queue_done.json").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "config.yaml").is_file()  # the fit's own run folder is the queue's

    assert study_queue.main([str(q), "--log-dir", str(logs)]) == 0  # finished: skipped
    assert len((run_dir / "queue.jsonl").read_text().splitlines()) == 1
    assert "done" in capsys.readouterr().out

    # A run that stopped before its end (here: its marker removed) continues from its newest checkpoint.
    (run_dir / "queue_done.json").unlink()
    os.utime(run_dir / "checkpoints" / "last.ckpt")
    assert study_queue.main([str(q), "--log-dir", str(logs), "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("resume")
    assert study_queue.main([str(q), "--log-dir", str(logs)]) == 0, _tail(run_dir)
    attempts = [json.loads(line) for line in (run_dir / "queue.jsonl").read_text().splitlines()]
    assert len(attempts) == 2 and attempts[1]["resumed_from"].endswith(".ckpt")
    assert "lmsleep: resuming" in (run_dir / "queue.out").read_text()
    assert Path(attempts[1]["resumed_from"]).parent == run_dir / "checkpoints"
