"""SIGTERM / SIGUSR1 during a fit: a checkpoint at the current step, exit status 128 + signal on every rank,
and ``lmsleep fit ckpt_path=...`` resumes in the same run folder as if nothing had happened.

Subprocesses in their own session; the whole process group is killed on the way out. Hangs are bounded by the
suite's hang guard (pytest-timeout, ``FIT_GUARD_S`` per wait on a fit), not by clock reads here: these fits
take 10-20 s, and nothing in this file measures how fast they go.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.support import kill_group, logged_scalars, start_cli

# Hang guard of one wait on a fit (for its first checkpoint, or for it and its DDP ranks to end).
FIT_GUARD_S = 120

# 50 batches an epoch, 120 steps: the run is preempted after its first step checkpoint (step 5).
RUN = [
    "data.batch_size=4",
    "data.train_size=200",
    "data.val_size=8",
    "data.test_size=8",
    "model.net.dim=16",
    "model.net.heads=2",
    "trainer.max_steps=120",
    "trainer.max_epochs=10",
    "trainer.log_every_n_steps=1",
    "trainer.num_sanity_val_steps=0",
    "logger=csv",
    "test=false",
    "+callbacks.steps._target_=lightning.pytorch.callbacks.ModelCheckpoint",
    "+callbacks.steps.dirpath=${paths.output_dir}/checkpoints",
    "+callbacks.steps.every_n_train_steps=5",
    "+callbacks.steps.save_top_k=-1",
    "+callbacks.steps.filename=step_\\{step:03d\\}",
    "+callbacks.steps.auto_insert_metric_name=false",
]


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    """Wait for the process and for every process of its group (the DDP ranks it launched) to end.

    On any interruption, the hang guard's included, the group is killed before the error propagates."""
    try:
        out, err = proc.communicate()
        while True:  # DDP ranks it launched must end too
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
    except BaseException:
        kill_group(proc)
        raise
    return proc.returncode, out, err


def preempt(args: list[str], cwd: Path, signum: int) -> tuple[int, str, str, Path]:
    """Start ``lmsleep fit ARGS``, send ``signum`` to it (rank 0) once its first step checkpoint exists."""
    proc = start_cli("fit", *args, cwd=cwd)
    try:
        while not list(cwd.glob("logs/fit/runs/*/checkpoints/step_*.ckpt")):
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        if proc.poll() is None:
            os.kill(proc.pid, signum)
    except BaseException:
        kill_group(proc)
        raise
    status, out, err = finish(proc)
    (run,) = (cwd / "logs" / "fit" / "runs").iterdir()
    return status, out, err, run


@pytest.mark.timeout(4 * FIT_GUARD_S, method="signal")  # preempt (2 waits), then 2 fits to the end
def test_sigterm_checkpoints_exits_143_and_resumes_exactly(tmp_path):
    (tmp_path / "a").mkdir()
    status, out, err, run = preempt(
        [*RUN, f"paths.log_dir={tmp_path}/a/logs"], tmp_path / "a", signal.SIGTERM
    )
    assert status == 143, err[-3000:]
    found = re.search(r"^lmsleep: preempted by SIGTERM at step (\d+): saved (\S+last\.ckpt);", err, re.M)
    assert found, err[-3000:]
    step, last = int(found.group(1)), Path(found.group(2))
    assert last == run / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["global_step"] == step and 5 <= step < 120  # the step it was at, not the last periodic one
    before = logged_scalars(run / "csv" / "metrics.csv")
    assert max(s for s, k in before if k == "train/loss") == step - 1  # every finished step is in the file

    # the run added a callback node (+callbacks.steps...): not a plain setting, so it is re-applied only when
    # the user vouches for the checkpoint
    status, out, err = finish(start_cli("fit", f"ckpt_path={last}", cwd=tmp_path / "a"))
    assert status == 2 and "stored override '+callbacks.steps._target_=" in err, err[-3000:]
    # resume: the stored overrides come back, the run goes on in its own folder
    status, out, err = finish(
        start_cli("fit", f"ckpt_path={last}", "trust_checkpoint=true", cwd=tmp_path / "a")
    )
    assert status == 0, err[-3000:]
    assert f"run folder:  {run}\n" in out
    assert list((tmp_path / "a" / "logs" / "fit" / "runs").iterdir()) == [run]
    resumed = logged_scalars(run / "csv" / f"resumed_step_{step}" / "metrics.csv")
    assert min(s for s, k in resumed if k == "train/loss") == step

    # the uninterrupted run: the same weights at the end, the same scalars at the same steps
    (tmp_path / "b").mkdir()
    status, out, err = finish(start_cli("fit", *RUN, f"paths.log_dir={tmp_path}/b/logs", cwd=tmp_path / "b"))
    assert status == 0, err[-3000:]
    (whole,) = (tmp_path / "b" / "logs" / "fit" / "runs").iterdir()
    uninterrupted = logged_scalars(whole / "csv" / "metrics.csv")
    assert {k: v for k, v in uninterrupted.items() if k[0] < step} == before
    assert {k: v for k, v in uninterrupted.items() if k[0] >= step} == resumed
    a = torch.load(run / "checkpoints" / "step_120.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(whole / "checkpoints" / "step_120.ckpt", map_location="cpu", weights_only=True)[
        "state_dict"
    ]
    for name in b:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


@pytest.mark.timeout(3 * FIT_GUARD_S, method="signal")  # preempt (2 waits), then 1 fit to the end
def test_sigusr1_checkpoints_and_exits_138(tmp_path):
    status, out, err, run = preempt([*RUN, f"paths.log_dir={tmp_path}/logs"], tmp_path, signal.SIGUSR1)
    assert status == 128 + signal.SIGUSR1, err[-3000:]
    found = re.search(r"^lmsleep: preempted by SIGUSR1 at step (\d+)", err, re.M)
    assert found, err[-3000:]
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == int(found.group(1))
    # `ckpt_path=last` finds it (the newest checkpoint of the task's runs) and goes on in the same folder
    status, out, err = finish(
        start_cli(
            "fit", f"paths.log_dir={tmp_path}/logs", "ckpt_path=last", "trust_checkpoint=true", cwd=tmp_path
        )
    )
    assert status == 0, err[-3000:]
    assert f"lmsleep: resuming {run}/checkpoints/last.ckpt (step {found.group(1)})" in err
    assert f"run folder:  {run}\n" in out
    assert torch.load(run / "checkpoints" / "step_120.ckpt", weights_only=True)["global_step"] == 120


@pytest.mark.timeout(2 * FIT_GUARD_S, method="signal")  # preempt (2 waits) only
def test_sigterm_to_ddp_rank_0_stops_every_rank(tmp_path):
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    status, out, err, run = preempt([*RUN, *ddp, f"paths.log_dir={tmp_path}/logs"], tmp_path, signal.SIGTERM)
    assert status == 143, (out + err)[-4000:]
    # both ranks write to the same stderr: their lines may interleave, so no line anchors
    stops = re.findall(r"lmsleep: preempted by SIGTERM at step (\d+)", err)
    assert len(stops) == 2 and stops[0] == stops[1], err[-4000:]  # both ranks, at the same step
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == int(stops[0])
