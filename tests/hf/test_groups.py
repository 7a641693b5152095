"""Parameter groups of a wrapped transformers model: SleepSchedule's stages (``train: [ssm]``) resolve on
HFSleepLM as on HybridLM, the model saying which parameters each group holds."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("transformers", reason="needs the hf extra (pip install -e '.[hf]')")

from lmsleep.callbacks.sleep_schedule import SleepSchedule  # noqa: E402
from lmsleep.models.groups import GROUPS  # noqa: E402
from lmsleep.models.hf import from_hf  # noqa: E402
from lmsleep.utils.config import ConfigError  # noqa: E402

from .tiny import CONFIGS, QWEN3_5, tiny  # noqa: E402

QWEN3 = {**CONFIGS["qwen3"], "hidden_size": 32, "head_dim": 8, "intermediate_size": 64}


def _trainable_after(model, stage: dict) -> set[str]:
    SleepSchedule._set_trainable(SimpleNamespace(net=model), stage)
    return {name for name, p in model.named_parameters() if p.requires_grad}


def _names(model, *parts: str) -> set[str]:
    return {name for name, _ in model.named_parameters() if any(part in name for part in parts)}


def test_groups_of_a_qwen3_5_hybrid():
    model = from_hf(config={**QWEN3_5, "vocab_size": 50})
    assert _trainable_after(model, {"train": ["ssm"]}) == _names(model, ".linear_attn.")
    assert _trainable_after(model, {"train": ["attn"]}) == _names(model, ".self_attn.")  # q/k norms too
    assert _trainable_after(model, {"train": ["mlp"]}) == _names(model, ".mlp.")
    assert _trainable_after(model, {"train": ["norm"]}) == _names(model, "layernorm.", "model.norm.")
    assert _trainable_after(model, {"train": ["embed", "head"]}) == _names(model, "embed_tokens.", "lm_head.")
    everything = {name for name, _ in model.named_parameters()}
    assert _trainable_after(model, {"train": ["all"], "freeze": ["ssm"]}) == everything - _names(
        model, ".linear_attn."
    )


def test_ssm_of_an_attention_model_is_its_inserted_blocks():
    model = from_hf(config={**QWEN3, "vocab_size": 50}, insert=[0, 1])
    inserted = _names(model, "inserted.")
    assert len(inserted) > 2 and _trainable_after(model, {"train": ["ssm"]}) == inserted
    assert _trainable_after(model, {"train": ["norm"]}) == _names(
        model, "layernorm.", "model.norm.", "inserted.0.norm.", "inserted.1.norm."
    )
    without = from_hf(config={**QWEN3, "vocab_size": 50})  # nothing to train in the ssm group
    with pytest.raises(ValueError, match="leaves no trainable parameter"):
        _trainable_after(without, {"train": ["ssm"]})


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_every_parameter_of_every_family_is_in_exactly_one_group(family):
    model = tiny(family, insert=[0] if family == "qwen3" else None)
    groups = model.parameter_groups()
    assert set(groups) == {name for name, _ in model.named_parameters()}
    for name, own in groups.items():
        assert own <= set(GROUPS) and "all" in own
        if "inserted." in name and name.endswith("norm.weight") and ".mixer." not in name:
            assert own == {"all", "ssm", "norm"}, name  # the inserted block's own pre-norm
        else:
            assert len(own) == 2, (name, own)
    kinds = {b.index: b.kind for b in model.blocks if b.kind != "inserted"}
    for name, own in groups.items():
        if family == "nemotron_h" and ".mixer." in name:  # one mixer per layer: its kind decides
            layer = int(name.split(".layers.")[1].split(".")[0])
            assert own - {"all"} == {{"attn": "attn", "linear": "ssm", "stateless": "mlp"}[kinds[layer]]}
    used = set().union(*groups.values())
    assert {"embed", "head", "norm", "attn", "mlp"} <= used
    assert ("ssm" in used) == (family in ("qwen3_5", "nemotron_h", "bamba", "qwen3"))


def test_an_unknown_group_stops_with_one_line():
    model = from_hf(config={**QWEN3_5, "vocab_size": 50})
    with pytest.raises(ConfigError, match=r"'sssm' is not a parameter group \(embed, head") as exc:
        _trainable_after(model, {"train": ["ssm"], "freeze": ["sssm"]})
    assert "\n" not in str(exc.value)
    schedule = SleepSchedule(mode="stages", stages=[{"at": 0, "train": ["ssm"]}, {"at": 5, "train": ["atn"]}])
    with pytest.raises(ConfigError, match="stage 1: 'atn' is not a parameter group"):
        schedule.setup(None, SimpleNamespace(net=model), "fit")
    # a pattern that matches parameter names is not a group and is accepted
    assert _trainable_after(model, {"train": ["hf.model.layers.0.*"]}) == _names(model, "layers.0.")
