"""lmsleep's window loop over transformers models, held to transformers' own forward (the oracle).

Tiny random fp32 models of every supported family (tests/hf/tiny.py). Skipped without the ``hf`` extra.
"""

from __future__ import annotations

import contextlib

import pytest

pytest.importorskip("transformers", reason="needs the hf extra (pip install -e '.[hf]')")

import torch  # noqa: E402
from transformers import DynamicCache  # noqa: E402

from lmsleep.models import SleepConfig, Stream  # noqa: E402
from lmsleep.models.hf import HFKV, from_hf  # noqa: E402
from lmsleep.models.hf import model as hf_model  # noqa: E402
from lmsleep.models.hf.kernels import torch_ops_on_cpu  # noqa: E402

from .tiny import CONFIGS, HYBRIDS, VOCAB, hf_logits, tiny  # noqa: E402

FAMILIES = list(CONFIGS)
B, L, T = 2, 8, 32  # four windows of 8 tokens


def tokens(seed: int = 1, length: int = T) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_no_eviction_window_by_window_equals_hf_forward(family):
    """N = 1 without eviction: windows of 8 tokens carrying the KV and the linear states give transformers'
    full-sequence logits; single tokens after them give transformers' own cached decode.

    (transformers' Mamba-2 single-token path is not its chunked path: Nemotron-H's decode differs from
    its full forward by ~1e-4 on these weights, so each path is held to its own oracle.)
    """
    model, x = tiny(family), tokens()
    with torch.no_grad():
        expected = hf_logits(model, x)
        one_span, _ = model(x)  # one window of the whole sequence
        stream = Stream(model, SleepConfig(eviction="none"), batch_size=B)
        windows = torch.cat([stream.feed(x[:, i : i + L]) for i in range(0, 24, L)], dim=1)
        single = torch.cat([stream.feed(x[:, i : i + 1]) for i in range(24, T)], dim=1)
        # explicit positions: Bamba's forward restarts them at 0 on every call without them, cache or not
        cache, spans = DynamicCache(config=model.hf.config), [(0, 8), (8, 16), (16, 24)]
        decoded = [
            hf_logits(
                model, x[:, i:j], past_key_values=cache, use_cache=True, position_ids=torch.arange(i, j)[None]
            )
            for i, j in spans + [(t, t + 1) for t in range(24, T)]
        ]
    assert (one_span - expected).abs().max() < 1e-5
    assert (windows - expected[:, :24]).abs().max() < 1e-5
    assert (single - torch.cat(decoded, dim=1)[:, 24:]).abs().max() < 1e-5
    assert stream.kv_length == T  # every family here has attention: its KV holds the whole sequence


def _hf_hard_reference(model, x: torch.Tensor) -> torch.Tensor:
    """Hard eviction with transformers' own cache: each window a fresh ``DynamicCache`` (no KV, positions
    from 0), into which the previous window's recurrent states are put (conv context zero: it is
    window-local, like the KV)."""
    recurrent: dict[int, torch.Tensor] = {}
    conv_shape: dict[int, torch.Size] = {}
    outs = []
    for start in range(0, x.shape[1], L):
        cache = DynamicCache(config=model.hf.config)
        for i, S in recurrent.items():
            cache.update_conv_state(torch.zeros(conv_shape[i]), i)
            cache.update_recurrent_state(S, i)
        outs.append(hf_logits(model, x[:, start : start + L], past_key_values=cache, use_cache=True))
        for i, layer in enumerate(cache.layers):
            if hasattr(layer, "recurrent_states") and layer.recurrent_states[0] is not None:
                recurrent[i] = layer.recurrent_states[0].clone()
                conv_shape[i] = layer.conv_states[0].shape
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("family", FAMILIES)
def test_hard_eviction_equals_reference(family):
    model, x = tiny(family), tokens()
    with torch.no_grad():
        expected = _hf_hard_reference(model, x)
        one_span, _ = model(x, SleepConfig(window=L, eviction="hard"))
        looped, _ = model(x, SleepConfig(window=L, eviction="hard", tbptt_windows=1))  # the window loop
        full = hf_logits(model, x)
    assert (one_span - expected).abs().max() < 1e-5
    assert (looped - expected).abs().max() < 1e-5
    assert (full[:, L:] - expected[:, L:]).abs().max() > 1e-3  # eviction does change the later windows


def _sliding_mask(length: int) -> torch.Tensor:
    i = torch.arange(length)
    return ((i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - L))[None, None]


