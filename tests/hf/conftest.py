"""Fixtures of the transformers tests: a word-level tokenizer of the GSM-style task's words, and a tiny
random Qwen3.5 saved with ``save_pretrained`` beside it (a model folder as a hub download would be)."""

from __future__ import annotations

import pytest

# tests/hf/tiny.py imports transformers, which the suite may lack: the fixtures import it when they run.


@pytest.fixture
def tokenizer_dir(tmp_path):
    """A word-level tokenizer whose numbers split into digits (so answers take one or two tokens)."""
    from .tiny import save_word_tokenizer

    return save_word_tokenizer(tmp_path)


@pytest.fixture
def model_dir(tokenizer_dir):
    """``tokenizer_dir`` with a tiny random Qwen3.5 (hidden 32, 2 layers) saved in it; two ids more than the
    tokenizer's, for the <eod> and <pad> that data=text adds."""
    from tokenizers import Tokenizer
    from transformers import AutoConfig, AutoModelForCausalLM

    from .tiny import QWEN3_5

    fields = dict(QWEN3_5)
    size = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size() + 2
    config = AutoConfig.for_model(fields.pop("model_type"), **fields, vocab_size=size)
    AutoModelForCausalLM.from_config(config).save_pretrained(tokenizer_dir)
    return tokenizer_dir
