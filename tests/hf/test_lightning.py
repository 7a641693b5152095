"""``model=hf`` through lmsleep's LightningModule: a transformers model trained and tested with sleep."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers", reason="needs the hf extra (pip install -e '.[hf]')")

import torch  # noqa: E402

from lmsleep.lit.optim import split_parameters  # noqa: E402
from lmsleep.models.hf import HFSleepLM  # noqa: E402
from lmsleep.train import train  # noqa: E402

QWEN3_5 = (
    "{model_type:qwen3_5_text,hidden_size:32,intermediate_size:64,num_hidden_layers:2,"
    "num_attention_heads:2,num_key_value_heads:1,head_dim:16,linear_num_key_heads:1,"
    "linear_num_value_heads:2,linear_key_head_dim:16,linear_value_head_dim:16,"
    "layer_types:[linear_attention,full_attention]}"
)
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
    f"model.net.config={QWEN3_5}",
    "model.sleep.passes=2",
    "model.optim.warmup_steps=0",
    "trainer.max_steps=2",
    "trainer.num_sanity_val_steps=0",
    "++trainer.enable_progress_bar=false",
    "++trainer.enable_model_summary=false",
]


def test_fit_and_test_a_transformers_model_with_sleep(compose_fit, one_thread):
    cfg = compose_fit(*TINY)
    metrics, objects = train(cfg)
    net = objects["model"].net
    assert isinstance(net, HFSleepLM) and net.hf.config.vocab_size == objects["datamodule"].vocab_size
    assert torch.isfinite(torch.tensor(metrics["test/loss"]))
    muon, adamw = split_parameters(net)
    embedding = net.hf.get_input_embeddings().weight
    assert any(p is embedding for p in adamw) and not any(p is embedding for p in muon)
    assert any(p is net.hf.model.layers[0].linear_attn.in_proj_qkv.weight for p in muon)
