"""The update rule is chosen through one table (lmsleep.ops.update_rule.UPDATE_RULES): an unknown name gets
one error that lists the rules, and a rule added to the table alone is used by the layer, the model, the FLOP
count and the kernel-backend check, with no branch on its name anywhere else."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from omegaconf import OmegaConf

from lmsleep.layers.fast_weight_mixer import FastWeightMixer
from lmsleep.models import SleepConfig, run_windows
from lmsleep.models.flops import forward_flops
from lmsleep.ops.update_rule import UPDATE_RULES, update_rule
from lmsleep.utils.config import ConfigError, check_kernel_backend
from tests.support.models import make_model, random_ids


def test_an_unknown_rule_names_the_rules_there_are():
    with pytest.raises(ValueError, match=r"'delta2' is not one of \('gated_delta', 'mamba2'\).*ssm.rule"):
        update_rule("delta2")
    with pytest.raises(ValueError, match="model.net.ssm.rule"):
        FastWeightMixer(8, rule="delta2")


def test_the_defaults_are_the_gated_delta_rule():
    """The layer's default rule is the one every experiment and model=hybrid use."""
    assert FastWeightMixer(8).rule == "gated_delta"


@pytest.fixture
def toy_rule(monkeypatch):
    """A rule registered only in the table: the gated delta rule's op under another name, recording calls."""
    calls = []
    base = UPDATE_RULES["gated_delta"]

    def run(*args, **kwargs):
        calls.append(kwargs["backend"])
        return base.run(*args, **kwargs)

    monkeypatch.setitem(UPDATE_RULES, "toy", dataclasses.replace(base, name="toy", run=run, token_products=7))
    return calls


def test_a_rule_added_to_the_table_runs_everywhere(toy_rule):
    toy, reference = make_model("toy"), make_model("gated_delta")
    ids = random_ids(2, 21)
    cfg = SleepConfig(passes=2, window=8, eviction="hard")
    with torch.no_grad():
        got, want = run_windows(toy, ids, cfg)[0], run_windows(reference, ids, cfg)[0]
    assert toy_rule, "the table's run function was not called"
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # The FLOP count reads the rule's cost from the table: 7 products a token on the token loop.
    mixer = next(m for m in toy.modules() if isinstance(m, FastWeightMixer))
    assert mixer.update_rule.flops(5, 4, 4, 64, recurrent=True) == 5 * 7 * 2 * 4 * 4
    # In the model, only the last window (5 < recurrent_below = 8 tokens, its wake pass only) takes the token
    # loop: 2 fast-weight layers x 2 heads x 5 tokens, each 7 - 3 more K x V products (K = V = 8).
    got_flops, want_flops = forward_flops(toy, cfg, 21).forward, forward_flops(reference, cfg, 21).forward
    extra = {name: got_flops[name] - want_flops[name] for name in got_flops}
    assert extra == {**dict.fromkeys(want_flops, 0.0), "fast_weight_op": 2 * 2 * 5 * (7 - 3) * 2 * 8 * 8}
    # The backend check finds the rule's kernel (the gated delta rule's: fla) in the table.
    cfg_run = OmegaConf.create(
        {"model": {"net": {"layout": "attn,ssm", "ssm": {"rule": "toy", "backend": "mamba_ssm"}}}}
    )
    with pytest.raises(ConfigError, match=r"not a kernel of rule 'toy' \(its kernel: 'fla'\)"):
        check_kernel_backend(cfg_run)
