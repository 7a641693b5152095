"""MuonAdamW: one optimiser whose state round-trips, and under Lightning's automatic optimisation gradient
accumulation gives the update of the larger batch and ``trainer.gradient_clip_val`` clips the global norm."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch

from lmsleep.lit.optim import MuonAdamW, OptimConfig, build_optimizer, split_parameters
from lmsleep.models import HybridLM
from lmsleep.run import build_run

# A tiny sleeping hybrid on Rule 110 (W = L = 6, 4 states: 5 windows, N = 2), warm-up off so that the first
# steps move the weights at the peak rate.
SLEEPING = [
    "experiment=rule110_sleep",
    "data.task.width=6",
    "model.net.dim=16",
    "model.net.heads=2",
    "model.net.ssm.heads=2",
    "model.net.ssm.head_dim=8",
    "model.optim.warmup_steps=0",
    "data.train_size=16",
    "data.num_workers=0",
    "callbacks=none",
    "~logger",
    "+trainer.limit_val_batches=0",
    "trainer.num_sanity_val_steps=0",
    "+trainer.enable_checkpointing=false",
    "+trainer.enable_progress_bar=false",
    "+trainer.enable_model_summary=false",
    "test=false",
]


def _net() -> HybridLM:
    torch.manual_seed(0)
    return HybridLM(
        vocab_size=11, dim=16, heads=2, layout="attn,ssm", ssm=dict(rule="gated_delta", heads=2, head_dim=8)
    )


def _loss(net: HybridLM, seed: int) -> torch.Tensor:
    ids = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(seed))
    logits, _ = net(ids)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.roll(-1, 1).flatten())


def test_state_dict_round_trip_continues_exactly():
    """A copy loaded from the state after two steps takes the same third step (Muon momentum, AdamW moments)."""
    net = _net()
    opt = build_optimizer(net, OptimConfig())
    for seed in range(2):
        opt.zero_grad()
        _loss(net, seed).backward()
        opt.step()
    state = copy.deepcopy(opt.state_dict())  # as a checkpoint holds it (state_dict shares the tensors)
    assert {g["muon"] for g in state["param_groups"]} == {True, False}
    assert any("momentum_buffer" in s for s in state["state"].values())
    assert any("exp_avg_sq" in s for s in state["state"].values())

    twin = _net()
    twin.load_state_dict(net.state_dict())
    twin_opt = build_optimizer(twin, OptimConfig(muon_lr=1.0, adamw_lr=1.0))  # rates come from the state
    twin_opt.load_state_dict(state)
    for model, optimizer in ((net, opt), (twin, twin_opt)):
        optimizer.zero_grad()
        _loss(model, 2).backward()
        optimizer.step()
    for (name, a), b in zip(net.state_dict().items(), twin.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)


def test_only_parameters_with_gradients_move():
    """A frozen parameter (a training stage) has no gradient: neither update rule touches it."""
    net = _net()
    frozen = [p for n, p in net.named_parameters() if n.startswith("blocks.1.")]
    for p in frozen:
        p.requires_grad_(False)
    before = [p.detach().clone() for p in frozen]
    opt = build_optimizer(net, OptimConfig())
    _loss(net, 0).backward()
    opt.step()
    assert all(torch.equal(a, p) for a, p in zip(before, frozen, strict=True))


def test_empty_optimiser_is_refused():
    with pytest.raises(ValueError, match="no parameters"):
        MuonAdamW([], [])


class _Grads(L.Callback):
    """The gradients at each optimiser step (before clipping) and the global norm after the step."""

    def __init__(self):
        self.grads: list[dict[str, torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads.append(
            {n: p.grad.clone() for n, p in pl_module.net.named_parameters() if p.grad is not None}
        )

    def on_train_batch_end(self, trainer, pl_module, *args):
        grads = [p.grad for p in pl_module.net.parameters() if p.grad is not None]
        self.norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()


def _fit(compose, path, *overrides):
    cfg = compose([*SLEEPING, *overrides], output_dir=path)
    datamodule, model, trainer, _ = build_run(cfg)
    probe = _Grads()
    trainer.callbacks.append(probe)
    trainer.fit(model, datamodule=datamodule)
    return model, trainer, probe


def test_accumulated_microbatches_give_the_update_of_the_whole_batch(compose, tmp_path, one_thread):
    """Batch 8 vs. 2 microbatches of 4 with accumulate_grad_batches=2, two optimiser steps.

    The loss is a mean over answer tokens; Lightning divides each microbatch's loss by k. Every Rule 110
    sample holds the same number of answer tokens (one per state), so two microbatches of 4 samples hold equal
    counts and (mean_1 + mean_2) / 2 is exactly the mean over the 8 samples: the gradients agree up to the
    order of float additions. The training loader is sequential, so the microbatches are the halves of the
    whole batch.
    """
    whole, whole_trainer, whole_probe = _fit(
        compose, tmp_path / "whole", "data.batch_size=8", "trainer.max_steps=2"
    )
    parts, parts_trainer, parts_probe = _fit(
        compose,
        tmp_path / "parts",
        "data.batch_size=4",
        "trainer.max_steps=2",
        "trainer.accumulate_grad_batches=2",
    )
    assert whole_trainer.global_step == parts_trainer.global_step == 2
    assert len(whole_probe.grads) == len(parts_probe.grads) == 2
    for step, (a, b) in enumerate(zip(whole_probe.grads, parts_probe.grads, strict=True)):
        assert a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-7, msg=f"step {step}: {name}")
    # AdamW's weights agree to fp32 round-off. Muon orthogonalises in bfloat16 (torch's implementation), so a
    # last-bit difference in a gradient can round a bf16 entry the other way: its weights agree to about one
    # bf16 ulp (2**-8) of the update (learning rate 2e-3 times at most sqrt(3) for the 3d x d qkv matrix).
    muon_weights = {id(p) for p in split_parameters(whole.net)[0]}
    for (name, a), b in zip(whole.net.named_parameters(), parts.net.parameters(), strict=True):
        atol = 2 * 2e-3 * 3**0.5 * 2**-6 if id(a) in muon_weights else 1e-6
        torch.testing.assert_close(b, a, rtol=0, atol=atol, msg=name)


def test_gradient_clip_val_clips_the_global_norm(compose, tmp_path, one_thread):
    _, _, probe = _fit(
        compose,
        tmp_path / "run",
        "data.batch_size=4",
        "trainer.max_steps=1",
        "trainer.gradient_clip_val=0.001",
    )
    unclipped = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g) for g in probe.grads[0].values()])
    )
    assert unclipped > 0.01  # the clip had something to do
    assert probe.norm == pytest.approx(0.001, rel=1e-3)
