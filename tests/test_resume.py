"""Resuming a fit from a mid-epoch checkpoint continues exactly as the uninterrupted run."""

from __future__ import annotations

import torch
from omegaconf import open_dict

from lmsleep.train import train


def _run(compose, tiny, out, ckpt_path=None):
    overrides = [
        *tiny,
        "data.train_size=24",  # 6 batches an epoch: steps 2 and 4 are mid-epoch
        "trainer.max_steps=5",
        "trainer.max_epochs=3",
        "+trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0",
        "test=false",
        "logger=csv",
        "callbacks=none",
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


def test_mid_epoch_resume_sees_the_same_batches(compose, tiny, tmp_path, one_thread):
    full = _run(compose, tiny, tmp_path / "full")
    resumed = _run(
        compose, tiny, tmp_path / "resumed", ckpt_path=tmp_path / "full" / "ckpt" / "at_step_step=2.ckpt"
    )
    assert full.keys() == resumed.keys()
    for name in full:
        torch.testing.assert_close(resumed[name], full[name], rtol=0, atol=0, msg=name)
