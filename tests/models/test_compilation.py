"""``model.compile`` at the model level (``lmsleep.models.compilation``): which modules a setting compiles,
that compiling leaves the parameters and their names alone, and that a compiled model computes what the eager
one does (logits and every parameter's gradient, fp32, through sleep windows of two lengths)."""

from __future__ import annotations

import copy

import pytest
import torch

from lmsleep.models import SleepConfig
from lmsleep.models.compilation import (
    DEFAULT_TARGETS,
    TARGETS,
    compile_modules,
    compile_seconds,
    compiled_names,
    graphs_compiled,
    modules_to_compile,
    parse_targets,
)
from tests.support.models import make_model, param_grads, random_ids, weighted_sum


@pytest.mark.parametrize(
    ("value", "targets"),
    [
        (False, ()),
        (None, ()),
        (True, DEFAULT_TARGETS),
        ("attn", ("attn",)),
        (["attn", "mlp", "attn"], ("attn", "mlp")),
        (("ssm",), ("ssm",)),
    ],
)
def test_settings_name_their_targets(value, targets):
    assert parse_targets(value) == targets


@pytest.mark.parametrize("value", ["fast", ["mlp", "everything"], [], 3, "true", {"mlp": 1}])
def test_a_bad_setting_is_one_line_listing_the_choices(value):
    with pytest.raises(ValueError, match=r"^model\.compile=.* is not a choice: use false") as err:
        parse_targets(value)
    message = str(err.value)
    assert "\n" not in message and all(t in message for t in TARGETS)


def test_a_target_the_model_lacks_is_an_error():
    with pytest.raises(ValueError, match=r"target 'ssm' finds no module .*\(layout: attn,attn\)"):
        modules_to_compile(make_model(layout="attn,attn"), ("ssm",))


def test_compile_compiles_the_named_modules_in_place_and_once():
    model = make_model(layout="attn,ssm,attn,ssm")
    keys = list(model.state_dict())
    assert compile_modules(model, ("mlp",)) == [f"blocks.{i}.mlp" for i in range(4)]
    assert compiled_names(model) == [f"blocks.{i}.mlp" for i in range(4)]
    impl = model.blocks[0].mlp._compiled_call_impl
    assert compile_modules(model, ("mlp", "attn")) == [
        *(f"blocks.{i}.mlp" for i in range(4)),
        "blocks.0.mixer",
        "blocks.2.mixer",
    ]
    assert model.blocks[0].mlp._compiled_call_impl is impl  # not compiled twice
    assert sorted(compiled_names(model)) == sorted(
        [*(f"blocks.{i}.mlp" for i in range(4)), "blocks.0.mixer", "blocks.2.mixer"]
    )
    assert list(model.state_dict()) == keys  # in place: no _orig_mod. prefixes, same parameters


def _logits_and_grads(model, ids, sleep):
    logits, _ = model(ids, sleep)
    return logits.detach(), param_grads(model, weighted_sum(logits))


@pytest.mark.parametrize(
    "targets",
    # the fast-weight mixer takes a minute or more to compile cold (model.compile=true compiles it)
    [("mlp",), ("attn",), pytest.param(("ssm",), marks=pytest.mark.slow)],
    ids=lambda t: ",".join(t),
)
def test_a_compiled_model_computes_what_the_eager_one_does(targets):
    """N = 2 over windows of 8, 8 and 5 tokens (the last one shorter: a second input shape), fp32."""
    eager = make_model(dtype=torch.float32)
    compiled = copy.deepcopy(eager)
    compile_modules(compiled, targets)
    ids, sleep = random_ids(2, 21), SleepConfig(passes=2, window=8)
    seconds, graphs = compile_seconds(), graphs_compiled()
    got_logits, got_grads = _logits_and_grads(compiled, ids, sleep)
    assert compile_seconds() > seconds and graphs_compiled() > graphs  # it did compile, and torch counted it
    want_logits, want_grads = _logits_and_grads(eager, ids, sleep)
    # 1e-5 relative to each tensor's largest entry: a compiled kernel sums in another order (fused norms and
    # reductions), and these fp32 gradients run to tens after the windows and passes
    for name, want in {"logits": want_logits, **want_grads}.items():
        got = got_logits if name == "logits" else got_grads[name]
        scale = max(1.0, float(want.abs().max()))
        torch.testing.assert_close(got, want, atol=1e-5 * scale, rtol=0, msg=lambda m, n=name: f"{n}: {m}")
    assert got_grads.keys() == want_grads.keys()
