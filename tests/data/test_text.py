"""data=text on a temporary folder of small files: the split by document, packing and cutting, byte and
``tokenizers`` tokenisation, JSON-lines prompt/answer masking, the training order, and the errors."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lmsleep.data import IGNORE_INDEX, TextDataModule
from lmsleep.data.corpus import excluded, find_files
from lmsleep.data.tokenizer import EOD, ByteTokenizer, load_tokenizer, tokenizer_from_dict

# Large enough shares that a few dozen documents give every split some.
SHARES = {"val_fraction": 0.2, "test_fraction": 0.2}


def write_corpus(root: Path, n: int = 30) -> dict[str, str]:
    """``n`` documents of distinct text (one is non-ASCII) in nested folders, plus files the default
    excludes skip (hidden, ``__pycache__``). Returns ``{relative path: text}`` of the documents."""
    texts = {}
    for i in range(n):
        rel = f"{'sub/' if i % 2 else ''}{'deep/' if i % 3 == 0 else ''}doc{i:02d}.txt"
        text = f"document {i}: " + " ".join(f"w{(i * 7 + k) % 13}" for k in range(10 + 3 * i)) + "\n"
        if i == 5:
            text = "héllo wörld, 日本語 text — document 5\n" * 3
        texts[rel] = text
    for rel, text in texts.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    (root / ".hidden.txt").write_text("hidden\n")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "x.txt").write_text("cached\n")
    return texts


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "corpus"
    root.mkdir()
    return root, write_corpus(root)


def split_texts(dm: TextDataModule) -> dict[str, list[str]]:
    """Each split's documents, recovered from its token stream (documents end with <eod>)."""
    out = {}
    for split, stream in dm.streams.items():
        text = dm.tokenizer.decode(stream.ids)
        out[split] = [d for d in text.split(EOD) if d]
    return out


def test_split_is_by_document_deterministic_and_logged(corpus, caplog):
    root, texts = corpus
    with caplog.at_level("INFO", logger="lmsleep"):
        dm = TextDataModule(paths=[str(root)], seq_len=32, **SHARES)
    found = split_texts(dm)
    # every document is in exactly one split, whole
    assert sorted(t for docs in found.values() for t in docs) == sorted(texts.values())
    assert all(found[s] for s in ("train", "val", "test"))
    assert not set(found["train"]) & set(found["val"])
    assert not set(found["train"]) & set(found["test"]) and not set(found["val"]) & set(found["test"])
    # the same split from files found in another order, and no split moves when the sizes change
    again = TextDataModule(
        paths=[str(p) for p in sorted(root.rglob("doc*.txt"), reverse=True)], seq_len=32, **SHARES
    )
    assert split_texts(again) == found
    assert split_texts(TextDataModule(paths=[str(root)], seq_len=8, val_size=2, **SHARES)) == found
    log = caplog.text
    assert f"{len(texts)} documents from {len(texts)} files" in log
    for split in ("train", "val", "test"):
        s = dm.streams[split]
        assert (
            f"{split:<5} {s.documents:>7,} documents {len(s.ids):>12,} tokens {len(s):>8,} sequences" in log
        )


def test_identical_documents_share_a_split(tmp_path):
    for i in range(12):
        (tmp_path / f"copy{i}.txt").write_text("the same text\n")
        (tmp_path / f"other{i}.txt").write_text(f"text number {i} " * 4)
    dm = TextDataModule(paths=[str(tmp_path)], seq_len=4, **SHARES)
    holding = [s for s, docs in split_texts(dm).items() if "the same text\n" in docs]
    assert len(holding) == 1 and split_texts(dm)[holding[0]].count("the same text\n") == 12


