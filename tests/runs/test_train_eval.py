"""fit -> checkpoint -> test round trips (in process and through ``lmsleep test``), and what the run logged
to TensorBoard read back from its event files."""

from __future__ import annotations

import math
import os
import re
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from lmsleep.evaluate import evaluate
from lmsleep.train import train
from lmsleep.utils.config import ConfigError

# 16 train samples in batches of 4 = 4 steps; val and test: 8 samples = 2 batches each.
RUN = [
    "debug=limit",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=4",
    "trainer.log_every_n_steps=1",
    "model.optim.warmup_steps=2",
    "data.task.width=6",
]
TEST_KEYS = ("test/loss", "test/acc", "test/acc_exact")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, compose, tiny, one_thread):
    """One tiny training run (Rule 110 with W = L = 6), shared by the tests of this module."""
    root = tmp_path_factory.mktemp("fitted")
    overrides = [*tiny, *RUN]
    cfg = compose(overrides, output_dir=root / "run")
    metrics, objects = train(cfg, overrides=overrides)
    return SimpleNamespace(
        root=root, out=root / "run", cfg=cfg, metrics=metrics, objects=objects, overrides=overrides
    )


def test_fit_writes_checkpoints_with_the_run_overrides(fitted):
    ckpts = fitted.out / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("*.ckpt")) == ["epoch_000.ckpt", "last.ckpt"]
    assert fitted.objects["trainer"].checkpoint_callback.best_model_path == str(ckpts / "epoch_000.ckpt")
    assert fitted.objects["trainer"].global_step == 4
    ckpt = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["lmsleep_run"]["overrides"] == fitted.overrides
    assert ckpt["lmsleep_run"]["config"]["data"]["task"]["width"] == 6
    assert ckpt["sleep_config"]["window"] == 6
    saved = OmegaConf.load(fitted.out / "config.yaml")
    assert saved.data.task.width == 6 and saved.model.sleep.window == 6


def test_fit_metrics_are_complete(fitted):
    m = fitted.metrics
    for key in (*TEST_KEYS, "val/loss", "val/acc", "val/acc_exact", "train/loss", "test/acc@t=1"):
        assert key in m and math.isfinite(m[key]), key
    # one depth (t = 1), so the depth bucket is the whole test set
    assert m["test/acc@t=1"] == m["test/acc"]
    # 8 test samples x 4 query bits: accuracy is a multiple of 1/32, exact match of 1/8
    assert (m["test/acc"] * 32) == pytest.approx(round(m["test/acc"] * 32), abs=1e-5)
    assert (m["test/acc_exact"] * 8) == pytest.approx(round(m["test/acc_exact"] * 8), abs=1e-5)


def test_evaluate_last_checkpoint_gives_the_fit_test_metrics(fitted, compose, tiny, tmp_path):
    """One epoch: the best checkpoint the fit tested and last.ckpt hold the same weights."""
    last = fitted.out / "checkpoints" / "last.ckpt"
    cfg = compose(
        [*tiny, "data.task.width=6", f"ckpt_path={last}"], config_name="test", output_dir=tmp_path / "t"
    )
    metrics, objects = evaluate(cfg)
    for key in TEST_KEYS:
        assert metrics[key] == pytest.approx(fitted.metrics[key], rel=1e-6, abs=1e-7), key
    assert not objects["trainer"].training


def test_evaluate_without_checkpoint_is_an_error(compose, tiny, tmp_path):
    cfg = compose(tiny, config_name="test", output_dir=tmp_path / "t")
    with pytest.raises(ConfigError, match="ckpt_path is required"):
        evaluate(cfg)


def test_resume_from_last_checkpoint_continues(fitted, compose, tiny, tmp_path):
    last = fitted.out / "checkpoints" / "last.ckpt"
    overrides = [*tiny, *RUN, "trainer.max_epochs=2", f"ckpt_path={last}", "test=false"]
    _, objects = train(compose(overrides, output_dir=tmp_path / "resumed"), overrides)
    assert objects["trainer"].global_step == 8  # 4 restored + 4 new
    assert objects["trainer"].current_epoch == 2


def test_fit_without_training_tests_the_given_checkpoint(fitted, compose, tiny, tmp_path):
    """`lmsleep fit train=false ckpt_path=X` tests X (not freshly initialised weights)."""
    last = fitted.out / "checkpoints" / "last.ckpt"
    overrides = [*tiny, *RUN, "train=false", f"ckpt_path={last}"]
    metrics, objects = train(compose(overrides, output_dir=tmp_path / "run"), overrides)
    assert objects["trainer"].global_step == 0
    for key in TEST_KEYS:
        assert metrics[key] == pytest.approx(fitted.metrics[key], rel=1e-6, abs=1e-7), key


