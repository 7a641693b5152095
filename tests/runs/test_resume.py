"""Resuming a fit from a checkpoint continues exactly as the uninterrupted run: the same batches, the same
weights, and every scalar logged at the same step with the same value (so resumed curves overlay)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from lmsleep.train import train
from tests.support import logged_scalars


def _run(compose, tiny, out, ckpt_path=None):
    overrides = [
        *tiny,
        "data.train_size=24",  # 6 batches an epoch: steps 2 and 4 are mid-epoch
        "trainer.max_steps=14",
        "trainer.max_epochs=3",
        "trainer.check_val_every_n_epoch=1",
        "trainer.num_sanity_val_steps=0",
        "trainer.log_every_n_steps=1",
        "test=false",
        "logger=csv",
        "callbacks=none",
        "+callbacks.epochs._target_=lightning.pytorch.callbacks.ModelCheckpoint",
        f"+callbacks.epochs.dirpath={out}/ckpt",
        "+callbacks.epochs.save_top_k=-1",
        "+callbacks.epochs.filename=epoch_\\{epoch\\}",
        "+callbacks.epochs.save_on_train_epoch_end=true",
        "+callbacks.val._target_=lightning.pytorch.callbacks.ModelCheckpoint",  # saves after validation
        f"+callbacks.val.dirpath={out}/ckpt",
        "+callbacks.val.monitor=val/loss",
        "+callbacks.val.save_top_k=-1",
        "+callbacks.val.filename=val_\\{epoch\\}",
        "+callbacks.every2._target_=lightning.pytorch.callbacks.ModelCheckpoint",
        f"+callbacks.every2.dirpath={out}/ckpt",
        "+callbacks.every2.every_n_train_steps=2",
        "+callbacks.every2.save_top_k=-1",
        "+callbacks.every2.filename=at_step_\\{step\\}",
    ]
    cfg = compose(overrides, output_dir=out)
    if ckpt_path:
        with open_dict(cfg):
            cfg.ckpt_path = str(ckpt_path)
    _, objects = train(cfg)
    return {k: v.detach().clone() for k, v in objects["model"].net.state_dict().items()}


def logged(run: Path) -> dict[tuple[int, str], str]:
    """``{(step, name): value}`` of every scalar in a run's CSV log."""
    return logged_scalars(run / "csv" / "metrics.csv")


@pytest.fixture(scope="module")
def full(compose, tiny, tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("full")
    return out, _run(compose, tiny, out)


MID_EPOCH = ["at_step_step=2.ckpt", "at_step_step=8.ckpt"]  # what step and preemption checkpoints are
EPOCH_END = ["epoch_epoch=0.ckpt", "val_epoch=0.ckpt"]  # saved after training / after validation


def _resume(compose, tiny, tmp_path, full, checkpoint):
    full_out, full_weights = full
    ckpt = full_out / "ckpt" / checkpoint
    assert ckpt.is_file(), sorted(p.name for p in (full_out / "ckpt").iterdir())
    resumed = _run(compose, tiny, tmp_path / "resumed", ckpt_path=ckpt)
    step = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
    return full_weights, resumed, logged(full_out), logged(tmp_path / "resumed"), step


@pytest.mark.parametrize("checkpoint", MID_EPOCH + EPOCH_END)
def test_resumed_scalars_sit_at_the_steps_of_the_uninterrupted_run(compose, tiny, tmp_path, full, checkpoint):
    _, _, before, after, step = _resume(compose, tiny, tmp_path, full, checkpoint)
    assert (
        min(k[0] for k in after if k[1] == "train/loss") == step
    )  # the first resumed batch logs at its step
    wrong = {k: (v, before.get(k)) for k, v in after.items() if before.get(k) != v}
    assert not wrong, sorted(wrong.items())[:6]  # (step, name): (resumed value, uninterrupted value)


@pytest.mark.parametrize("checkpoint", MID_EPOCH)
def test_resume_mid_epoch_continues_exactly(compose, tiny, tmp_path, full, checkpoint):
    full_weights, resumed, before, after, step = _resume(compose, tiny, tmp_path, full, checkpoint)
    assert {k for k in after if k[1] == "train/loss"} == {
        k for k in before if k[1] == "train/loss" and k[0] >= step
    }
    assert full_weights.keys() == resumed.keys()
    for name in full_weights:
        torch.testing.assert_close(resumed[name], full_weights[name], rtol=0, atol=0, msg=name)


@pytest.mark.xfail(
    strict=True,
    reason="known: when max_epochs ends the run (here 3 epochs, before max_steps=14), Lightning 2.6 ends a fit "
    "resumed from an epoch-end checkpoint one epoch early (it counts the restarted epoch); with max_steps "
    "binding, as in the long experiments, such resumes are exact",
)
def test_resume_from_an_epoch_end_checkpoint_trains_every_epoch(compose, tiny, tmp_path, full):
    _, _, before, after, step = _resume(compose, tiny, tmp_path, full, "val_epoch=0.ckpt")
    assert max(k[0] for k in after) == max(k[0] for k in before)
