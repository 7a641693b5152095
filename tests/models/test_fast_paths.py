"""The training-speed paths equal the plain computation they replace (float64, logits, gradients, state)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lmsleep.models.sleep as sleep_module
from lmsleep.layers.fast_weight_mixer import FastWeightMixer
from lmsleep.models import SleepConfig, run_windows
from lmsleep.ops.update_rule import UPDATE_RULES
from tests.support.models import make_model, random_ids, state_tensors_close

RULES = tuple(UPDATE_RULES)  # every rule of the one table
CLOSE = dict(atol=1e-10, rtol=1e-10)


def window_loop(monkeypatch) -> None:
    monkeypatch.setattr(sleep_module, "wakes_in_one_span", lambda *args: False)


def logits_grads_state(model, ids, cfg):
    model.zero_grad(set_to_none=True)
    logits, state = run_windows(model, ids, cfg)
    (logits.square().mean() + sum(t.square().sum() for t in state.tensors())).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads, state


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("eviction", ["hard", "sliding", "none"])
@pytest.mark.parametrize("T", [24, 29, 5])  # whole windows, a short last window, shorter than a window
def test_one_span_equals_the_window_loop(monkeypatch, rule, eviction, T):
    """N = 1 runs every layer over all windows at once; logits, gradients of every parameter (through
    the final state too) and the state handed on equal the window-by-window loop."""
    model = make_model(rule).train()
    ids = random_ids(2, T)
    cfg = SleepConfig(passes=1, window=8, eviction=eviction)
    fast = logits_grads_state(model, ids, cfg)
    with monkeypatch.context() as m:
        window_loop(m)
        slow = logits_grads_state(model, ids, cfg)
    torch.testing.assert_close(fast[0], slow[0], **CLOSE)
    assert fast[1].keys() == slow[1].keys()
    for name in fast[1]:
        torch.testing.assert_close(fast[1][name], slow[1][name], **CLOSE, msg=name)
    assert state_tensors_close(fast[2], slow[2], **CLOSE)


@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_one_span_continues_a_stream_of_calls(monkeypatch, eviction):
    """A second call continues from the first call's state (fast weights, sliding KV prefix, conv tails)."""
    model = make_model()
    a, b = random_ids(1, 21, seed=1), random_ids(1, 16, seed=2)
    cfg = SleepConfig(passes=1, window=8, eviction=eviction)

    def two_calls():
        _, state = run_windows(model, a[:, :16], cfg)
        state = sleep_module.evict(model, state, state, cfg)  # the boundary after two whole windows
        return run_windows(model, b, cfg, state)

    fast = two_calls()
    with monkeypatch.context() as m:
        window_loop(m)
        slow = two_calls()
    torch.testing.assert_close(fast[0], slow[0], **CLOSE)
    assert state_tensors_close(fast[1], slow[1], **CLOSE)


def test_window_loop_stays_where_it_is_needed():
    model = make_model()
    state = model.init_state(1)
    assert sleep_module.wakes_in_one_span(model, SleepConfig(passes=1), state)
    assert not sleep_module.wakes_in_one_span(model, SleepConfig(passes=2), state)
    assert not sleep_module.wakes_in_one_span(model, SleepConfig(passes=1, tbptt_windows=1), state)
    with torch.enable_grad():
        assert not sleep_module.wakes_in_one_span(model, SleepConfig(checkpoint_windows=True), state)
    # a transformer has nothing to consolidate: its windows are one span at any N
    assert sleep_module.wakes_in_one_span(make_model(layout="attn,attn"), SleepConfig(passes=3), state)


@pytest.mark.parametrize("conv_size", [2, 4])
@pytest.mark.parametrize("evict_every", [None, 5])
def test_shifted_add_convolution_equals_conv1d(conv_size, evict_every):
    """The short causal convolution (shifted multiply-adds) against F.conv1d, window by window under hard
    eviction, continuing from a tail, with gradients for input and kernel."""
    torch.manual_seed(0)
    mixer = FastWeightMixer(8, rule="gated_delta", heads=2, conv_size=conv_size).double()
    B, T, C = 2, 13, mixer.conv.in_channels
    u = torch.randn(B, T, C, dtype=torch.float64, requires_grad=True)
    tail = torch.randn(B, C, conv_size - 1, dtype=torch.float64)
    y, new_tail = mixer._conv(u, tail, evict_every)
    grads = torch.autograd.grad(y.square().sum(), (u, mixer.conv.weight, mixer.conv.bias))

    def reference(u):
        L = evict_every or T
        outs, start_tail = [], tail
        for s in range(0, T, L):
            seq = torch.cat((start_tail, u[:, s : s + L].transpose(1, 2)), dim=2)
            outs.append(F.conv1d(seq, mixer.conv.weight, mixer.conv.bias, groups=C).transpose(1, 2))
            last_tail = seq[:, :, -(conv_size - 1) :]
            start_tail = torch.zeros_like(tail)  # hard eviction: the context restarts
        return torch.cat(outs, dim=1), last_tail

    y_ref, tail_ref = reference(u)
    grads_ref = torch.autograd.grad(y_ref.square().sum(), (u, mixer.conv.weight, mixer.conv.bias))
    torch.testing.assert_close(y, y_ref, **CLOSE)
    torch.testing.assert_close(new_tail, tail_ref, **CLOSE)
    for g, r in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, r, **CLOSE)
