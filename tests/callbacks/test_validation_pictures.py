"""Validation pictures in TensorBoard and depth-bucketed metrics after a short fit."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lmsleep.data import Rule110Task
from lmsleep.reporting.plots import depth_bar_figure, rule110_figure
from lmsleep.train import train

SHORT_FIT = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
    "trainer.num_sanity_val_steps=0",
    "trainer.check_val_every_n_epoch=1",
    "callbacks=default",
    "callbacks.rich_progress_bar=null",
]


def _events(run: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


@pytest.mark.parametrize(
    "data, depth_name, depths, extra",
    [
        ("rule110", "t", [1, 2], ["data.task.steps=[1,2]"]),
        ("depo", "k", [1, 2, 3, 4], []),
    ],
)
def test_short_fit_logs_pictures_and_depth_metrics(
    compose, tiny, tmp_path, one_thread, data, depth_name, depths, extra
):
    cfg = compose(
        [f"data={data}", *tiny, "data.val_size=16", "data.test_size=32", *SHORT_FIT, *extra],
        output_dir=tmp_path,
    )
    metrics, _ = train(cfg)
    events = _events(tmp_path)
    images = events.Tags()["images"]
    assert f"pictures/acc_by_{depth_name}" in images and f"pictures/acc_exact_by_{depth_name}" in images
    assert ("pictures/rule110" in images) == (data == "rule110")
    png = events.Images(f"pictures/acc_by_{depth_name}")[-1].encoded_image_string
    assert png.startswith(b"\x89PNG")
    # every depth bucket present in the test split is logged, and the buckets average to the whole
    buckets = {int(k.split("=")[1]) for k in metrics if k.startswith(f"test/acc@{depth_name}=")}
    assert buckets and buckets <= set(depths)
    scalars = events.Tags()["scalars"]
    assert all(f"test/acc@{depth_name}={d}" in scalars for d in buckets)
    assert min(metrics[f"test/acc@{depth_name}={d}"] for d in buckets) <= metrics["test/acc"] + 1e-6
    assert max(metrics[f"test/acc@{depth_name}={d}"] for d in buckets) >= metrics["test/acc"] - 1e-6


def test_rule110_figure_marks_right_and_wrong_answers():
    task = Rule110Task(width=6, num_states=3, steps=2)
    samples = [task.sample("val", i) for i in range(2)]
    wrong_first = [1 - samples[0]["answer"][0], *samples[0]["answer"][1:]]
    fig = rule110_figure(samples, [wrong_first, samples[1]["answer"]])
    axes = fig.get_axes()
    assert len(axes) == 2 * 3
    red = [ax for ax in axes if ax.title.get_color() == "tab:red"]
    assert [ax.get_title() for ax in red] == [f"Q0: true {samples[0]['answer'][0]} pred {wrong_first[0]}"]
    # each panel shows the rollout: t + 1 rows of W cells
    assert axes[0].images[0].get_array().shape == (3, 6)


def test_depth_bar_figure_has_one_bar_per_depth():
    fig = depth_bar_figure({"acc": 0.5, "acc@k=1": 1.0, "acc@k=3": 0.25, "loss@k=1": 0.1}, "k")
    (ax,) = fig.get_axes()
    assert [p.get_height() for p in ax.patches] == [1.0, 0.25]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "3"]
