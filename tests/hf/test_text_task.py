"""Data through a pretrained model's own tokenizer: the GSM-style task as text (lengths in the tokenizer's
tokens), a fit of a transformers model on it, and jsonl prompt/answer data (``data=text``) read with the
tokenizer of the model folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="needs the hf extra (pip install -e '.[hf]')")

from lmsleep.data.gsm_inf import GSMInfTask, quantity_words  # noqa: E402
from lmsleep.data.gsm_inf_text import GSMInfTextTask  # noqa: E402
from lmsleep.data.task import IGNORE_INDEX  # noqa: E402
from lmsleep.train import train  # noqa: E402
from lmsleep.utils.config import ConfigError  # noqa: E402

from .test_lightning import config_override  # noqa: E402
from .tiny import GSM_SMALL as SMALL  # noqa: E402
from .tiny import GSM_TEXT_DATA, QWEN3_5  # noqa: E402


@pytest.fixture
def char_tokenizer(tmp_path):
    """One token per character (a BPE without merges), so lengths in tokens and in words differ ~5x."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    chars = sorted(set("".join(GSMInfTask().vocab.tokens[1:])))
    tok = Tokenizer(
        models.BPE(vocab={c: i for i, c in enumerate(["[UNK]", *chars])}, merges=[], unk_token="[UNK]")
    )
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    (tmp_path / "chars").mkdir()
    tok.save(str(tmp_path / "chars" / "tokenizer.json"))
    return tmp_path / "chars" / "tokenizer.json"


def test_same_problems_rendered_as_text_with_a_loss_on_the_answer_only(tokenizer_dir):
    plain, text = GSMInfTask(**SMALL), GSMInfTextTask(tokenizer=tokenizer_dir, lengths="words", **SMALL)
    assert text.vocab_size == text.tokenizer.get_vocab_size()
    two_digit = 0
    for i in range(20):
        a, b = plain.sample("train", i), text.sample("train", i)
        assert {k: a[k] for k in ("question", "context", "answer", "program", "depth")} == {
            k: b[k] for k in ("question", "context", "answer", "program", "depth")
        }
        answer = text.tokenizer.encode(" " + str(b["answer"]), add_special_tokens=False).ids
        labelled = [i for i, t in enumerate(b["labels"]) if t != IGNORE_INDEX]
        n = len(b["input_ids"])
        assert labelled == list(range(n - len(answer), n))  # the answer's tokens, nothing else
        assert [b["labels"][i] for i in labelled] == answer
        assert b["input_ids"][n - len(answer) + 1 :] == answer[:-1]  # each digit fed back before the next
        assert text.decode(b["input_ids"]).startswith(" ".join(b["question"].split()))  # question first
        two_digit += len(answer) == 2
    assert two_digit  # some answers take two tokens


def test_context_lengths_count_the_tokenizers_tokens(char_tokenizer):
    """``lengths=tokens``: the context holds at most ``context_tokens`` of the tokenizer's tokens (its
    encoding, not only the count the generator kept) and falls short by less than one statement; counted in
    words, the same bounds give contexts ~5x longer in tokens."""
    lo, hi = 500, 600
    text = GSMInfTextTask(tokenizer=char_tokenizer, ops=[1, 2], context_tokens=[lo, hi], window=64)
    words = GSMInfTextTask(tokenizer=char_tokenizer, lengths="words", ops=[1, 2], context_tokens=[lo, hi])
    quantity = max(text.length(quantity_words(q)) for pool in text.pools.values() for q in pool)
    longest = 3 * quantity + text.length(["equals", "minus", "."])  # a statement on two quantities
    for i in range(12):
        sample = text.sample("train", i)
        tokens = len(text._ids(" " + sample["context"]))
        assert tokens == text.length(sample["context"].split())
        assert lo - longest < tokens <= hi, (i, tokens)
        assert len(sample["input_ids"]) <= text.max_length
        assert text.length(words.sample("train", i)["context"].split()) > 3 * hi


def test_missing_tokenizer_is_one_line(tmp_path, tokenizer_dir):
    with pytest.raises(ValueError, match="neither a tokenizer.json nor a folder with one"):
        GSMInfTextTask(tokenizer=tmp_path / "empty", **SMALL)
    with pytest.raises(ConfigError, match="pass model.net.path=DIR or data.task.tokenizer="):
        GSMInfTextTask(tokenizer=None, **SMALL)
    with pytest.raises(ConfigError, match=r"the lower bound must be >= \d+ \(or count words"):
        GSMInfTextTask(tokenizer=tokenizer_dir, **{**SMALL, "context_tokens": [88, 100]})
    with pytest.raises(ConfigError, match="lengths='chars' is not one of"):
        GSMInfTextTask(tokenizer=tokenizer_dir, lengths="chars", **SMALL)


def gsm_text_fit(tokenizer: Path) -> list[str]:
    """Overrides of a two-step fit of the tiny Qwen3.5 on the text task (N = 2, windows of 32 tokens)."""
    return [
        "data=gsm_inf_text",
        f"data.task.tokenizer={tokenizer}",
        *GSM_TEXT_DATA,
        "model=hf",
        config_override(QWEN3_5),
        "callbacks=none",
        "model.sleep.passes=2",
        "trainer.max_steps=2",
        "trainer.num_sanity_val_steps=0",
        "++trainer.enable_progress_bar=false",
        "++trainer.enable_model_summary=false",
    ]


def test_fit_a_transformers_model_on_the_text_task(compose_fit, one_thread, tokenizer_dir):
    metrics, objects = train(compose_fit(*gsm_text_fit(tokenizer_dir)))
    assert objects["model"].net.hf.config.vocab_size == objects["datamodule"].task.vocab_size
    assert any(k.startswith("test/acc@ops=") for k in metrics)


def test_fit_on_jsonl_prompts_with_the_model_folders_tokenizer(compose_fit, one_thread, model_dir, tmp_path):
    """``data=text data.tokenizer=${model.net.path}``: a model folder is a tokenizer too; only the answers
    carry loss."""
    records = [
        {"prompt": f"what is the number of adult lions in {place} Zoo ?", "answer": f" {i % 23}"}
        for i, place in enumerate(["Riverside", "Hillcrest", "Oakwood", "Maple", "Cedar"] * 8)
    ]
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps({**r, "id": i}) for i, r in enumerate(records)))
    overrides = [
        "data=text",
        f"data.paths=[{tmp_path / 'qa.jsonl'}]",
        "data.format=jsonl",
        "data.tokenizer=${model.net.path}",
        "data.seq_len=32",
        "data.window=16",
        "data.val_fraction=0.2",
        "data.test_fraction=0.2",
        "data.batch_size=2",
        "data.train_size=4",
        "model=hf",
        f"model.net.path={model_dir}",
        "callbacks=none",
        "trainer.max_steps=2",
        "trainer.num_sanity_val_steps=0",
        "++trainer.enable_progress_bar=false",
        "++trainer.enable_model_summary=false",
    ]
    metrics, objects = train(compose_fit(*overrides))
    tokenizer = objects["datamodule"].tokenizer
    assert tokenizer.describe().startswith(f"data.tokenizer={model_dir}")
    assert tokenizer.encode("adult lions")[0].tolist() == [
        tokenizer.tokenizer.token_to_id("adult"),
        tokenizer.tokenizer.token_to_id("lions"),
    ]
    assert objects["model"].net.hf.config.vocab_size == tokenizer.vocab_size
    assert "test/loss" in metrics
