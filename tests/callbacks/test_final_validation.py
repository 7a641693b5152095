"""Validation at the last training step (FinalValidation) and the two tests of a fit: its final weights
(``test_final/...``) and its best validated checkpoint (``test/...``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lmsleep.evaluate import evaluate
from lmsleep.train import train

# 16 train samples in batches of 4 = 4 steps an epoch; val and test: 8 samples = 2 batches each.
RUN = ["debug=limit", "trainer.limit_train_batches=4", "trainer.log_every_n_steps=1", "data.task.width=6"]
TEST_KEYS = ("loss", "acc", "acc_exact", "acc@t=1")


def fit(compose, overrides, out):
    metrics, objects = train(compose(overrides, output_dir=out), overrides=overrides)
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return SimpleNamespace(metrics=metrics, trainer=objects["trainer"], events=acc, out=out)


@pytest.fixture(scope="module")
def six_steps(tmp_path_factory, compose, tiny, one_thread):
    """6 steps of 4-step epochs: validated at the end of epoch 0 (step 4) and, by FinalValidation, at step 6."""
    root = tmp_path_factory.mktemp("final_validation")
    return fit(compose, [*tiny, *RUN, "trainer.max_epochs=10", "trainer.max_steps=6"], root / "run")


def val_steps(run) -> list[int]:
    """The optimiser steps after which validation ran (Lightning logs it at the step count less one)."""
    return [e.step + 1 for e in run.events.Scalars("val/loss")]


def test_validation_runs_at_the_last_step(six_steps):
    assert six_steps.trainer.global_step == 6
    assert val_steps(six_steps) == [4, 6]


def test_the_last_validation_can_be_the_best_checkpoint(six_steps):
    cb = six_steps.trainer.checkpoint_callback
    losses = dict(
        zip(val_steps(six_steps), (e.value for e in six_steps.events.Scalars("val/loss")), strict=True)
    )
    best_step = min(losses, key=losses.get)
    ckpt = torch.load(cb.best_model_path, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == best_step
    assert cb.best_model_score.item() == pytest.approx(losses[best_step])


def test_a_fit_tests_its_final_weights_and_its_best_checkpoint(six_steps, compose, tiny, tmp_path):
    tags = set(six_steps.events.Tags()["scalars"])
    for key in TEST_KEYS:
        for prefix in ("test", "test_final"):
            assert f"{prefix}/{key}" in six_steps.metrics and f"{prefix}/{key}" in tags, (prefix, key)
    for prefix in ("test", "test_final"):
        assert f"hp/{prefix}_acc_exact" in tags
    # test_final/ is the weights of step 6 (last.ckpt, saved at the last validation); test/ the best checkpoint
    cb = six_steps.trainer.checkpoint_callback
    last = six_steps.out / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 6
    for prefix, ckpt in (("test_final", last), ("test", cb.best_model_path)):
        cfg = compose(
            [*tiny, "data.task.width=6", f"ckpt_path={ckpt}"],
            config_name="test",
            output_dir=tmp_path / prefix,
        )
        metrics, _ = evaluate(cfg)
        for key in TEST_KEYS:
            assert metrics[f"test/{key}"] == pytest.approx(
                six_steps.metrics[f"{prefix}/{key}"], rel=1e-6, abs=1e-7
            )
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 6


def test_a_budget_shorter_than_one_epoch_is_validated_at_its_end(compose, tiny, tmp_path, one_thread):
    """min_epochs=1 (trainer default) must not stop the last validation when max_steps ends epoch 0 early;
    with gradient accumulation the last step is the last optimiser step, not the last batch."""
    run = fit(compose, [*tiny, *RUN, "trainer.max_steps=3", "test=false"], tmp_path / "short")
    assert run.trainer.global_step == 3 and val_steps(run) == [3]
    overrides = [*tiny, *RUN, "trainer.max_steps=3", "trainer.accumulate_grad_batches=2", "test=false"]
    run = fit(compose, overrides, tmp_path / "accumulated")
    # epochs of 4 batches = 2 optimiser steps: validated after steps 2 (epoch end) and 3 (the last)
    assert run.trainer.global_step == 3 and val_steps(run) == [2, 3]


def test_test_is_the_best_checkpoint_and_test_final_the_last_weights_when_they_differ(
    compose, tiny, tmp_path, one_thread
):
    """With the checkpoint's mode turned to max, the best validation loss is the highest, the first one
    here: test/ must then be that earlier checkpoint's, test_final/ the last step's."""
    overrides = [
        *tiny,
        *RUN,
        "trainer.max_epochs=10",
        "trainer.max_steps=6",
        "callbacks.model_checkpoint.mode=max",
        # every validation saved, so last.ckpt holds step 6 (Lightning 2.6 writes last.ckpt only beside a
        # top-k save); test_final/ is measured from memory either way
        "callbacks.model_checkpoint.save_top_k=-1",
    ]
    run = fit(compose, overrides, tmp_path / "run")
    cb = run.trainer.checkpoint_callback  # its state is the best checkpoint's now (test/ restored it)
    losses = [e.value for e in run.events.Scalars("val/loss")]
    assert losses[0] > losses[1]  # training lowered the validation loss, so "best" (max) is step 4
    assert torch.load(cb.best_model_path, map_location="cpu", weights_only=True)["global_step"] == 4
    assert cb.best_model_path.endswith("epoch_000.ckpt")
    assert run.metrics["test/loss"] != run.metrics["test_final/loss"]
    last = run.out / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 6
    for prefix, ckpt in (("test_final", last), ("test", cb.best_model_path)):
        cfg = compose(
            [*tiny, "data.task.width=6", f"ckpt_path={ckpt}"],
            config_name="test",
            output_dir=tmp_path / prefix,
        )
        metrics, _ = evaluate(cfg)
        assert metrics["test/loss"] == pytest.approx(run.metrics[f"{prefix}/loss"], rel=1e-6, abs=1e-7)