def test_packing_predicts_every_token_once_with_eod_between_documents(corpus):
    root, _ = corpus
    T = 16
    dm = TextDataModule(paths=[str(root)], seq_len=T, **SHARES)
    stream = dm.streams["train"]
    assert len(stream) == (len(stream.ids) - 1) // T
    samples = [stream.sample(i) for i in range(len(stream))]
    inputs = torch.cat([s["input_ids"] for s in samples])
    labels = torch.cat([s["labels"] for s in samples])
    assert torch.equal(inputs, stream.ids[: len(inputs)].long())
    assert torch.equal(labels, stream.ids[1 : len(inputs) + 1].long())  # plain text: every label counts
    assert (
        (inputs == dm.tokenizer.eod_id).sum() == (stream.ids[: len(inputs)] == dm.tokenizer.eod_id).sum() > 0
    )
    assert all(s["input_ids"].shape == (T,) and "token_bytes" not in s for s in samples)  # bytes: one each
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"].dtype == batch["labels"].dtype == torch.long
    assert batch["input_ids"].shape == batch["labels"].shape == (dm.batch_size, T)


def test_cutting_keeps_documents_apart_and_pads_their_last_piece(corpus):
    root, texts = corpus
    T = 16
    dm = TextDataModule(paths=[str(root)], seq_len=T, pack=False, **SHARES)
    tok = dm.tokenizer
    for split, stream in dm.streams.items():
        docs, current = [], []
        for i in range(len(stream)):
            s = stream.sample(i)
            n = int((s["labels"] != IGNORE_INDEX).sum())
            assert (s["labels"][n:] == IGNORE_INDEX).all() and (s["input_ids"][n:] == tok.pad_id).all()
            current += s["input_ids"][:n].tolist() + [int(s["labels"][n - 1])]
            if current[-1] == tok.eod_id:  # the piece that ends a document, which began after an <eod>
                assert current[0] == tok.eod_id
                docs.append(tok.decode(current[1:-1]))
                current = []
            else:
                current.pop()  # the next piece starts with this token
        assert not current
        assert docs == split_texts(dm)[split]
    # each document's bytes and its <eod> are predicted once: ceil((bytes + 1) / T) pieces
    total = sum(len(s) for s in dm.streams.values())
    assert total == sum(-(-(len(t.encode()) + 1) // T) for t in texts.values())


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    text = "héllo 日本 — \x00 end"
    ids, nbytes = tok.encode(text)
    assert nbytes is None and ids.tolist() == list(text.encode())
    assert tok.decode(ids) == text
    assert tok.decode([*ids.tolist(), tok.eod_id, tok.pad_id, *b"x"]) == text + EOD + "x"
    assert (tok.vocab_size, tok.pad_id, tok.eod_id) == (258, 256, 257)
    assert tokenizer_from_dict(tok.to_dict()).to_dict() == tok.to_dict()


def train_tokenizer(path: Path, texts: list[str], vocab_size: int = 300) -> Path:
    """A byte-level BPE tokenizer trained on ``texts`` and saved to ``path``."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.save(str(path))
    return path


def test_tokenizers_file_tokenises_and_counts_bytes(corpus, tmp_path):
    root, texts = corpus
    path = train_tokenizer(tmp_path / "tokenizer.json", list(texts.values()))
    tok = load_tokenizer(str(path))
    text = texts["sub/doc05.txt"]
    ids, nbytes = tok.encode(text)
    assert len(ids) < len(text.encode())  # merges: fewer tokens than bytes
    assert tok.decode(ids) == text
    assert int(nbytes.sum()) == len(text.encode()) and (nbytes >= 0).all()
    # <eod> and <pad> come after the tokenizer's ids; or its own end-of-text token is the separator
    assert tok.eod_id == tok.vocab_size - 2 and tok.pad_id == tok.vocab_size - 1
    own = load_tokenizer(str(path), eod_token="<|endoftext|>")
    assert own.eod_id == 0 and own.vocab_size == tok.vocab_size - 1
    with pytest.raises(ValueError, match=r"data.eod_token='<nope>' is not a token of"):
        load_tokenizer(str(path), eod_token="<nope>")
    assert load_tokenizer(str(tmp_path)).to_dict() == tok.to_dict()  # a (model) folder holding it
    # the module carries each label's bytes: they sum to the bytes of the documents (and one per <eod>)
    dm = TextDataModule(paths=[str(root)], tokenizer=str(path), seq_len=8, pack=False, **SHARES)
    assert dm.vocab_size == tok.vocab_size
    for split, stream in dm.streams.items():
        counted = sum(int(stream.sample(i)["token_bytes"].sum()) for i in range(len(stream)))
        assert counted == sum(len(t.encode()) + 1 for t in split_texts(dm)[split])
    assert tokenizer_from_dict(dm.state_dict()["tokenizer"]).to_dict() == dm.tokenizer.to_dict()


def test_jsonl_prompt_answer_masks_the_prompt(tmp_path):
    records = [{"prompt": f"Q{i}: what is {i}+{i}? A: ", "answer": f"{2 * i}"} for i in range(20)]
    records += [{"text": f"plain text {i}"} for i in range(10)]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    dm = TextDataModule(
        paths=[str(tmp_path / "data.jsonl")], format="jsonl", seq_len=64, pack=False, **SHARES
    )
    tok, seen = dm.tokenizer, 0
    for stream in dm.streams.values():
        for i in range(len(stream)):
            s = stream.sample(i)
            text = tok.decode(s["input_ids"][s["input_ids"] != tok.pad_id])
            scored = tok.decode(s["labels"][s["labels"] != IGNORE_INDEX])
            assert text.startswith(EOD)  # each record is one document, after an <eod>
            body = text[len(EOD) :]
            if body.startswith("Q"):  # loss on the answer and its <eod> only
                question = int(body[1:].split(":")[0])
                assert scored == str(2 * question) + EOD and body == records[question]["prompt"] + str(
                    2 * question
                )
            else:
                assert scored == body + EOD
            seen += 1
    assert seen == len(records)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"paths": []}, r"data.paths is empty"),
        ({"paths": ["{root}/nope"]}, r"data.paths: \S*nope does not exist"),
        ({"glob": "**/*.md"}, r"holds no file matching data.glob='\*\*/\*.md'"),
        (
            {"val_size": 10_000},
            r"corpus is too small: data.val_size=10000 sequences of data.seq_len=16 tokens",
        ),
        ({"seq_len": 100_000}, r"corpus is too small: at least one sequence of data.seq_len=100000 tokens"),
        ({"val_fraction": 0.7, "test_fraction": 0.3}, r"must be > 0 with a sum below 1"),
        ({"format": "csv"}, r"data.format='csv' is not one of \['text', 'jsonl'\]"),
        ({"tokenizer": "{root}/missing.json"}, r"data.tokenizer=\S*missing.json is not a file"),
        ({"tokenizer": "{root}/sub/doc01.txt"}, r"is not a tokenizer file the `tokenizers` library reads"),
        ({"tokenizer": "{root}/sub"}, r"data.tokenizer=\S*sub is a folder without a tokenizer.json"),
    ],
)
def test_bad_input_is_a_one_line_error(corpus, kwargs, message):
    root, _ = corpus
    kwargs = {k: ([p.format(root=root) for p in v] if isinstance(v, list) else v) for k, v in kwargs.items()}
    kwargs = {k: (v.format(root=root) if isinstance(v, str) else v) for k, v in kwargs.items()}
    args = {"paths": [str(root)], "seq_len": 16, **SHARES, **kwargs}
    with pytest.raises(ValueError, match=message) as info:
        TextDataModule(**args)
    assert "\n" not in str(info.value)


def test_jsonl_record_without_the_fields_is_an_error(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "fine"}\n{"question": "q", "answer": "a"}\n')
    with pytest.raises(
        ValueError, match=r"a.jsonl:2 needs a 'text' field or 'prompt' and 'answer' fields.*'question'"
    ):
        TextDataModule(paths=[str(tmp_path)], format="jsonl", seq_len=4)
    (tmp_path / "a.jsonl").write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(ValueError, match=r"a.jsonl:2 is not valid JSON"):
        TextDataModule(paths=[str(tmp_path)], format="jsonl", seq_len=4)


def test_find_files_globs_and_excludes(tmp_path):
    for rel in (
        "a.py",
        "pkg/b.py",
        "pkg/tests/c.py",
        "test/d.py",
        "idlelib/idle_test/e.py",
        "pkg/f.txt",
        ".git/g.py",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    names = lambda files: sorted(p.relative_to(tmp_path).as_posix() for p in files)  # noqa: E731
    assert names(find_files([str(tmp_path)], "**/*.py", [".*", "test", "tests"])) == [
        "a.py",
        "idlelib/idle_test/e.py",
        "pkg/b.py",
    ]
    assert names(find_files([str(tmp_path)], "*.py", [])) == ["a.py"]  # * stays in one folder
    assert names(find_files([str(tmp_path)], "pkg/**", ["pkg/tests"])) == ["pkg/b.py", "pkg/f.txt"]
    assert excluded("idlelib/idle_test/e.py", ["idlelib/idle_test"]) and not excluded(
        "idlelib/x.py", ["idle_test"]
    )
    # a file named in data.paths is read whatever the glob
    assert names(find_files([str(tmp_path / "pkg" / "f.txt")], "**/*.py", [])) == ["pkg/f.txt"]


def test_training_order_passes_over_every_sequence_once_and_repeats_per_seed(corpus):
    root, _ = corpus
    dm = TextDataModule(paths=[str(root)], seq_len=8, train_size=7, seed=3, **SHARES)
    n = len(dm.streams["train"])
    run = torch.cat([dm.train_order(e) for e in range(-(-2 * n // 7))])
    assert sorted(run[:n].tolist()) == list(range(n)) and sorted(run[n : 2 * n].tolist()) == list(range(n))
    assert not torch.equal(run[:n], run[n : 2 * n])  # each pass in its own order
    same = TextDataModule(paths=[str(root)], seq_len=8, train_size=7, seed=3, **SHARES)
    other = TextDataModule(paths=[str(root)], seq_len=8, train_size=7, seed=4, **SHARES)
    assert torch.equal(same.train_order(2), dm.train_order(2))
    assert not torch.equal(other.train_order(0), dm.train_order(0))


def test_training_loader_resumes_mid_epoch(corpus):
    """A run resumed from a checkpoint after k batches sees the batches the uninterrupted run saw next."""
    root, _ = corpus
    dm = TextDataModule(paths=[str(root)], seq_len=8, batch_size=3, train_size=12, **SHARES)
    dm.trainer = SimpleNamespace(current_epoch=2)
    whole = list(dm.train_dataloader())
    loader = dm.train_dataloader()
    loader.load_state_dict({"batches": 2})
    resumed = list(loader)
    assert len(whole) == 4 and len(resumed) == 2
    for a, b in zip(whole[2:], resumed, strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert loader.state_dict() == {"batches": 4}


def test_tokenizer_must_match_the_checkpoint(corpus, tmp_path):
    root, texts = corpus
    dm = TextDataModule(paths=[str(root)], seq_len=16, **SHARES)
    dm.load_state_dict(dm.state_dict())  # the same tokenizer: fine
    path = train_tokenizer(tmp_path / "tokenizer.json", list(texts.values()))
    other = TextDataModule(paths=[str(root)], tokenizer=str(path), seq_len=16, **SHARES)
    with pytest.raises(ValueError, match=r"trained with another tokenizer \(bytes"):
        other.load_state_dict(dm.state_dict())


@pytest.mark.parametrize("count", [3, 4, 8])
def test_a_small_corpus_gives_val_and_test_a_document_each(tmp_path, count):
    """Hash shares of 5 % leave val and test empty for most corpora of a few files: with >= 3 documents each
    split still gets one, by document and the same for the same content."""
    from lmsleep.data.corpus import Document, split_documents

    docs = [Document(f"d{i}", f"document {i} ".encode() * 20) for i in range(count)]
    splits = split_documents(docs, 0.05, 0.05)
    assert all(splits[s] for s in ("train", "val", "test"))
    assert sorted(d.source for s in splits.values() for d in s) == sorted(d.source for d in docs)
    assert splits == split_documents(list(reversed(docs)), 0.05, 0.05)
    for i in range(count):
        (tmp_path / f"f{i}.txt").write_text(f"document {i} " * 20)
    data = TextDataModule(paths=[str(tmp_path)], seq_len=8, val_size=None, test_size=None)
    assert all(len(data.streams[s]) >= 1 for s in ("train", "val", "test"))


def test_fewer_than_three_documents_keep_the_clear_error(tmp_path):
    for i in range(2):
        (tmp_path / f"f{i}.txt").write_text(f"document {i} " * 20)
    with pytest.raises(ValueError, match="corpus is too small"):
        TextDataModule(paths=[str(tmp_path)], seq_len=8, val_size=None, test_size=None)