def test_cli_test_reapplies_the_training_overrides(fitted, cli, tmp_path):
    """`lmsleep test ckpt_path=...` composes width 6 from the checkpoint; an override given again wins."""
    last = fitted.out / "checkpoints" / "last.ckpt"
    result = cli(
        "test", f"ckpt_path={last}", f"paths.log_dir={tmp_path}/logs", "data.batch_size=2", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "logs" / "test" / "tests").iterdir()
    composed = OmegaConf.load(run / ".hydra" / "config.yaml")
    assert composed.data.task.width == 6  # from the checkpoint, not passed again
    assert composed.data.test_size == 8 and composed.model.net.dim == 16
    assert composed.data.batch_size == 2  # the user's value over the stored 4
    assert "data.task.width=6" in OmegaConf.load(run / ".hydra" / "overrides.yaml")
    # the printed report: same checkpoint, same test data, same numbers
    for key in TEST_KEYS:
        line = re.search(rf"^\s+{re.escape(key)}\s+([0-9.]+)\s*$", result.stdout, re.M)
        assert line, result.stdout[-2000:]
        assert float(line.group(1)) == pytest.approx(fitted.metrics[key], abs=5e-5)
    assert f"run folder:  {run}" in result.stdout


# --- TensorBoard -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def events(fitted):
    acc = EventAccumulator(str(fitted.out / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def last_scalar(events, tag: str) -> float:
    return events.Scalars(tag)[-1].value


def test_tensorboard_scalars_match_the_returned_metrics(fitted, events):
    tags = set(events.Tags()["scalars"])
    for key in (*TEST_KEYS, "val/loss", "val/acc", "val/acc_exact", "train/loss", "test/acc@t=1"):
        assert key in tags, sorted(tags)
        assert last_scalar(events, key) == pytest.approx(fitted.metrics[key], rel=1e-6, abs=1e-7), key
    assert len(events.Scalars("train/loss")) == 4  # log_every_n_steps=1, 4 steps
    assert [e.step for e in events.Scalars("train/loss")] == [0, 1, 2, 3]


def test_tensorboard_hparams(fitted, events):
    content = events.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in content and "_hparams_/session_start_info" in content
    info = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = info.session_start_info.hparams
    assert hparams["data/task/width"].number_value == 6
    assert hparams["model/net/dim"].number_value == 16
    assert hparams["model/sleep/window"].number_value == 6
    assert "data/task/_target_" not in hparams and hparams["task_name"].string_value == "fit"
    # the final metrics are logged beside the hyperparameters for the HPARAMS table
    for key in TEST_KEYS:
        tag = "hp/" + key.replace("/", "_")
        assert last_scalar(events, tag) == pytest.approx(fitted.metrics[key], rel=1e-6, abs=1e-7)


def test_learning_rate_schedule_logged(events):
    """Warm-up 2 steps then cosine to 0.1 over 4 steps: factors 0.5, 1, 1, 0.55 of the peak rates."""
    factors = [0.5, 1.0, 1.0, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))]
    tags = set(events.Tags()["scalars"])
    for name, peak in (("lr-MuonAdamW/muon", 2e-3), ("lr-MuonAdamW/adamw", 1e-3)):
        assert name in tags, sorted(tags)
        got = [e.value for e in events.Scalars(name)]
        assert got == pytest.approx([peak * f for f in factors], rel=1e-5), name


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_bf16_on_cpu_is_refused_before_any_work(compose_fit, tiny, precision):
    cfg = compose_fit("debug=fdr", *tiny, f"trainer.precision={precision}")
    with pytest.raises(
        ConfigError,
        match=rf"trainer.precision={precision} on CPU is refused: .* use trainer.precision=32-true",
    ):
        train(cfg)
    assert not os.path.exists(os.path.join(cfg.paths.output_dir, "config.yaml"))


def test_flush_denormal_is_set_by_a_run(cfg_fit):
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush subnormals")
    assert (torch.tensor([1e-30]) * 1e-9).item() != 0.0  # a subnormal result survives by default
    try:
        train(cfg_fit)
        assert (torch.tensor([1e-30]) * 1e-9).item() == 0.0
    finally:
        torch.set_flush_denormal(False)


def test_a_window_that_never_fills_is_reported_once(compose_fit, tiny, one_thread):
    # Rule 110 W = 6: 4 states and 4 queries = 28 tokens, in windows of 64: no eviction, no sleep.
    cfg = compose_fit(
        "debug=fdr", *tiny, "data.task.width=6", "model.sleep.eviction=hard", "model.sleep.window=64"
    )
    with pytest.warns(
        UserWarning, match=r"model\.sleep\.window=64 >= the sequence length \d+: every sequence is one window"
    ) as caught:
        train(cfg)
    assert sum("sequence is one window" in str(w.message) for w in caught) == 1
