"""The GSM-style task as text through a model's own tokenizer, and a fit of a transformers model on it."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="needs the hf extra (pip install -e '.[hf]')")

from lmsleep.data.gsm_inf import GSMInfTask  # noqa: E402
from lmsleep.data.gsm_inf_text import GSMInfTextTask  # noqa: E402
from lmsleep.data.task import IGNORE_INDEX  # noqa: E402
from lmsleep.train import train  # noqa: E402

from .test_lightning import QWEN3_5, config_override  # noqa: E402

SMALL = dict(ops=[1, 2], context_tokens=[90, 100], window=32)


def save_word_tokenizer(folder: Path) -> Path:
    """A word-level ``tokenizer.json`` in ``folder`` over the task's words, numbers split into digits (so
    answers take one or two tokens); returns the folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = GSMInfTask(**SMALL).vocab.tokens[1:]
    vocab = {w: i for i, w in enumerate(["[UNK]", *(w for w in words if not w.isdigit()), *"0123456789"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder


@pytest.fixture
def tokenizer_dir(tmp_path):
    return save_word_tokenizer(tmp_path)


def test_same_problems_rendered_as_text_with_a_loss_on_the_answer_only(tokenizer_dir):
    plain, text = GSMInfTask(**SMALL), GSMInfTextTask(tokenizer=tokenizer_dir, **SMALL)
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


def test_missing_tokenizer_is_one_line(tmp_path):
    with pytest.raises(ValueError, match="neither a tokenizer.json nor a folder with one"):
        GSMInfTextTask(tokenizer=tmp_path, **SMALL)


def gsm_text_fit(tokenizer: Path) -> list[str]:
    """Overrides of a two-step fit of the tiny Qwen3.5 on the text task (N = 2, windows of 32 tokens)."""
    return [
        "data=gsm_inf",
        "data.task._target_=lmsleep.data.gsm_inf_text.GSMInfTextTask",
        f"+data.task.tokenizer={tokenizer}",
        "data.task.ops=[1,2]",
        "data.task.context_tokens=[90,100]",
        "data.task.window=32",
        "data.batch_size=2",
        "data.train_size=4",
        "data.val_size=2",
        "data.test_size=2",
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
