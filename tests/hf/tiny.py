"""Tiny random configs of each supported transformers family, and transformers' own forward as the oracle."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from lmsleep.models.hf import from_hf
from lmsleep.models.hf.kernels import torch_ops_on_cpu

VOCAB = 97

CONFIGS = {
    # Gated DeltaNet / gated attention, 3:1 as the released models (here 1:1), fewer key than value heads
    "qwen3_5": dict(
        model_type="qwen3_5_text",
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"],
    ),
    # Mamba-2 / attention (no positions) / MLP blocks
    "nemotron_h": dict(
        model_type="nemotron_h",
        vocab_size=VOCAB,
        hidden_size=64,
        layers_block_type=["linear_attention", "full_attention", "mlp", "linear_attention"],
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=128,
        ssm_state_size=16,
        mamba_num_heads=4,
        mamba_head_dim=16,
        n_groups=2,
        chunk_size=8,
    ),
    # Mamba-2 / attention with partial rotary, MLP in every layer
    "bamba": dict(
        model_type="bamba",
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_layer_indices=[1, 3],
        mamba_n_heads=4,
        mamba_d_head=32,
        mamba_n_groups=1,
        mamba_d_state=16,
        mamba_chunk_size=8,
    ),
    # attention only
    "qwen3": dict(
        model_type="qwen3",
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
    ),
    "llama": dict(
        model_type="llama",
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
}
HYBRIDS = ("qwen3_5", "nemotron_h", "bamba")

# The smallest models the Lightning fits run: hidden 32, one Gated DeltaNet and one attention layer.
QWEN3_5 = dict(
    model_type="qwen3_5_text",
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=16,
    linear_num_key_heads=1,
    linear_num_value_heads=2,
    linear_key_head_dim=16,
    linear_value_head_dim=16,
    layer_types=["linear_attention", "full_attention"],
)
# The GSM-style task at the size of the text-task tests: 1-2 operations in 90-100 tokens, windows of 32.
GSM_SMALL = dict(ops=[1, 2], context_tokens=[90, 100], window=32)


def tiny(family: str, seed: int = 0, **kwargs):
    """An :class:`HFSleepLM` around a random fp32 model of ``family``, in eval mode.

    transformers' default init (std 0.02, decays up to exp(-16) per token) lets almost nothing of a linear
    layer's state outlive a window of 8 tokens, so a sleep pass would move later logits by ~1e-6 and a test
    could not tell it from round-off. Weights of std 0.1 and slow decays (``A = 0.1``) make what crosses a
    boundary visible (N = 2 moves later logits by 1e-2 to 1).
    """
    torch.manual_seed(seed)
    model = from_hf(config={"initializer_range": 0.1, **CONFIGS[family]}, **kwargs).eval()
    with torch.no_grad():
        for module in model.hf.modules():
            if isinstance(getattr(module, "A_log", None), torch.nn.Parameter):
                module.A_log.fill_(math.log(0.1))
    return model


def hf_logits(model, input_ids: torch.Tensor | None, **kwargs) -> torch.Tensor:
    """transformers' own forward (torch ops on CPU); ``input_ids=None`` with ``inputs_embeds`` in kwargs."""
    if input_ids is not None:
        kwargs["input_ids"] = input_ids
    with torch_ops_on_cpu(model._op_modules, True):
        return model.hf(**kwargs).logits


def save_word_tokenizer(folder: Path) -> Path:
    """A word-level ``tokenizer.json`` in ``folder`` over the GSM-style task's words, numbers split into digits
    (so answers take one or two tokens); returns the folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from lmsleep.data.gsm_inf import GSMInfTask

    words = GSMInfTask(**GSM_SMALL).vocab.tokens[1:]
    vocab = {w: i for i, w in enumerate(["[UNK]", *(w for w in words if not w.isdigit()), *"0123456789"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder


# data=gsm_inf_text scaled down to seconds: 1-2 operations, 90-100 context tokens, windows of 32, batch 2
GSM_TEXT_DATA = [
    "data.task.ops=[1,2]",
    "data.task.context_tokens=[90,100]",
    "data.task.window=32",
    "data.batch_size=2",
    "data.train_size=4",
    "data.val_size=2",
    "data.test_size=2",
]
