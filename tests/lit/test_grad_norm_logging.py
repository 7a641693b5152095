"""train/grad_norm (the global gradient norm before clipping), train/clipped and train/clipped_share."""

from __future__ import annotations

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lmsleep.train import train

RUN = [
    *("debug=limit", "trainer.max_epochs=1", "trainer.limit_train_batches=4", "trainer.log_every_n_steps=1"),
    *("data.task.width=6", "test=false"),
]


def logged(compose, tiny, out, clip: str) -> dict[str, list[float]]:
    overrides = [*tiny, *RUN, f"trainer.gradient_clip_val={clip}"]
    _, objects = train(compose(overrides, output_dir=out), overrides)
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    values = {
        tag: [e.value for e in acc.Scalars(tag)]
        for tag in ("train/grad_norm", "train/clipped", "train/clipped_share")
    }
    values["model"] = objects["model"]
    return values


def test_every_step_logs_its_gradient_norm_and_whether_it_was_clipped(compose, tiny, tmp_path, one_thread):
    tight = logged(compose, tiny, tmp_path / "tight", "1e-9")  # every norm is above it
    assert len(tight["train/grad_norm"]) == 4 and all(0 < n < float("inf") for n in tight["train/grad_norm"])
    assert tight["train/clipped"] == [1.0] * 4 and tight["train/clipped_share"] == [1.0] * 4
    loose = logged(compose, tiny, tmp_path / "loose", "1e9")
    assert loose["train/clipped"] == [0.0] * 4 and loose["train/clipped_share"] == [0.0] * 4
    # the same seed and data: the first step's gradient (before any update) is the same in both runs
    assert loose["train/grad_norm"][0] == pytest.approx(tight["train/grad_norm"][0], rel=1e-5)
    # a norm between the two: clipped exactly where the logged norm is above it, share is the running mean
    norms = loose["train/grad_norm"]
    middle = sorted(norms)[1] + 1e-6
    mid = logged(compose, tiny, tmp_path / "mid", repr(middle))
    expected = [float(n > middle) for n in mid["train/grad_norm"]]
    assert mid["train/clipped"] == expected
    assert mid["train/clipped_share"] == pytest.approx([sum(expected[: i + 1]) / (i + 1) for i in range(4)])
    assert mid["model"].clipped_steps == sum(expected) and mid["model"].optimizer_steps == 4


def test_clipping_counts_survive_a_checkpoint(compose, tiny, tmp_path, one_thread):
    run = logged(compose, tiny, tmp_path / "run", "1e-9")
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["clipped_steps"] == [4, 4]
    assert run["model"].clipped_steps == 4
    # resumed for a second epoch with a loose clip: 4 of 8 steps clipped
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    overrides = [*tiny, *RUN, "trainer.gradient_clip_val=1e9", "trainer.max_epochs=2", f"ckpt_path={last}"]
    _, objects = train(compose(overrides, output_dir=tmp_path / "resumed"), overrides)
    assert (objects["model"].clipped_steps, objects["model"].optimizer_steps) == (4, 8)
