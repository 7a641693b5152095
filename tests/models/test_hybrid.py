"""HybridLM construction (layout, loop, argument checks) and ModelState (the explicit per-sequence state)."""

from __future__ import annotations

import pytest
import torch

from lmsleep.layers.attention import Attention, KVCache
from lmsleep.layers.fast_weight_mixer import FastWeightMixer, FastWeights
from lmsleep.models import HybridLM, ModelState, SleepConfig
from lmsleep.models.hybrid import parse_layout, parse_loop
from tests.support.models import make_model, random_ids


# --- layout -----------------------------------------------------------------------------------------------
def test_layout_builds_the_named_mixers_in_order():
    model = HybridLM(
        7, dim=16, layout=" attn, ssm ,ssm,attn", heads=2, ssm={"heads": 2, "rule": "gated_delta"}
    )
    assert model.kinds == ["attn", "ssm", "ssm", "attn"]
    assert [type(b.mixer) for b in model.blocks] == [Attention, FastWeightMixer, FastWeightMixer, Attention]
    assert all(b.mixer.rule == "gated_delta" for b in model.blocks if b.kind == "ssm")
    assert model.has_fast_weights
    assert not HybridLM(7, dim=16, layout=["attn", "attn"], heads=2).has_fast_weights
    assert parse_layout(("ssm",)) == ["ssm"]


@pytest.mark.parametrize(
    "layout, match",
    [
        (
            "attn,mamba",
            r"model layout 'attn,mamba' has unknown block kinds \['mamba'\]; use a comma list of \['attn', 'ssm'\]",
        ),
        ("attn;ssm", r"unknown block kinds \['attn;ssm'\]"),
        ("attn,,ssm", r"unknown block kinds \[''\]"),
        (["attn", "SSM"], r"unknown block kinds \['SSM'\]"),
        ("", "model layout '' is empty"),
        ([], r"model layout \[\] is empty"),
    ],
)
def test_layout_errors_name_the_bad_kinds(layout, match):
    with pytest.raises(ValueError, match=match):
        HybridLM(7, dim=16, layout=layout, heads=2)


def test_constructor_argument_errors():
    with pytest.raises(ValueError, match="vocab_size must be a positive int"):
        HybridLM(None, dim=16)
    with pytest.raises(ValueError, match="vocab_size must be a positive int"):
        HybridLM(0, dim=16)
    with pytest.raises(ValueError, match="dim must be >= 1"):
        HybridLM(7, dim=0)
    with pytest.raises(ValueError, match="dim=18 must be divisible by heads=4"):
        HybridLM(7, dim=18, heads=4)
    with pytest.raises(ValueError, match="fast-weight rule 'delta' is not one of"):
        HybridLM(7, dim=16, layout="ssm", ssm={"rule": "delta"})


# --- loop -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "loop, depth, expected",
    [
        ("all", 4, range(0, 4)),
        (None, 3, range(0, 3)),
        ("middle", 4, range(1, 3)),
        ("middle", 8, range(2, 6)),
        ("middle", 10, range(2, 8)),
        ("middle", 2, range(0, 2)),
        ("1:3", 4, range(1, 3)),
        (" 1 : 3 ", 4, range(1, 3)),
        (":2", 4, range(0, 2)),
        ("2:", 4, range(2, 4)),
        ("0:4", 4, range(0, 4)),
        ([1, 3], 4, range(1, 3)),
        ((0, 1), 4, range(0, 1)),
    ],
)
def test_loop_parsing(loop, depth, expected):
    assert parse_loop(loop, depth) == expected


@pytest.mark.parametrize(
    "loop, match",
    [
        ("some", r"model.loop='some': use 'all', 'middle', 'a:b' or \[a, b\]"),
        ("ALL", r"model.loop='ALL': use 'all'"),
        ("x:y", r"model.loop='x:y': use 'all'"),
        ("1:2:3", r"model.loop='1:2:3': use 'all'"),
        ("1.5:3", r"model.loop='1.5:3': use 'all'"),
        (5, r"model.loop=5: use 'all'"),
        ("3:1", r"model.loop='3:1' must name a non-empty slice of the 4 blocks"),
        ("2:2", "must name a non-empty slice of the 4 blocks"),
        ("0:5", "must name a non-empty slice of the 4 blocks"),
        ("-1:2", "must name a non-empty slice of the 4 blocks"),
        ([1], r"model.loop=\[1\] must name a non-empty slice"),
        ([0, 2, 3], "must name a non-empty slice"),
    ],
)
def test_loop_errors_say_what_is_allowed(loop, match):
    with pytest.raises(ValueError, match=match):
        parse_loop(loop, 4)
    with pytest.raises(ValueError, match=match):
        HybridLM(7, dim=16, layout="attn,ssm,attn,ssm", heads=2, loop=loop)