@pytest.mark.parametrize("family", FAMILIES)
def test_sliding_eviction_equals_hf_forward_with_a_sliding_mask(family):
    """Sliding eviction with N = 1 is attention masked to the last L tokens (positions relative), the linear
    layers running through: transformers' full forward with that mask. The window loop re-rotates the kept
    keys to each new window start; the one-span path does not."""
    model, x = tiny(family), tokens()
    # the hybrids' models take a mask per layer type; Llama's takes the 4D mask itself
    masks = (
        {"full_attention": _sliding_mask(T), "linear_attention": None}
        if family in HYBRIDS + ("qwen3",)
        else _sliding_mask(T)
    )
    cfg = SleepConfig(window=L, eviction="sliding")
    with torch.no_grad():
        expected = hf_logits(model, x, attention_mask=masks)
        one_span, _ = model(x, cfg)
        stream = Stream(model, cfg, batch_size=B)
        # pieces of 6 cut at window ends: 6, 2, 4, 4, 2, 6, 6, 2 tokens (none single: see the test above)
        streamed = torch.cat([stream.feed(x[:, i : i + 6]) for i in range(0, T, 6)], dim=1)
    with torch.enable_grad():  # checkpointed windows run the window loop
        looped, _ = model(x, SleepConfig(window=L, eviction="sliding", checkpoint_windows=True))
    assert (one_span - expected).abs().max() < 1e-5
    assert (looped.detach() - expected).abs().max() < 1e-5
    assert (streamed - expected).abs().max() < 1e-5


@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_streaming_decode_equals_the_training_forward(eviction):
    """What ``lmsleep generate`` runs (a Stream, sleeping N = 2 whenever a window fills) gives the logits of
    the training-time forward (``run_windows``) on the same tokens: bit for bit when fed whole windows; fed one
    token at a time, transformers' recurrent single-token Gated DeltaNet path differs from its chunked one at
    fp32 round-off (< 1e-5 at N = 1, in float64 too: it computes in fp32), which the sleep pass carries on."""
    model, x = tiny("qwen3_5"), tokens(length=20)
    cfg = SleepConfig(window=L, eviction=eviction, passes=2)
    with torch.no_grad():
        expected, _ = model(x, cfg)
        by_window = Stream(model, cfg, batch_size=B)
        windows = torch.cat([by_window.feed(x[:, t : t + L]) for t in range(0, x.shape[1], L)], dim=1)
        by_token = Stream(model, cfg, batch_size=B)
        single = torch.cat([by_token.feed(x[:, t : t + 1]) for t in range(x.shape[1])], dim=1)
        awake, _ = model(x, SleepConfig(window=L, eviction=eviction, passes=1))
    assert torch.equal(windows, expected)
    assert (single - expected).abs().max() < 3e-4
    assert (awake - expected)[:, L:].abs().max() > 1e-2  # sleeping changed the later windows


def _capture_embeddings(model) -> list[torch.Tensor]:
    captured, embed = [], model.embed

    def capturing(ids):
        e = embed(ids)
        e.retain_grad()
        captured.append(e)
        return e

    model.embed = capturing
    return captured


@pytest.mark.parametrize("passes", [1, 2])
@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_reaches_the_first_window_only_through_fast_weights(family, passes):
    """A loss on the last window's logits backpropagates through the states across every hard boundary
    (and every sleep pass) to the first window's embeddings: non-zero for hybrids, zero without fast
    weights (attention-only: the KV is evicted)."""
    model, x = tiny(family), tokens()
    captured = _capture_embeddings(model)
    logits, _ = model(x, SleepConfig(window=L, eviction="hard", passes=passes))
    logits[:, -L:].logsumexp(-1).sum().backward()
    first = captured[0].grad[:, :L]
    if family in HYBRIDS:
        assert first.abs().max() > 0
    else:
        assert first.abs().max() == 0
    assert captured[-1].grad[:, -L:].abs().max() > 0


