"""A NaN or infinite training loss or gradient stops the fit within one step (or, with
``model.optim.nonfinite=skip``, drops the batch and counts it); no non-finite checkpoint is ever written."""

from __future__ import annotations

import math
import re

import pytest
import torch

from lmsleep.lit.module import NonFiniteError
from lmsleep.train import train
from tests.support import csv_rows

# Learning rates that blow the weights up on the first step: the gradients of step 1 are NaN.
EXPLODE = [
    "model.optim.muon_lr=1e3",
    "model.optim.adamw_lr=1e3",
    "model.optim.warmup_steps=0",
    "trainer.gradient_clip_val=0",
]
RUN = ["data.train_size=24", "trainer.max_epochs=2", "trainer.log_every_n_steps=1", "logger=csv"]


def test_nonfinite_stops_the_command_with_one_line(cli, tiny, tmp_path):
    result = cli("fit", *tiny, *RUN, *EXPLODE, f"paths.log_dir={tmp_path}/logs", cwd=tmp_path, timeout=120)
    assert result.returncode == 1, result.stderr[-3000:]
    assert re.search(
        r"^lmsleep: error: (train/loss|the gradient norm) is (nan|inf) at step 1 \(batch 1\); lower the "
        r"learning rates",
        result.stderr,
        re.M,
    ), result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert not list(tmp_path.rglob("*.ckpt"))  # stopped in epoch 0: nothing to keep, nothing non-finite kept
    assert "test/acc" not in result.stdout  # no test of the broken model


def test_skip_drops_and_counts_the_bad_batches(compose_fit, tiny, tmp_path, one_thread):
    cfg = compose_fit(*tiny, *RUN, *EXPLODE, "model.optim.nonfinite=skip")
    metrics, objects = train(cfg)
    skipped = objects["model"].skipped_batches
    # 6 batches x 2 epochs: every batch is a step of the schedule, a skipped one changes no weight
    assert 0 < skipped <= 12 and objects["trainer"].global_step == 12
    assert metrics["train/skipped_batches"] == skipped
    for path in (tmp_path / "run" / "checkpoints").glob("*.ckpt"):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        assert all(t.isfinite().all() for t in ckpt["state_dict"].values()), path.name
        assert ckpt["skipped_batches"] <= skipped
    logged = csv_rows(tmp_path / "run" / "csv" / "metrics.csv")
    assert "train/skipped_batches" in logged[0]


def test_a_nonfinite_weight_is_never_checkpointed(compose_fit, tiny, tmp_path, one_thread):
    cfg = compose_fit("debug=fdr", *tiny)
    _, objects = train(cfg)
    module = objects["model"]
    with torch.no_grad():
        module.net.embed.weight[0, 0] = math.nan
    with pytest.raises(
        NonFiniteError, match=r"the weights are non-finite at step \d+ \(net\.embed\.weight\)"
    ):
        objects["trainer"].save_checkpoint(tmp_path / "nan.ckpt")
    assert not (tmp_path / "nan.ckpt").exists()
