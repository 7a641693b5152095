"""AnswerMetrics and masked_cross_entropy on a hand-made batch; the Muon/AdamW split; the LR schedule.
(The optimiser under Lightning: tests/lit/test_optimizer.py.)"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lmsleep.lit.metrics import AnswerMetrics, masked_cross_entropy
from lmsleep.lit.optim import OptimConfig, build_optimizer, split_parameters, warmup_cosine
from lmsleep.models import HybridLM

LN2 = math.log(2.0)


def hand_made_batch():
    """3 samples, 4 positions, 3 classes. Every position puts logit ln 2 on its predicted class and 0 on the
    two others, so p(predicted) = 2/4: cross-entropy ln 2 where the prediction is right, ln 4 where wrong.

    sample 0 (depth 1): answers at t=1 (right) and t=2 (wrong)       -> not exact
    sample 1 (depth 2): answers at t=2 and t=3, both right           -> exact
    sample 2 (depth 3): no answer at all                              -> counts nowhere
    """
    pred = torch.tensor([[0, 1, 0, 2], [1, 2, 0, 0], [2, 2, 2, 2]])
    labels = torch.tensor([[-100, 1, 2, -100], [-100, -100, 0, 0], [-100, -100, -100, -100]])
    logits = torch.nn.functional.one_hot(pred, 3).float() * LN2
    depth = torch.tensor([1, 2, 3])
    return logits, labels, depth


def test_masked_cross_entropy_hand_made():
    logits, labels, _ = hand_made_batch()
    loss = masked_cross_entropy(logits, labels)
    assert loss.item() == pytest.approx((LN2 + 2 * LN2 + LN2 + LN2) / 4, rel=1e-6)


def test_masked_cross_entropy_without_labels_is_zero_with_a_gradient():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    loss = masked_cross_entropy(logits, torch.full((2, 3), -100))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_answer_metrics_hand_made():
    logits, labels, depth = hand_made_batch()
    metric = AnswerMetrics(depth_name="t")
    metric.update(logits, labels, depth)
    out = {k: v.item() for k, v in metric.compute().items()}
    expected = {
        "loss": 5 * LN2 / 4, "acc": 3 / 4, "acc_exact": 1 / 2,
        "loss@t=1": 3 * LN2 / 2, "acc@t=1": 1 / 2, "acc_exact@t=1": 0.0,
        "loss@t=2": LN2, "acc@t=2": 1.0, "acc_exact@t=2": 1.0,
    }  # fmt: skip
    assert out.keys() == expected.keys()  # no bucket for depth 3: its only sample has no answer
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key


def test_answer_metrics_accumulate_over_batches_and_reset():
    logits, labels, depth = hand_made_batch()
    whole = AnswerMetrics(depth_name="t")
    whole.update(logits, labels, depth)
    parts = AnswerMetrics(depth_name="t")
    for i in range(3):
        parts.update(logits[i : i + 1], labels[i : i + 1], depth[i : i + 1])
    a, b = whole.compute(), parts.compute()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    parts.reset()
    parts.update(logits[1:2], labels[1:2], depth[1:2])
    assert parts.compute()["acc_exact"].item() == 1.0


def test_answer_metrics_without_depth_and_bad_depth():
    logits, labels, _ = hand_made_batch()
    metric = AnswerMetrics(depth_name="k")
    metric.update(logits, labels)
    out = metric.compute()
    assert out["acc@k=0"].item() == pytest.approx(0.75) and out["acc"].item() == pytest.approx(0.75)
    with pytest.raises(ValueError, match=r"depths must lie in \[0, 256\]"):
        metric.update(logits, labels, torch.tensor([1, 2, 257]))


def test_answer_metrics_bucket_each_answer_by_its_own_depth():
    """Per-position depths (Depo queries with their own k): tokens and exact matches per (sample, depth)."""
    V = 4
    labels = torch.tensor([[-100, 1, 2, -100, 3, 0, -100], [-100, 2, 2, -100, 1, 1, -100]])
    depth = torch.tensor([[0, 1, 1, 0, 3, 3, 0], [0, 3, 3, 0, 1, 1, 0]])
    predicted = torch.tensor([[0, 1, 2, 0, 3, 1, 0], [0, 2, 2, 0, 1, 1, 0]])  # one wrong: sample 0, k = 3
    logits = torch.nn.functional.one_hot(predicted, V).float() * 10
    metric = AnswerMetrics(depth_name="k")
    metric.update(logits, labels, depth)
    out = {k: v.item() for k, v in metric.compute().items()}
    assert out["acc"] == pytest.approx(7 / 8) and out["acc_exact"] == pytest.approx(1 / 2)  # per sample
    assert out["acc@k=1"] == 1.0 and out["acc_exact@k=1"] == 1.0
    assert out["acc@k=3"] == pytest.approx(3 / 4) and out["acc_exact@k=3"] == pytest.approx(1 / 2)
    assert not [k for k in out if k.endswith("=0")]  # unlabelled positions carry no depth bucket


# --- optimiser split -----------------------------------------------------------------------------------------
def linear_weights_in_blocks(net: nn.Module) -> set[str]:
    """The hidden weight matrices: the weights of the Linear layers inside the blocks."""
    return {
        f"{name}.weight"
        for name, m in net.named_modules()
        if isinstance(m, nn.Linear) and name.startswith("blocks.")
    }


NETS = {
    "transformer": dict(layout="attn,attn"),
    "hybrid_mamba2": dict(layout="attn,ssm", ssm=dict(rule="mamba2", heads=2, head_dim=8)),
    "hybrid_gated_delta": dict(layout="attn,ssm", ssm=dict(rule="gated_delta", heads=2, head_dim=8)),
}


@pytest.mark.parametrize("kind", NETS)
def test_muon_gets_exactly_the_hidden_matrices(kind):
    net = HybridLM(vocab_size=11, dim=16, heads=2, **NETS[kind])
    names = {id(p): n for n, p in net.named_parameters()}
    muon, adamw = split_parameters(net)
    muon_names, adamw_names = {names[id(p)] for p in muon}, {names[id(p)] for p in adamw}
    assert muon_names == linear_weights_in_blocks(net)
    assert adamw_names == set(names.values()) - muon_names
    assert {"embed.weight", "head.weight", "norm.weight", "blocks.0.mixer_norm.weight"} <= adamw_names
    assert all(p.dim() == 2 for p in muon)
    assert len(muon) + len(adamw) == len(names)

    optimizer = build_optimizer(net, OptimConfig(muon_lr=0.02, adamw_lr=0.003, betas=[0.8, 0.9]))
    muon_group, adamw_group = optimizer.param_groups
    assert muon_group["muon"] and not adamw_group["muon"]
    assert {id(p) for p in muon_group["params"]} == {id(p) for p in muon}
    assert {id(p) for p in adamw_group["params"]} == {id(p) for p in adamw}
    assert muon_group["lr"] == 0.02 and muon_group["momentum"] == 0.95
    assert adamw_group["lr"] == 0.003 and adamw_group["betas"] == (0.8, 0.9)


def test_split_on_a_hand_made_module():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(7, 4)
            self.blocks = nn.ModuleList(
                [nn.Linear(4, 4, bias=True), nn.RMSNorm(4), nn.Conv1d(4, 4, 3, groups=4)]
            )
            self.head = nn.Linear(4, 7, bias=False)

    net = Tiny()
    muon, adamw = split_parameters(net)
    assert muon == [net.blocks[0].weight]
    assert {id(p) for p in adamw} == {id(p) for n, p in net.named_parameters() if n != "blocks.0.weight"}


def test_optim_config_checks():
    with pytest.raises(ValueError, match="muon_lr must be > 0"):
        OptimConfig(muon_lr=0)
    with pytest.raises(ValueError, match="min_lr_ratio in \\[0, 1\\]"):
        OptimConfig(min_lr_ratio=1.5)
    with pytest.raises(ValueError, match="model.optim has no setting \\['muon_rate'\\]"):
        OptimConfig.from_dict({"muon_rate": 1e-3})
    with pytest.raises(ValueError, match="set trainer.gradient_clip_val"):
        OptimConfig.from_dict({"grad_clip": 1.0})


# --- schedule ---------------------------------------------------------------------------------------------
def test_warmup_cosine_values():
    f = warmup_cosine(total_steps=10, warmup_steps=4, min_lr_ratio=0.1)
    assert [f(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f(4) == pytest.approx(1.0)  # peak at the end of warm-up
    assert f(7) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert f(10) == pytest.approx(0.1) and f(25) == pytest.approx(0.1)  # floor, also after the end
    values = [f(s) for s in range(4, 11)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))  # decreasing after warm-up


def test_warmup_cosine_edge_cases():
    no_warmup = warmup_cosine(total_steps=4, warmup_steps=0, min_lr_ratio=0.0)
    assert [no_warmup(s) for s in range(5)] == pytest.approx([1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5,
                                                             (1 + math.cos(3 * math.pi / 4)) / 2, 0.0])  # fmt: skip
    constant = warmup_cosine(total_steps=100, warmup_steps=0, min_lr_ratio=1.0)
    assert {constant(s) for s in (0, 50, 100)} == {1.0}
    # a run shorter than its warm-up never reaches the peak
    short = warmup_cosine(total_steps=3, warmup_steps=50, min_lr_ratio=0.1)
    assert [short(s) for s in range(3)] == pytest.approx([0.02, 0.04, 0.06])
