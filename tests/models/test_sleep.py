"""Generalised Algorithm 1 (lmsleep.models.sleep): what N, eviction, the gradient options and the state modes
promise, each checked against an independent construction.

Models are tiny float64 HybridLMs with a "strong" init (see ``make_model``), so that every mechanism moves the
logits by O(1) while exact equalities hold to ~1e-15.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import lmsleep.models.sleep as sleep_module
from lmsleep.layers.attention import KVCache
from lmsleep.layers.fast_weight_mixer import FastWeights
from lmsleep.models import ModelState, SleepConfig, Stream, run_windows
from lmsleep.models.sleep import wake, window_step
from lmsleep.ops.update_rule import UPDATE_RULES
from tests.support.models import (
    Recorder,
    assert_grads_close,
    expected_events,
    fast_weights_of,
    force_zero_writes,
    make_model,
    only_fast_weights,
    param_grads,
    random_ids,
    reference_run,
    weighted_sum,
)

RULES = tuple(UPDATE_RULES)  # every rule of the one table
L = 6
T = 4 * L  # four windows
EXACT = dict(atol=1e-12, rtol=0.0)


def windows(x: torch.Tensor, n: int = T // L) -> list[torch.Tensor]:
    return [x[:, w * L : (w + 1) * L] for w in range(n)]


# --- SleepConfig -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"passes": 0}, "sleep.passes must be >= 1"),
        ({"window": 0}, "sleep.window must be >= 1"),
        ({"eviction": "soft"}, r"sleep.eviction='soft' is not one of \('none', 'hard', 'sliding'\)"),
        ({"state_mode": "reset"}, r"sleep.state_mode='reset' is not one of \('accumulate', 'restart'\)"),
        ({"grad_passes": 0}, "sleep.grad_passes must be >= 1 or null"),
        ({"tbptt_windows": 0}, "sleep.tbptt_windows must be >= 1 or null"),
    ],
)
def test_sleep_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SleepConfig(**kwargs)


def test_sleep_config_defaults_and_sliding_span():
    cfg = SleepConfig(passes="3", window="8")  # strings from a CLI become ints
    assert (cfg.passes, cfg.window) == (3, 8)
    assert cfg.eviction == "hard" and cfg.state_mode == "accumulate"
    assert cfg.grad_passes is None and cfg.tbptt_windows is None and cfg.checkpoint_windows is False
    assert cfg.sliding is None
    assert SleepConfig(window=5, eviction="sliding").sliding == 5
    assert SleepConfig(**cfg.to_dict()) == cfg


def test_run_windows_needs_tokens():
    with pytest.raises(
        ValueError, match=r"run_windows needs at least one token, got input_ids of shape \(2, 0\)"
    ):
        make_model()(random_ids(2, 0), SleepConfig(window=L))


def test_run_windows_must_start_at_a_window_boundary():
    model = make_model()
    _, state = model(random_ids(1, 3), SleepConfig(window=L))  # 3 tokens into a window
    assert state.pos == 3
    with pytest.raises(ValueError, match="must start at a window boundary"):
        run_windows(model, random_ids(1, L), SleepConfig(window=L), state)


# --- N = 1 is the plain hybrid ---------------------------------------------------------------------------
@pytest.mark.parametrize("rule", RULES)
def test_one_pass_hard_equals_window_by_window_wake_with_only_fast_weights_carried(rule):
    model = make_model(rule)
    ids = random_ids(2, T - 2)  # a short last window too
    got, _ = run_windows(model, ids, SleepConfig(passes=1, window=L, eviction="hard"))
    # by hand: each window is a full-context forward from the previous window's fast weights only
    state, expected = model.init_state(2), []
    for start in range(0, ids.shape[1], L):
        logits, woke = model(ids[:, start : start + L], state=state)
        expected.append(logits)
        state = only_fast_weights(woke)
    torch.testing.assert_close(got, torch.cat(expected, dim=1), **EXACT)


@pytest.mark.parametrize("rule", RULES)
def test_one_pass_sliding_equals_a_single_pass_with_a_sliding_attention_mask(rule):
    """Sliding eviction at N = 1 = one pass over the whole sequence with attention limited to the last L
    tokens: shifting the kept keys to the new window origin and carrying the conv tails changes nothing."""
    model = make_model(rule)
    ids = random_ids(2, T + 3)
    got, _ = run_windows(model, ids, SleepConfig(passes=1, window=L, eviction="sliding"))
    expected, _, _ = wake(model, ids, model.init_state(2), SleepConfig(window=L, eviction="sliding"))
    torch.testing.assert_close(got, expected, **EXACT)
    # and it is not the full-context model: the mask matters
    full, _ = model(ids)
    assert (full[:, L:] - got[:, L:]).abs().max() > 1e-3


def test_default_forward_is_one_full_context_window():
    model = make_model()
    ids = random_ids(2, T)
    logits, state = model(ids)
    expected, _ = run_windows(model, ids, SleepConfig(passes=4, window=L, eviction="none"))
    torch.testing.assert_close(logits, expected, **EXACT)
    assert state.pos == T and state.window_index == 0 and state.kv_length() == T


# --- N > 1 ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_more_passes_change_fast_weights_and_later_logits_only(rule, eviction):
    model = make_model(rule)
    ids = random_ids(2, T)
    one, _ = run_windows(model, ids, SleepConfig(passes=1, window=L, eviction=eviction))
    rec = Recorder()
    three, _ = run_windows(model, ids, SleepConfig(passes=3, window=L, eviction=eviction), hooks=rec)
    first, *later = zip(windows(one), windows(three), strict=True)
    # the first window never saw a sleep (N = 1 runs its windows in one span: equal up to round-off)
    torch.testing.assert_close(first[1], first[0], **EXACT)
    for a, b in later:
        assert (a - b).abs().max() > 1e-2
    # the fast weights after sleep differ from those after the wake pass, in every fast-weight layer
    assert len(rec.sleep_states) == T // L - 1
    for woke, slept in zip(rec.wake_states, rec.sleep_states, strict=False):
        for i, S in fast_weights_of(woke).items():
            assert (fast_weights_of(slept)[i] - S).abs().max() > 1e-3


def test_sleep_hooks_fire_in_algorithm_order():
    model = make_model()
    rec = Recorder()
    run_windows(model, random_ids(1, T), SleepConfig(passes=3, window=L), hooks=rec)
    assert rec.events == expected_events(T // L, 3)
    # N = 1 (or the stream's per-window path) wakes all windows in one span
    rec = Recorder()
    run_windows(model, random_ids(1, T), SleepConfig(passes=1, window=L), hooks=rec)
    assert rec.events == [("wake_start", 0), ("wake_end", T // L - 1)]


def test_transformer_has_nothing_to_consolidate():
    """Without fast weights N > 1 is the N = 1 model (nothing survives eviction, nothing to sleep on)."""
    model = make_model(layout="attn,attn")
    ids = random_ids(2, T)
    for eviction in ("hard", "sliding"):
        rec = Recorder()
        a, _ = run_windows(model, ids, SleepConfig(passes=3, window=L, eviction=eviction), hooks=rec)
        b, _ = run_windows(model, ids, SleepConfig(passes=1, window=L, eviction=eviction))
        torch.testing.assert_close(a, b, atol=0.0, rtol=0.0)
        assert not [e for e in rec.events if e[0].startswith("sleep")]


# --- eviction ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", RULES)
def test_hard_eviction_leaves_only_fast_weights(rule):
    model = make_model(rule)
    cfg = SleepConfig(passes=3, window=L, eviction="hard")
    state = model.init_state(2)
    for w, ids in enumerate(windows(random_ids(2, T))):
        _, state = window_step(model, ids, state, cfg, consolidate=True, hooks=Recorder())
        assert state.kv_length() == 0 and state.pos == 0 and state.window_index == w + 1
        for kind, layer in zip(model.kinds, state.layers, strict=True):
            if kind == "attn":
                assert layer is None
            else:
                assert isinstance(layer, FastWeights) and layer.conv is None and layer.S.abs().max() > 0
    # the same through a stream, fed window by window
    stream = Stream(model, cfg, batch_size=2)
    for ids in windows(random_ids(2, T)):
        stream.feed(ids)
        assert stream.kv_length == 0
        assert [type(s) for s in stream.state.layers] == [type(None), FastWeights, type(None), FastWeights]
        assert all(s.conv is None for s in stream.state.layers if s is not None)


def test_sliding_eviction_keeps_the_last_window_minus_one_keys_at_negative_positions():
    model = make_model()
    cfg = SleepConfig(passes=2, window=L, eviction="sliding")
    ids = windows(random_ids(2, 2 * L), 2)
    _, state = window_step(model, ids[0], model.init_state(2), cfg, consolidate=True, hooks=Recorder())
    _, _, woke = wake(model, ids[0], model.init_state(2), cfg)
    for i, kind in enumerate(model.kinds):
        layer = state.layers[i]
        if kind == "attn":
            assert isinstance(layer, KVCache) and len(layer) == L - 1
            # the wake pass's last L-1 values, and its keys moved to the next window's origin (by -L):
            # rotating them back by +L gives the wake keys again
            torch.testing.assert_close(layer.v, woke.layers[i].v[:, :, 1:], atol=0.0, rtol=0.0)
            attention = model.blocks[i].mixer
            back = attention.rotary(layer.k, torch.full((L - 1,), L))
            torch.testing.assert_close(back, woke.layers[i].k[:, :, 1:], atol=1e-12, rtol=0.0)
        else:
            assert isinstance(layer, FastWeights) and layer.conv is not None  # the local context continues
            torch.testing.assert_close(layer.conv, woke.layers[i].conv, atol=0.0, rtol=0.0)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("passes", [1, 3])
def test_under_hard_eviction_an_earlier_token_acts_only_through_the_fast_weights(rule, passes, monkeypatch):
    model = make_model(rule)
    cfg = SleepConfig(passes=passes, window=L, eviction="hard")
    ids = random_ids(2, T)
    edited = ids.clone()
    edited[:, 2] = (edited[:, 2] + 1) % 13  # a token of window 0
    last = slice(T - L, T)

    def last_window(x):
        return run_windows(model, x, cfg)[0][:, last]

    assert (last_window(ids) - last_window(edited)).abs().max() > 1e-3  # it matters ...
    force_zero_writes(monkeypatch)
    rec = Recorder()
    run_windows(model, edited, cfg, hooks=rec)
    assert rec.wake_states and all(
        S.abs().max() == 0 for s in rec.wake_states for S in fast_weights_of(s).values()
    )
    # ... and only through S: with S stuck at zero the last window cannot tell
    torch.testing.assert_close(last_window(ids), last_window(edited), atol=0.0, rtol=0.0)


@pytest.mark.parametrize("feed", ["forward", "stream"])
def test_pure_attention_under_hard_eviction_forgets_every_earlier_window(feed):
    model = make_model(layout="attn,attn")
    cfg = SleepConfig(passes=2, window=L, eviction="hard")
    ids = random_ids(2, T - 1)
    edited = ids.clone()
    edited[:, 3] = (edited[:, 3] + 5) % 13

    def run(x):
        if feed == "forward":
            return run_windows(model, x, cfg)[0]
        stream = Stream(model, cfg, batch_size=2)
        return torch.cat([stream.feed(x[:, i : i + 1]) for i in range(x.shape[1])], dim=1)

    a, b = run(ids), run(edited)
    assert (a[:, 3:L] - b[:, 3:L]).abs().max() > 1e-3
    torch.testing.assert_close(a[:, :3], b[:, :3], atol=0.0, rtol=0.0)
    torch.testing.assert_close(a[:, L:], b[:, L:], atol=0.0, rtol=0.0)


# --- the independent Algorithm 1 --------------------------------------------------------------------------
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("eviction", ["hard", "sliding"])
@pytest.mark.parametrize("state_mode", ["accumulate", "restart"])
@pytest.mark.parametrize("grad_passes", [None, 1, 2])
def test_logits_and_gradients_match_an_independent_algorithm_1(rule, eviction, state_mode, grad_passes):
    model = make_model(rule)
    ids = random_ids(2, T - 1)
    cfg = SleepConfig(passes=3, window=L, eviction=eviction, state_mode=state_mode, grad_passes=grad_passes)
    got, state = run_windows(model, ids, cfg)
    expected, S = reference_run(model, ids, 3, L, state_mode, grad_passes, eviction)
    torch.testing.assert_close(got, expected, **EXACT)
    for i, s in fast_weights_of(state).items():
        torch.testing.assert_close(s, S[i], **EXACT)
    assert_grads_close(param_grads(model, weighted_sum(got)), param_grads(model, weighted_sum(expected)))


def test_state_modes_differ_and_restart_starts_every_pass_from_the_pre_window_fast_weights():
    model = make_model()
    ids = random_ids(2, T)
    acc, _ = run_windows(model, ids, SleepConfig(passes=3, window=L, state_mode="accumulate"))

    class Starts(Recorder):
        def __init__(self):
            super().__init__()
            self.starts = []

        def on_sleep_pass(self, window, pass_index, before, after):
            super().on_sleep_pass(window, pass_index, before, after)
            self.starts.append((window, fast_weights_of(before)))

    rec = Starts()
    res, _ = run_windows(model, ids, SleepConfig(passes=3, window=L, state_mode="restart"), hooks=rec)
    assert (acc[:, L:] - res[:, L:]).abs().max() > 1e-3
    torch.testing.assert_close(acc[:, :L], res[:, :L], atol=0.0, rtol=0.0)
    # every pass of window w starts from the S that window w started from (zero for window 0)
    incoming = {0: None}
    for w, state in enumerate(rec.sleep_states):
        incoming[w + 1] = fast_weights_of(state)
    assert len(rec.starts) == 2 * (T // L - 1)
    for w, starts in rec.starts:
        if w == 0:
            assert starts == {}  # no S yet: the pass starts from zero
        else:
            assert starts.keys() == incoming[w].keys()
            for i, S in starts.items():
                torch.testing.assert_close(S, incoming[w][i], atol=0.0, rtol=0.0)


# --- which blocks loop ------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", RULES)
def test_loop_slice_reruns_only_its_blocks(rule):
    """``loop="1:3"`` (Eq. 6): sleep re-runs blocks 1..2; the prelude (block 0) hands on its wake-pass state,
    the coda (block 3) runs once more on the last pass's output, so its fast weights change too."""
    model = make_model(rule, layout="ssm,ssm,attn,ssm", loop="1:3")
    assert model.loop_range == range(1, 3)
    ids = random_ids(2, T)
    rec = Recorder()
    got, _ = run_windows(model, ids, SleepConfig(passes=3, window=L), hooks=rec)
    for woke, slept in zip(rec.wake_states, rec.sleep_states, strict=False):
        a, b = fast_weights_of(woke), fast_weights_of(slept)
        torch.testing.assert_close(b[0], a[0], atol=0.0, rtol=0.0)
        assert (b[1] - a[1]).abs().max() > 1e-3
        assert (b[3] - a[3]).abs().max() > 1e-3
    expected, _ = reference_run(model, ids, 3, L)
    torch.testing.assert_close(got, expected, **EXACT)
    rec = Recorder()
    got, _ = run_windows(model, ids, SleepConfig(passes=3, window=L, eviction="sliding"), hooks=rec)
    expected, _ = reference_run(model, ids, 3, L, eviction="sliding")
    torch.testing.assert_close(got, expected, **EXACT)
    for woke, slept in zip(rec.wake_states, rec.sleep_states, strict=False):
        # the prelude's conv tail stays the wake pass's too
        torch.testing.assert_close(slept.layers[0].conv, woke.layers[0].conv, atol=0.0, rtol=0.0)
    everything = make_model(rule, layout="ssm,ssm,attn,ssm", loop="all")
    assert (run_windows(everything, ids, SleepConfig(passes=3, window=L))[0] - got)[:, L:].abs().max() > 1e-3


