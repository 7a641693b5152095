"""Bad inputs to the transformers wrapper stop with one line that says what to do."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers", reason="needs the hf extra (pip install -e '.[hf]')")

from lmsleep.models.hf import from_hf  # noqa: E402
from lmsleep.utils.config import ConfigError  # noqa: E402

from .tiny import CONFIGS, tiny  # noqa: E402


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_unsupported_family_lists_the_supported_ones():
    with pytest.raises(ConfigError) as exc:
        from_hf(config={"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "vocab_size": 50})
    message = _one_line(exc)
    assert "'gpt2' is not supported" in message
    for family in ("qwen3_5", "nemotron_h", "bamba", "qwen3", "llama"):
        assert family in message


@pytest.mark.parametrize("loop", ["3:9", "2:1", "x:y", "1:2:3", "everything"])
def test_bad_loop_slice(loop):
    with pytest.raises(ConfigError) as exc:
        tiny("qwen3", loop=loop)
    assert "model.net.loop" in _one_line(exc)


def test_loop_counts_inserted_blocks():
    assert tiny("qwen3", loop="1:3", insert=[0]).loop_range == range(1, 3)  # 3 blocks: attn, inserted, attn
    with pytest.raises(ConfigError):
        tiny("qwen3", loop="1:3")  # 2 blocks


@pytest.mark.parametrize("insert", [[2], [0, 0], "every:0", "a,b"])
def test_bad_insert_positions(insert):
    with pytest.raises(ConfigError) as exc:
        tiny("qwen3", insert=insert)
    assert "model.net.insert" in _one_line(exc)


def test_path_must_be_a_local_model_folder(tmp_path):
    with pytest.raises(ConfigError) as exc:
        from_hf(path=tmp_path / "missing")
    assert "downloads nothing" in _one_line(exc)
    with pytest.raises(ConfigError) as exc:
        from_hf(path=tmp_path, config=CONFIGS["qwen3"])
    assert "exactly one" in _one_line(exc)


def test_unsupported_attention_implementation():
    with pytest.raises(ConfigError) as exc:
        from_hf(config=CONFIGS["qwen3"], attn_implementation="flex_attention")
    assert "attn_implementation" in _one_line(exc)


def test_folder_round_trip_and_trust_remote_code_is_off_by_default(tmp_path, monkeypatch):
    """A folder written by save_pretrained loads back to the same logits; transformers is never asked for
    remote code unless the caller sets trust_remote_code."""
    import torch
    import transformers

    model = tiny("qwen3_5")
    model.hf.save_pretrained(tmp_path)
    seen = []
    original = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    reloaded = from_hf(path=tmp_path).eval()
    x = torch.randint(0, 97, (1, 12))
    with torch.no_grad():
        assert torch.equal(model(x)[0], reloaded(x)[0])
    assert seen == [None]