def _hf_sleep_reference(model, x: torch.Tensor, passes: int) -> torch.Tensor:
    """Algorithm 1 (hard eviction, every block looped, S accumulated) written with transformers' forward:
    pass 1 from the tokens, passes 2..N from the previous pass's last-layer features (``inputs_embeds``),
    each pass from the window's start (no KV, zero conv context) with the previous pass's recurrent states."""
    feats: list[torch.Tensor] = []
    hook = model.hf.model.layers[-1].register_forward_hook(
        lambda m, i, out: feats.append(out[0] if isinstance(out, tuple) else out)
    )
    recurrent, conv_shape, outs = {}, {}, []
    try:
        for start in range(0, x.shape[1], L):
            ids, h = x[:, start : start + L], None
            last = start + L >= x.shape[1]
            for p in range(1 if last else passes):
                cache = DynamicCache(config=model.hf.config)
                for i, S in recurrent.items():
                    cache.update_conv_state(torch.zeros(conv_shape[i]), i)
                    cache.update_recurrent_state(S, i)
                inputs = {"inputs_embeds": h} if p else {}
                logits = hf_logits(model, None if p else ids, past_key_values=cache, use_cache=True, **inputs)
                if p == 0:
                    outs.append(logits)
                h = feats[-1]
                for i, layer in enumerate(cache.layers):
                    if hasattr(layer, "recurrent_states") and layer.recurrent_states[0] is not None:
                        recurrent[i] = layer.recurrent_states[0].clone()
                        conv_shape[i] = layer.conv_states[0].shape
    finally:
        hook.remove()
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("family", HYBRIDS)
def test_sleep_passes_equal_reference_and_change_later_windows(family):
    model, x = tiny(family), tokens()
    with torch.no_grad():
        n1, _ = model(x, SleepConfig(window=L, eviction="hard", passes=1))
        n2, _ = model(x, SleepConfig(window=L, eviction="hard", passes=2))
        again, _ = model(x, SleepConfig(window=L, eviction="hard", passes=2))
        expected = _hf_sleep_reference(model, x, passes=2)
    assert torch.equal(n2, again)  # deterministic
    assert (n2 - expected).abs().max() < 1e-5
    assert torch.equal(n1[:, :L], n2[:, :L])  # the first window is woken before any sleep
    assert (n1[:, L:] - n2[:, L:]).abs().max() > 1e-4


def test_looped_slice_runs_the_coda_and_differs_from_looping_all():
    model, x = tiny("qwen3_5", loop="1:3"), tokens()
    assert model.loop_range == range(1, 3)
    everything = tiny("qwen3_5")
    with torch.no_grad():
        sliced, _ = model(x, SleepConfig(window=L, eviction="hard", passes=3))
        looped_all, _ = everything(x, SleepConfig(window=L, eviction="hard", passes=3))
        n1, _ = model(x, SleepConfig(window=L, eviction="hard", passes=1))
    assert torch.equal(sliced[:, :L], looped_all[:, :L])
    assert (sliced[:, L:] - looped_all[:, L:]).abs().max() > 1e-4
    assert (sliced[:, L:] - n1[:, L:]).abs().max() > 1e-4


def test_truncated_backprop_options_cut_the_gradient_path():
    """``tbptt_windows=1`` detaches the state at every boundary and ``grad_passes=1`` (of N = 2) every
    sleep pass but the last: no gradient from the last window reaches the first window's tokens."""
    for cfg in (
        SleepConfig(window=L, eviction="hard", passes=2, tbptt_windows=1),
        SleepConfig(window=L, eviction="hard", passes=2, grad_passes=1),
    ):
        model, x = tiny("qwen3_5"), tokens()
        captured = _capture_embeddings(model)
        logits, _ = model(x, cfg)
        logits[:, -L:].logsumexp(-1).sum().backward()
        assert captured[0].grad is None or captured[0].grad.abs().max() == 0


def test_checkpointed_windows_give_the_same_gradients():
    x = tokens()
    grads = []
    for checkpoint in (False, True):
        model = tiny("qwen3_5")
        logits, _ = model(x, SleepConfig(window=L, eviction="hard", passes=2, checkpoint_windows=checkpoint))
        logits.logsumexp(-1).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_cpu_ops_are_torch_while_kernels_stay_bound_outside():
    """transformers binds Qwen3.5's ops to flash-linear-attention when it is importable, even on CPU;
    inside :func:`torch_ops_on_cpu` they are the torch functions, and they are restored afterwards."""
    model = tiny("qwen3_5")
    module = model._op_modules[
        [m.__name__ for m in model._op_modules].index("transformers.models.qwen3_5.modeling_qwen3_5")
    ]
    before = module.torch_chunk_gated_delta_rule
    with torch_ops_on_cpu(model._op_modules, True):
        assert module.torch_chunk_gated_delta_rule.__module__ == module.__name__
        assert not hasattr(module.torch_chunk_gated_delta_rule, "__wrapped__")
    assert module.torch_chunk_gated_delta_rule is before