# --- gradient options -------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("eviction, grad_passes", [("hard", None), ("sliding", None), ("sliding", 1)])
def test_checkpointing_windows_gives_the_same_gradients_and_fires_hooks_once(rule, eviction, grad_passes):
    model = make_model(rule)
    ids = random_ids(2, T - 1)
    results = []
    for checkpoint in (False, True):
        rec = Recorder()
        cfg = SleepConfig(
            passes=3, window=L, eviction=eviction, checkpoint_windows=checkpoint, grad_passes=grad_passes
        )
        logits, _ = run_windows(model, ids, cfg, hooks=rec)
        grads = param_grads(model, weighted_sum(logits))  # the backward recomputes the checkpointed windows
        results.append((logits, grads, rec.events))
    (a, ga, ea), (b, gb, eb) = results
    torch.testing.assert_close(b, a, atol=0.0, rtol=0.0)
    assert_grads_close(gb, ga, atol=1e-13, rtol=1e-11)
    assert eb == ea == expected_events(T // L, 3)
    assert all(g.abs().max() > 0 for g in ga.values())  # every parameter gets a gradient


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("k", [1, 2])
def test_tbptt_windows_equals_losses_from_detached_incoming_states(rule, k):
    """With ``tbptt_windows=k`` the gradient is the sum over blocks of k windows of the gradient of their loss
    from a constant incoming state; the incoming states come from a (no-grad) stream."""
    model = make_model(rule)
    ids = random_ids(2, T)
    cfg = SleepConfig(passes=3, window=L, eviction="sliding")
    trunc = SleepConfig(**{**cfg.to_dict(), "tbptt_windows": k})
    got, _ = run_windows(model, ids, trunc)
    g_got = param_grads(model, weighted_sum(got))
    stream, pieces = Stream(model, cfg, batch_size=2), []
    for start in range(0, T, k * L):
        block = ids[:, start : start + k * L]
        logits, _ = run_windows(model, block, cfg, ModelState(stream.state.layers, 0, 0))  # a constant state
        pieces.append(logits)
        stream.feed(block)
    expected = torch.cat(pieces, dim=1)
    torch.testing.assert_close(got, expected, **EXACT)
    assert_grads_close(g_got, param_grads(model, weighted_sum(expected)))
    full, _ = run_windows(model, ids, cfg)
    g_full = param_grads(model, weighted_sum(full))
    assert max((g_full[n] - g_got[n]).abs().max() for n in g_full) > 1e-6  # truncation changes something


@pytest.mark.parametrize("state_mode", ["accumulate", "restart"])
def test_grad_passes_cut_the_wake_features_out_of_the_state_handed_on(state_mode):
    """Window 0's tokens reach window 1 through the features of pass 1 -> ... -> pass N (carried h) and
    through S. With ``grad_passes = k < N`` the features entering pass N-k+1 are constants, so the embedding
    rows of tokens that occur only in window 0 get no gradient from window 1's loss via h; in accumulate mode
    S is cut too (it also descends from pass 1), in restart mode S still starts from the pre-window S, which
    window 0's tokens did not write (window 0 starts from zero), so those rows get exactly zero gradient."""
    model = make_model(layout="attn,ssm,attn,ssm")
    ids = torch.cat([random_ids(2, L, seed=1, vocab=6), random_ids(2, L, seed=2, vocab=13, low=6)], dim=1)
    only_first = sorted(set(ids[:, :L].flatten().tolist()))
    for grad_passes, reaches in ((None, True), (3, True), (2, False), (1, False)):
        logits, _ = run_windows(
            model, ids, SleepConfig(passes=3, window=L, grad_passes=grad_passes, state_mode=state_mode)
        )
        g = param_grads(model, weighted_sum(logits[:, L:]))["embed.weight"][only_first]
        assert (g.abs().max() > 1e-6) == reaches, (grad_passes, g.abs().max())
        if not reaches:
            assert g.abs().max() == 0


def test_grad_passes_at_least_n_is_full_backprop_and_fewer_passes_differ():
    model = make_model()
    ids = random_ids(2, T)
    grads = {}
    for gp in (None, 3, 5, 2, 1):
        logits, _ = run_windows(model, ids, SleepConfig(passes=3, window=L, grad_passes=gp))
        grads[gp] = param_grads(model, weighted_sum(logits))
    assert_grads_close(grads[3], grads[None], atol=0.0, rtol=0.0)
    assert_grads_close(grads[5], grads[None], atol=0.0, rtol=0.0)
    for a, b in ((None, 2), (2, 1)):
        assert max((grads[a][n] - grads[b][n]).abs().max() for n in grads[a]) > 1e-6


@pytest.mark.parametrize("rule", RULES)
def test_grad_passes_below_n_cuts_gradient_to_earlier_windows_tokens(rule):
    """With grad_passes < N a later window's loss trains the parameters of the kept sleep passes, but no
    gradient reaches the tokens of a consolidated window (or anything before it)."""
    model = make_model(rule).train()
    # windows of L tokens with disjoint token ids, so an embedding row belongs to one window
    ids = torch.cat([random_ids(1, L, seed=w, low=1 + 4 * w, vocab=5 + 4 * w) for w in range(3)], dim=1)
    window_rows = [ids[0, w * L : (w + 1) * L].unique() for w in range(3)]

    def grads(grad_passes):
        model.zero_grad(set_to_none=True)
        logits, _ = run_windows(model, ids, SleepConfig(passes=3, window=L, grad_passes=grad_passes))
        logits[:, 2 * L :].square().sum().backward()  # a loss on the last window only
        return model.embed.weight.grad, model.blocks[1].mixer.qkv.weight.grad

    full_embed, full_qkv = grads(None)
    with pytest.warns(UserWarning, match="grad_passes=1 < passes=3"):
        sleep_module._WARNED.clear()
        cut_embed, cut_qkv = grads(1)
    for w in (0, 1):  # earlier windows' tokens: gradient only with full backprop
        assert full_embed[window_rows[w]].abs().max() > 0
        assert cut_embed[window_rows[w]].abs().max() == 0
    assert cut_embed[window_rows[2]].abs().max() > 0  # the loss window's own tokens
    assert cut_qkv.abs().max() > 0 and not torch.allclose(cut_qkv, full_qkv)


def test_settings_that_change_nothing_are_reported_once():
    sleep_module._WARNED.discard(
        "sleep.grad_passes=7 is more than sleep.passes=3: every pass is backpropagated, as with grad_passes=null"
    )
    with pytest.warns(UserWarning, match=r"sleep\.grad_passes=7 is more than sleep\.passes=3"):
        SleepConfig(passes=3, grad_passes=7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SleepConfig(passes=3, grad_passes=7)  # once
