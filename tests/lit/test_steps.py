"""What LitLM's steps compute, checked against the model called directly: evaluation metrics are those of
the sleeping forward ``net(ids, sleep)`` (not of a full-context forward), and after every training step each
parameter's ``.grad`` is that step's own gradient (no accumulation across steps, for both optimisers)."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch

import lmsleep.run
import lmsleep.train
from lmsleep.lit.metrics import AnswerMetrics, masked_cross_entropy
from lmsleep.train import train
from tests.support import compose_config
from tests.support.models import TINY_HYBRID

SLEEPING = [*TINY_HYBRID, "model.sleep.passes=3", "model.sleep.eviction=hard", "test=true"]

# one torch thread and a fixed seed, as for the model tests this sat beside
pytestmark = pytest.mark.usefixtures("one_thread_and_seed")


class RecordStepGradients(L.Callback):
    """Before each training step, a copy of the net; after it, the net's ``.grad`` next to the gradient that
    copy gets from the same batch alone (``net(ids, sleep)``, masked cross-entropy, one backward)."""

    def __init__(self):
        self.steps: list[tuple[dict[str, torch.Tensor | None], dict[str, torch.Tensor | None]]] = []
        self._before = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._before = copy.deepcopy(pl_module.net)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        net = self._before
        net.zero_grad(set_to_none=True)
        logits, _ = net(batch["input_ids"], pl_module.sleep)
        masked_cross_entropy(logits, batch["labels"]).backward()
        own = {n: p.grad for n, p in net.named_parameters()}
        seen = {n: None if p.grad is None else p.grad.clone() for n, p in pl_module.net.named_parameters()}
        self.steps.append((seen, own))


def test_each_step_leaves_only_its_own_gradient_in_every_parameter(tmp_path, monkeypatch):
    recorder = RecordStepGradients()
    cfg = compose_config(
        [
            *SLEEPING,
            "trainer.max_steps=3",
            "trainer.gradient_clip_val=0",
            "test=false",
            "++trainer.limit_val_batches=0",
        ],
        output_dir=tmp_path / "run",
        keep_callbacks=[],
    )
    _, objects = _train_with(cfg, recorder, monkeypatch)
    module = objects["model"]
    optimizers = module.trainer.optimizers
    # one optimiser holding the Muon and the AdamW parameters: all must have their gradients reset every step
    assert len(optimizers) == 1 and {g["name"] for g in optimizers[0].param_groups} == {"muon", "adamw"}
    assert len(recorder.steps) == 3
    for step, (seen, own) in enumerate(recorder.steps):
        for name, grad in own.items():
            assert grad is not None and seen[name] is not None, (step, name)
            torch.testing.assert_close(seen[name], grad, rtol=1e-5, atol=1e-7, msg=f"step {step}: {name}")


def _train_with(cfg, callback, monkeypatch):
    """``train(cfg)`` with one more callback (a config cannot name an object the test holds)."""
    original = lmsleep.run.instantiate_group

    def with_callback(group, kind):
        objects = original(group, kind)
        return [*objects, callback] if kind == "callback" else objects

    monkeypatch.setattr(lmsleep.run, "instantiate_group", with_callback)
    return train(cfg)


@pytest.mark.parametrize("split", ["val", "test"])
def test_evaluation_metrics_are_those_of_the_sleeping_forward(tmp_path, split):
    cfg = compose_config(
        [*SLEEPING, "trainer.max_steps=2", "test=false"], output_dir=tmp_path / "run", keep_callbacks=[]
    )
    _, objects = train(cfg)
    module, datamodule, trainer = objects["model"], objects["datamodule"], objects["trainer"]
    assert module.sleep.passes == 3 and module.sleep.eviction == "hard"
    run = trainer.validate if split == "val" else trainer.test
    logged = run(model=module, datamodule=datamodule, verbose=False)[0]
    module.eval()
    expected, full_context = (
        AnswerMetrics(module.hparams.depth_name),
        AnswerMetrics(module.hparams.depth_name),
    )
    loader = datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()
    with torch.no_grad():
        for batch in loader:
            expected.update(module.net(batch["input_ids"], module.sleep)[0], batch["labels"], batch["depth"])
            full_context.update(module.net(batch["input_ids"])[0], batch["labels"], batch["depth"])
    want, other = expected.compute(), full_context.compute()
    assert abs(float(other["loss"]) - float(want["loss"])) > 1e-4  # the two forwards are distinguishable here
    for key in ("loss", "acc", "acc_exact"):
        assert logged[f"{split}/{key}"] == pytest.approx(float(want[key]), abs=1e-6), key