@pytest.mark.parametrize("family", ["nemotron_h", "bamba"])
def test_single_token_window_backpropagates_correctly(family, monkeypatch):
    """A one-token last window takes transformers' Mamba-2 decode path, which writes its state in place
    after saving it for backward. lmsleep saves copies there; the gradients equal those of PyTorch's own
    clone-on-mutation mode (``allow_mutation_on_saved_tensors``, which must span the backward too)."""
    x = tokens(length=2 * L + 1)
    cfg = SleepConfig(window=L, eviction="hard", passes=2)

    def gradients() -> torch.Tensor:
        model = tiny(family)
        captured = _capture_embeddings(model)
        logits, _ = model(x, cfg)
        logits[:, -1].logsumexp(-1).sum().backward()
        grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
        return torch.cat(grads + [captured[0].grad.flatten()])

    ours = gradients()
    monkeypatch.setattr(hf_model, "_copy_saved_tensors", lambda active: contextlib.nullcontext())
    with torch.autograd.graph.allow_mutation_on_saved_tensors():
        torch_mode = gradients()
    assert (ours - torch_mode).abs().max() <= 1e-5 * torch_mode.abs().max()
    assert ours.abs().max() > 0


def test_eager_attention_and_native_sliding_layers():
    """``attn_implementation="eager"`` (explicit additive masks everywhere) and a model with its own
    ``sliding_attention`` layers (window 4 < L) give transformers' logits too."""
    x = tokens()
    model = tiny("qwen3_5", attn_implementation="eager")
    with torch.no_grad():
        expected = hf_logits(model, x)
        one_span, _ = model(x)
        stream = Stream(model, SleepConfig(eviction="none"), batch_size=B)
        streamed = torch.cat([stream.feed(x[:, i : i + L]) for i in range(0, T, L)], dim=1)
        hard, _ = model(x, SleepConfig(window=L, eviction="hard", tbptt_windows=1))
        hard_expected = _hf_hard_reference(model, x)
    assert (one_span - expected).abs().max() < 1e-5
    assert (streamed - expected).abs().max() < 1e-5
    assert (hard - hard_expected).abs().max() < 1e-5
    config = dict(CONFIGS["qwen3"], initializer_range=0.1)
    torch.manual_seed(0)
    plain = from_hf(config=config).eval()
    torch.manual_seed(0)  # the same weights, the first layer's attention limited to 4 keys
    windowed = from_hf(
        config=dict(
            config,
            layer_types=["sliding_attention", "full_attention"],
            sliding_window=4,
            use_sliding_window=True,
        )
    ).eval()
    assert windowed._native_sliding == {0: 4, 1: None}
    with torch.no_grad():
        expected = hf_logits(windowed, x)
        stream = Stream(windowed, SleepConfig(eviction="none"), batch_size=B)
        streamed = torch.cat([stream.feed(x[:, i : i + L]) for i in range(0, T, L)], dim=1)
        unwindowed = hf_logits(plain, x)
    assert (windowed(x)[0] - expected).abs().max() < 1e-5
    assert (streamed - expected).abs().max() < 1e-5
    assert (unwindowed - expected).abs().max() > 1e-3  # the model's own window does narrow attention


@pytest.mark.parametrize("family", ["qwen3_5", "bamba"])
def test_saved_stream_continues_exactly(family, tmp_path):
    """A stream saved mid-window (sliding eviction, N = 2) and loaded into a fresh Stream continues with the
    same logits as the uninterrupted one (the KV's key rotation is re-attached on load)."""
    model, x = tiny(family), tokens()
    cfg = SleepConfig(window=L, eviction="sliding", passes=2)
    with torch.no_grad():
        whole = Stream(model, cfg, batch_size=B)
        expected = torch.cat([whole.feed(x[:, :19]), whole.feed(x[:, 19:])], dim=1)
        first = Stream(model, cfg, batch_size=B)
        first.feed(x[:, :19])
        first.save(tmp_path / "stream.pt")
        resumed = Stream.load(tmp_path / "stream.pt", model)
        rest = resumed.feed(x[:, 19:])
    assert torch.equal(rest, expected[:, 19:])
    kv = resumed.state.layers[1]  # an attention layer in both
    assert isinstance(kv, HFKV) and len(kv) and kv.rotation is not None
