"""``model=hf`` through lmsleep's LightningModule: a transformers model trained and tested with sleep."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers", reason="needs the hf extra (pip install -e '.[hf]')")

import torch  # noqa: E402

from lmsleep.lit.optim import split_parameters  # noqa: E402
from lmsleep.models.hf import HFSleepLM  # noqa: E402
from lmsleep.train import train  # noqa: E402
from lmsleep.utils.config import ConfigError  # noqa: E402

from .tiny import QWEN3_5  # noqa: E402

TINY = [
    "data=rule110",
    "data.task.width=4",
    "data.task.num_states=2",
    "data.batch_size=4",
    "data.train_size=16",
    "data.val_size=4",
    "data.test_size=4",
    "data.num_workers=0",
    "model=hf",
    "callbacks=none",
    "model.sleep.passes=2",
    "model.optim.warmup_steps=0",
    "trainer.max_steps=2",
    "trainer.num_sanity_val_steps=0",
    "++trainer.enable_progress_bar=false",
    "++trainer.enable_model_summary=false",
]


def config_override(config: dict) -> str:
    """``model.net.config={k:v,...}`` in Hydra's override syntax."""
    items = [f"{k}:[{','.join(v)}]" if isinstance(v, list) else f"{k}:{v}" for k, v in config.items()]
    return "model.net.config={" + ",".join(items) + "}"


def test_fit_and_test_a_transformers_model_with_sleep(compose_fit, one_thread):
    metrics, objects = train(compose_fit(*TINY, config_override(QWEN3_5)))
    net = objects["model"].net
    assert isinstance(net, HFSleepLM) and net.hf.config.vocab_size == objects["datamodule"].vocab_size
    assert torch.isfinite(torch.tensor(metrics["test/loss"]))
    muon, adamw = split_parameters(net)
    embedding = net.hf.get_input_embeddings().weight
    assert any(p is embedding for p in adamw) and not any(p is embedding for p in muon)
    assert any(p is net.hf.model.layers[0].linear_attn.in_proj_qkv.weight for p in muon)


def test_fit_from_a_model_folder_and_a_too_small_vocabulary(compose_fit, one_thread, tmp_path):
    """``model.net.path``: a save_pretrained folder trains through ``lmsleep fit``; a model with fewer token
    ids than the data stops with one line before training."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(QWEN3_5)
    model_type = fields.pop("model_type")
    for name, vocab in (("model", 64), ("small", 3)):
        config = AutoConfig.for_model(model_type, **fields, vocab_size=vocab)
        AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / name)
    metrics, objects = train(compose_fit(*TINY, f"model.net.path={tmp_path / 'model'}"))
    assert objects["model"].net.hf.config.vocab_size == 64 and "test/loss" in metrics
    with pytest.raises(ConfigError, match="token ids but the model only 3"):
        train(compose_fit(*TINY, f"model.net.path={tmp_path / 'small'}"))


def test_a_model_folder_loads_in_train_mode(tmp_path):
    """transformers' from_pretrained returns an eval-mode model; from_hf gives it back in train mode, as any
    freshly built module, so Lightning does not train with dropout off."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from lmsleep.models.hf import from_hf

    fields = dict(QWEN3_5)
    config = AutoConfig.for_model(fields.pop("model_type"), **fields, vocab_size=16)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    assert all(m.training for m in from_hf(path=tmp_path).modules())


def test_a_model_from_a_config_gets_decays_that_remember():
    """``decay_init=mamba2`` (the default for a config): log decays per token in [-1.6, -0.001], so what a
    window wrote reaches the next and a sleep pass moves later windows' logits; transformers' own init
    (dt_bias = 1) is kept with ``decay_init=transformers``."""
    import torch.nn.functional as F

    from lmsleep.models import SleepConfig
    from lmsleep.models.hf import from_hf

    ids = torch.randint(0, 32, (1, 48), generator=torch.Generator().manual_seed(0))
    hard = dict(window=16, eviction="hard")
    for decay_init, remembers in (("mamba2", True), ("transformers", False)):  # remembers: the init's ranges
        torch.manual_seed(0)
        model = from_hf(config=QWEN3_5, vocab_size=32, decay_init=decay_init).eval()
        layer = next(m for m in model.modules() if hasattr(m, "dt_bias"))
        log_decay = -layer.A_log.exp() * F.softplus(layer.dt_bias)
        if remembers:
            assert log_decay.min() >= -1.6 and log_decay.max() <= -1e-3
        else:
            assert torch.equal(layer.dt_bias, torch.ones_like(layer.dt_bias))
        if remembers:
            with torch.no_grad():
                one = model(ids, SleepConfig(passes=1, **hard))[0]
                two = model(ids, SleepConfig(passes=2, **hard))[0]
            assert torch.equal(one[:, :16], two[:, :16])  # the first window is the wake pass alone
            assert (one[:, 16:] - two[:, 16:]).abs().max() > 1e-3 * one.abs().max()
    with pytest.raises(ConfigError, match="decay_init='fla' is not one of"):
        from_hf(config=QWEN3_5, decay_init="fla")