def test_model_keeps_its_loop_range():
    assert make_model(loop="1:3").loop_range == range(1, 3)
    assert make_model(loop="middle").loop_range == range(1, 3)
    assert make_model().loop_range == range(4)


def test_parameters_hold_no_per_sequence_state():
    """docs/design.md#contracts: the state is passed in and out, never a module buffer (DDP ranks and
    checkpoints stay right)."""
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(random_ids(2, 20), SleepConfig(passes=3, window=6))
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [n for n, _ in model.named_buffers()] == [
        n for n, _ in model.named_buffers() if n.endswith("inv_freq")
    ]


# --- ModelState -------------------------------------------------------------------------------------------
def _state_with_everything() -> tuple[HybridLM, ModelState]:
    """A mid-window state with KV caches, fast weights with conv tails, and an empty (None) layer."""
    model = make_model(layout="attn,ssm,attn,ssm")
    _, state = model(random_ids(2, 9), SleepConfig(passes=2, window=6, eviction="sliding"))
    state = state.replace(2, None)
    return model, state


def _assert_same_state(a: ModelState, b: ModelState) -> None:
    assert (a.pos, a.window_index) == (b.pos, b.window_index)
    assert [type(x) for x in a.layers] == [type(y) for y in b.layers]
    for x, y in zip(a.layers, b.layers, strict=True):
        if x is None:
            continue
        assert vars(x).keys() == vars(y).keys()
        for name in vars(x):
            u, v = getattr(x, name), getattr(y, name)
            assert (u is None) == (v is None)
            if isinstance(u, torch.Tensor):
                assert u.dtype == v.dtype and torch.equal(u, v), name
            else:  # plain settings such as the KV cache's rotary base
                assert u == v, name


def test_state_dict_round_trip_through_torch_save(tmp_path):
    _, state = _state_with_everything()
    assert state.pos == 3 and state.window_index == 1
    kinds = [type(s) for s in state.layers]
    assert kinds == [KVCache, FastWeights, type(None), FastWeights]
    assert state.layers[1].conv is not None
    data = state.to_dict()
    torch.save(data, tmp_path / "state.pt")
    loaded = ModelState.from_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    _assert_same_state(loaded, state)
    # a hard-evicted state (no conv tail) too
    hard = ModelState([None, FastWeights(torch.randn(2, 2, 8, 8, dtype=torch.float64)), None, None], 0, 4)
    _assert_same_state(ModelState.from_dict(hard.to_dict()), hard)


def test_state_dict_holds_cpu_tensors_without_graphs():
    model = make_model()
    _, state = model(random_ids(1, 5), SleepConfig(window=6))
    assert any(t.requires_grad for t in state.tensors())
    data = state.to_dict()
    tensors = [v for layer in data["layers"] if layer for v in layer.values() if isinstance(v, torch.Tensor)]
    assert tensors and all(not t.requires_grad and t.device.type == "cpu" for t in tensors)


def test_state_methods_return_new_objects():
    _, state = _state_with_everything()
    cleared = state.clear_kv()
    assert state.kv_length() == (6 - 1) + 3  # sliding: the previous window's last L-1 keys, then 3 new ones
    assert cleared.kv_length() == 0 and state.kv_length() > 0
    assert [type(s) for s in cleared.layers] == [type(None), FastWeights, type(None), FastWeights]
    assert (cleared.pos, cleared.window_index) == (state.pos, state.window_index)
    assert cleared.layers[1] is state.layers[1]
    detached = state.detach()
    assert all(not t.requires_grad for t in detached.tensors())
    assert any(t.requires_grad for t in state.tensors())
    as32 = state.to(torch.float32)
    assert all(t.dtype == torch.float32 for t in as32.tensors())
    assert all(t.dtype == torch.float64 for t in state.tensors())
    assert len(state.tensors()) == 2 + 2 + 2  # k, v; S, conv; S, conv


def test_kv_length_counts_the_window_so_far():
    model = make_model()
    _, state = model(random_ids(1, 4), SleepConfig(window=6))
    assert state.kv_length() == 4
    _, state = model(random_ids(1, 8), SleepConfig(window=6, eviction="sliding"))
    assert state.kv_length() == (6 - 1) + 2  # the previous window's last L-1 keys, then 2 new ones
    assert model.init_state(3).kv_length() == 0
