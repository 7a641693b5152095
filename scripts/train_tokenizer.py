#!/usr/bin/env python
"""Train a small byte-level BPE tokenizer (a ``tokenizer.json``) on local files, for models pretrained here.

    python scripts/train_tokenizer.py OUT.json --vocab-size 2048 [--extra-words-of gsm_inf] PATH ...

No pretrained tokenizer can be downloaded on an offline machine, so the end-to-end pretrained-model
demonstration (results/pretrained_demo) trains its own: byte-level BPE (every text encodes, nothing is
unknown), digits split one per token (so numbers are spelled digit by digit, as in most LM tokenizers), and
one special end-of-text token ``<|endoftext|>`` (``data.eod_token`` of ``data=text``). ``PATH`` are files or
folders (``*.py`` files searched recursively, ``test``/``tests`` folders skipped). ``--extra-words-of gsm_inf``
adds the GSM-style task's vocabulary as one more training text, so its words become whole tokens. Training
is deterministic for the same files and settings.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

EOT = "<|endoftext|>"
SKIP = {"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages"}


def files_of(paths: list[Path]) -> list[Path]:
    """The ``.py`` files under ``paths`` (files as given), sorted, without test folders."""
    found = []
    for path in paths:
        if path.is_file():
            found.append(path)
            continue
        if not path.is_dir():
            raise SystemExit(f"train_tokenizer: {path} is neither a file nor a folder")
        found += [f for f in path.rglob("*.py") if not SKIP & set(f.relative_to(path).parts) and f.is_file()]
    if not found:
        raise SystemExit(f"train_tokenizer: no .py files under {', '.join(map(str, paths))}")
    return sorted(found)


def texts(files: list[Path], extra: str | None) -> Iterator[str]:
    for file in files:
        yield file.read_text(encoding="utf-8", errors="replace")
    if extra is not None:
        yield extra


def task_words(name: str) -> str:
    if name != "gsm_inf":
        raise SystemExit(f"train_tokenizer: --extra-words-of {name!r}: only gsm_inf is known")
    from lmsleep.data.gsm_inf import GSMInfTask

    words = GSMInfTask(ops=[1, 2], context_tokens=[100, 120], window=64).vocab.tokens[1:]
    return " ".join(words * 2000)  # repeated: BPE merges what is frequent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("paths", type=Path, nargs="+")
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--extra-words-of", default=None)
    args = p.parse_args(argv)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    files = files_of(args.paths)
    extra = None if args.extra_words_of is None else task_words(args.extra_words_of)
    tok.train_from_iterator(texts(files, extra), trainer=trainer)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(args.out))
    print(f"train_tokenizer: {tok.get_vocab_size()} tokens from {len(files)} files -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
