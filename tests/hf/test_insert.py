"""The Ouro recipe: fast-weight blocks inserted into a pretrained model, identity at insertion."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers", reason="needs the hf extra (pip install -e '.[hf]')")

import torch  # noqa: E402

from lmsleep.layers.fast_weight_mixer import FastWeightMixer  # noqa: E402
from lmsleep.models import SleepConfig  # noqa: E402

from .tiny import VOCAB, hf_logits, tiny  # noqa: E402

L = 8


def tokens(length: int = 24) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, length), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("family", ["qwen3", "qwen3_5"])
def test_inserted_blocks_leave_the_logits_unchanged(family):
    model, x = tiny(family, insert=[0, 1]), tokens()
    assert model.kinds.count("inserted") == 2
    assert model.kinds[1] == "inserted" and model.kinds[3] == "inserted"
    inserted = sum(p.numel() for p in model.inserted.parameters())
    assert inserted > 0
    with torch.no_grad():
        expected = hf_logits(model, x)
        plain, _ = model(x)
        slept, _ = model(x, SleepConfig(window=L, eviction="hard", passes=2))
        reference, _ = tiny(family)(x, SleepConfig(window=L, eviction="hard", passes=2))
    assert torch.equal(plain, expected)  # x + 0 is x: exactly the host's function
    assert torch.equal(slept, reference)


@pytest.mark.parametrize("passes", [1, 2])  # N = 1 runs hard-evicted windows as one batch, N = 2 one by one
def test_gradients_reach_the_inserted_layers_and_through_their_fast_weights(passes):
    """At insertion only the zero output projection gets a gradient (nothing flows through it yet); after
    one step every inserted parameter does, and an attention-only host then passes gradient from the last
    window to the first one through the inserted fast weights."""
    model, x = tiny("qwen3", insert="every:1"), tokens()
    cfg = SleepConfig(window=L, eviction="hard", passes=passes)
    block = model.inserted["0"]
    assert isinstance(block.mixer, FastWeightMixer) and block.mixer.rule == "gated_delta"
    logits, _ = model(x, cfg)
    logits[:, -L:].logsumexp(-1).sum().backward()
    assert block.mixer.out.weight.grad.abs().max() > 0
    assert block.mixer.qkv.weight.grad is None or block.mixer.qkv.weight.grad.abs().max() == 0
    with torch.no_grad():
        for b in model.inserted.values():
            b.mixer.out.weight.add_(b.mixer.out.weight.grad, alpha=-1.0)
    model.zero_grad()
    captured, embed = [], model.embed

    def capturing(ids):
        e = embed(ids)
        e.retain_grad()
        captured.append(e)
        return e

    model.embed = capturing
    logits, _ = model(x, cfg)
    logits[:, -L:].logsumexp(-1).sum().backward()
    for b in model.inserted.values():
        for name, p in b.named_parameters():
            assert p.grad is not None and p.grad.abs().max() > 0, name
    assert captured[0].grad[:, :L].abs().max() > 0


def test_staged_warm_up_of_the_inserted_layers_only():
    """The paper's first stage for Ouro trains only the inserted layers: SleepSchedule's stages take
    fnmatch patterns on parameter names, and the inserted blocks' are ``inserted.*``."""
    from types import SimpleNamespace

    from lmsleep.callbacks.sleep_schedule import SleepSchedule

    model, x = tiny("qwen3", insert=[0, 1]), tokens()
    SleepSchedule._set_trainable(SimpleNamespace(net=model), {"train": ["inserted.*"]})
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {name for name, _ in model.named_parameters() if name.startswith("inserted.")}
    logits, _ = model(x, SleepConfig(window=L, eviction="hard", passes=2))
    logits.logsumexp(-1).sum().backward()
    assert all(p.grad is None for name, p in model.named_parameters() if name not in trainable)
    assert model.inserted["1"].mixer.out.weight.grad.abs().max() > 0


def test_hard_windows_in_one_batch_equal_the_window_loop():
    """Without linear layers, hard-evicted windows run as one batch (inserted blocks over the sequence with
    their context restarted per window): logits and the last window's state equal the window loop's."""
    model, x = tiny("qwen3", insert=[0]), tokens(length=21)  # windows of 8, 8 and 5 tokens
    with torch.no_grad():
        for b in model.inserted.values():
            b.mixer.out.weight.normal_(0, 0.1)  # let the inserted block act
        batched, s1 = model(x, SleepConfig(window=L, eviction="hard"))
        looped, s2 = model(x, SleepConfig(window=L, eviction="hard", tbptt_windows=1))
    assert (batched - looped).abs().max() < 1e-5
    assert (s1.pos, s1.window_index) == (s2.pos, s2.window_index) == (5, 2)
    assert (
        len(s1.tensors()) == len(s2.tensors()) == 6
    )  # k, v of both attention layers; S, conv of the inserted
    for t1, t2 in zip(s1.tensors(), s2.tensors(), strict=True):
        assert t1.shape == t2.shape and (t1 - t2).abs().max() < 1e-5
