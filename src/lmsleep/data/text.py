"""``data=text``: a LightningDataModule over the researcher's own files (docs/text.md).

The documents (:mod:`lmsleep.data.corpus`) are split by a hash of their content, tokenised
(:mod:`lmsleep.data.tokenizer`) and laid end to end per split, each after an ``<eod>`` (the stream starts with
one, and one follows every document), so every document's first token is predicted from an ``<eod>``. Packed
(``pack=True``), the stream is cut into sequences of ``seq_len`` tokens: sequence ``i`` reads tokens
``i * T .. i * T + T`` (``T + 1`` tokens: the inputs and, shifted by one, their next-token labels), so every
token is predicted exactly once and the tail shorter than a sequence is dropped. Cut (``pack=False``), each
document (from the ``<eod>`` before it to its own) is cut on its own and its last piece padded. A sample is
``input_ids`` and ``labels`` ``[T]`` (label = the next token, ``-100`` = no loss: padding and prompt tokens)
and, with a ``tokenizers`` tokenizer, ``token_bytes`` ``[T]``: how many bytes of text each label stands for
(bits per byte divide by them).

Training reads ``train_size`` sequences per epoch from an endless run of passes over the train split, each
pass in its own order (a pure function of the seed and the pass), so a long run sees every sequence once before
any twice, and a run resumed mid-epoch sees the batches it would have seen next (:class:`ResumableDataLoader`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from lmsleep.data.corpus import FORMATS, SPLITS, Document, find_files, read_documents, split_documents
from lmsleep.data.resumable import ResumableDataLoader, SkippingBatchSampler
from lmsleep.data.task import IGNORE_INDEX
from lmsleep.data.tokenizer import load_tokenizer, tokenizer_from_dict

log = logging.getLogger("lmsleep")


@dataclass
class TokenStream:
    """One split's documents end to end: ``ids [N]`` (int32), ``loss [N]`` (whether token j is a target that
    carries loss), ``nbytes [N]`` (bytes token j stands for; None = one each), and the sequences cut from it,
    ``starts [S]`` and ``ends [S]`` (token ranges of ``T + 1`` tokens or fewer, overlapping by one)."""

    ids: torch.Tensor
    loss: torch.Tensor
    nbytes: torch.Tensor | None
    starts: torch.Tensor
    ends: torch.Tensor
    documents: int
    seq_len: int
    pad_id: int

    def __len__(self) -> int:
        return len(self.starts)

    def sample(self, i: int) -> dict[str, torch.Tensor]:
        """Sequence ``i``: ``input_ids``, ``labels`` (and ``token_bytes``) ``[T]``, padded after a short piece."""
        a, b = int(self.starts[i]), int(self.ends[i])
        n, T = b - a - 1, self.seq_len
        input_ids = torch.full((T,), self.pad_id, dtype=torch.long)
        labels = torch.full((T,), IGNORE_INDEX, dtype=torch.long)
        input_ids[:n] = self.ids[a : b - 1]
        targets = self.ids[a + 1 : b].long()
        labels[:n] = targets.masked_fill(~self.loss[a + 1 : b], IGNORE_INDEX)
        out = {"input_ids": input_ids, "labels": labels}
        if self.nbytes is not None:
            token_bytes = torch.zeros(T, dtype=torch.long)
            token_bytes[:n] = self.nbytes[a + 1 : b]
            out["token_bytes"] = token_bytes
        return out


def build_stream(documents: Sequence[Document], tokenizer: Any, seq_len: int, pack: bool) -> TokenStream:
    """Tokenise ``documents`` (in the given order) into one stream that starts with ``<eod>`` and has ``<eod>``
    after every document, so every document follows an ``<eod>`` (its first token is predicted from it, as
    ``lmsleep generate`` starts a prompt), then cut the sequences."""
    eod = torch.tensor([tokenizer.eod_id], dtype=torch.int32)
    one = torch.ones(1, dtype=torch.int32)  # <eod> stands for the boundary: one byte, as a newline would
    ids, loss, nbytes = [eod], [torch.zeros(1, dtype=torch.bool)], [one]
    bounds = [0]  # the index of the <eod> before each document, then of the last one
    for doc in documents:
        prompt_ids, prompt_bytes = tokenizer.encode(doc.prompt) if doc.prompt else (eod[:0], None)
        text_ids, text_bytes = tokenizer.encode(doc.text)
        ids += [prompt_ids, text_ids, eod]
        # the prompt is context only; the text (an answer, or the whole document) and its <eod> are predicted
        loss += [
            torch.zeros(len(prompt_ids), dtype=torch.bool),
            torch.ones(len(text_ids) + 1, dtype=torch.bool),
        ]
        if not tokenizer.tokens_are_bytes:
            nbytes += [prompt_bytes if prompt_bytes is not None else one[:0], text_bytes, one]
        bounds.append(bounds[-1] + len(prompt_ids) + len(text_ids) + 1)
    T = seq_len
    if pack:
        starts = torch.arange(bounds[-1] // T, dtype=torch.int64) * T  # (stream length - 1) // T sequences
        ends = starts + T + 1
    else:  # document k is tokens bounds[k] (its leading <eod>) .. bounds[k + 1] (its own <eod>)
        pieces = [
            (s, min(s + T + 1, b + 1))
            for a, b in zip(bounds, bounds[1:], strict=False)
            for s in range(a, b, T)
        ]
        starts = torch.tensor([s for s, _ in pieces], dtype=torch.int64)
        ends = torch.tensor([e for _, e in pieces], dtype=torch.int64)
    return TokenStream(
        ids=torch.cat(ids),
        loss=torch.cat(loss),
        nbytes=None if tokenizer.tokens_are_bytes else torch.cat(nbytes),
        starts=starts,
        ends=ends,
        documents=len(documents),
        seq_len=T,
        pad_id=tokenizer.pad_id,
    )


class TextDataset(Dataset):
    """Sequences ``order[0], order[1], ...`` of a :class:`TokenStream`."""

    def __init__(self, stream: TokenStream, order: torch.Tensor):
        self.stream, self.order = stream, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self.order):
            raise IndexError(i)
        return self.stream.sample(int(self.order[i]))


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


class TextDataModule(L.LightningDataModule):
    """Train/val/test loaders over your own text, split by document (docs/text.md).

    Everything is read, split and tokenised when the module is built, so a bad path or a corpus too small for
    the requested sizes stops the run before any work, and the split is logged (documents, tokens and
    sequences per split).

    Args:
        paths: files and folders (folders are searched recursively).
        glob: which files of a folder to read, matched against the path inside it (``**/*.py``).
        exclude: names (no ``/``: a file or folder of that name anywhere) or paths inside a folder (with ``/``)
            to skip.
        format: ``text`` (a file is a document) or ``jsonl`` (a line is one: ``text``, or ``prompt`` +
            ``answer`` with loss on the answer only).
        tokenizer: None for bytes, or the path of a ``tokenizers`` file.
        eod_token: with a tokenizer file, its end-of-document token (None: ``<eod>`` is added).
        seq_len: tokens per sequence T.
        pack: documents end to end (True) or each cut on its own and padded (False).
        window: the window L of the model's sleep (``model.sleep.window`` follows ``data.window``).
        val_fraction, test_fraction: shares of the document-hash space in val and test.
        seed: the order of the training sequences.
        batch_size: per-device batch size.
        train_size: sequences per epoch (None: the train split's count).
        val_size, test_size: sequences evaluated, the first of their split (None: all of it).
        num_workers: data-loader worker processes.
        fresh_train_samples: a new order every epoch (False: the first epoch's again, to overfit).
    """

    metrics = "text"  # LitLM logs language-model metrics (loss and bits per byte by window) for this data

    def __init__(
        self,
        paths: Sequence[str] = (),
        glob: str = "**/*",
        exclude: Sequence[str] = (".*", "__pycache__"),
        format: str = "text",
        tokenizer: str | None = None,
        eod_token: str | None = None,
        seq_len: int = 1024,
        pack: bool = True,
        window: int = 128,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        seed: int = 0,
        batch_size: int = 16,
        train_size: int | None = None,
        val_size: int | None = None,
        test_size: int | None = None,
        num_workers: int = 0,
        fresh_train_samples: bool = True,
    ):
        super().__init__()
        for name, value in (("seq_len", seq_len), ("window", window), ("batch_size", batch_size)):
            if int(value) < 1:
                raise ValueError(f"data.{name} must be >= 1, got {value}")
        for name, value in (("train_size", train_size), ("val_size", val_size), ("test_size", test_size)):
            if value is not None and int(value) < 1:
                raise ValueError(f"data.{name} must be >= 1 sequence or null (all of the split), got {value}")
        if not (0 < val_fraction and 0 < test_fraction and val_fraction + test_fraction < 1):
            raise ValueError(
                f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} must be > 0 with a sum "
                "below 1 (the rest of the documents is the train split)"
            )
        if format not in FORMATS:
            raise ValueError(f"data.format={format!r} is not one of {list(FORMATS)}")
        self.seq_len, self.window, self.pack = int(seq_len), int(window), bool(pack)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.seed, self.fresh_train_samples, self.format = int(seed), bool(fresh_train_samples), format
        self.tokenizer = load_tokenizer(tokenizer, eod_token)
        files = find_files(list(paths), glob, list(exclude))
        documents = [d for d in read_documents(files, format) if d.text or d.prompt]
        by_split = split_documents(documents, val_fraction, test_fraction)
        self.streams = {s: build_stream(by_split[s], self.tokenizer, self.seq_len, self.pack) for s in SPLITS}
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self._check_sizes(len(files), len(documents))
        self._log_split(paths, glob, len(files), len(documents))
        # plain lists, not Hydra's ListConfigs: checkpoints hold only plain containers (torch.load(weights_only))
        paths, exclude = [str(x) for x in paths], [str(x) for x in exclude]
        self.save_hyperparameters(logger=False)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def _check_sizes(self, files: int, documents: int) -> None:
        """Each split holds the sequences asked of it (train: at least one; an epoch may span passes)."""
        for split in SPLITS:
            stream, wanted = self.streams[split], self.sizes[split]
            need = 1 if split == "train" or wanted is None else int(wanted)
            if len(stream) >= need:
                continue
            asked = (
                f"data.{split}_size={wanted} sequences"
                if split != "train" and wanted
                else "at least one sequence"
            )
            fix = (
                f"lower data.{split}_size (null = all of it) or data.seq_len, raise data.{split}_fraction"
                if split != "train"
                else "lower data.seq_len, data.val_fraction or data.test_fraction"
            )
            raise ValueError(
                f"the corpus is too small: {asked} of data.seq_len={self.seq_len} tokens asked of the "
                f"{split} split, which holds {len(stream)} ({stream.documents} of the {documents} documents from "
                f"{files} files, {len(stream.ids):,} tokens); {fix}, or add documents"
            )

    def _log_split(self, paths: Sequence[str], glob: str, files: int, documents: int) -> None:
        empty = (
            f", {files - documents} empty ones skipped" if files > documents and self.format == "text" else ""
        )
        log.info(
            f"Text data: {documents} documents from {files} files{empty} ({', '.join(map(str, paths))}; "
            f"glob {glob}); tokenizer: {self.tokenizer.describe()}; {'packed' if self.pack else 'cut'} into "
            f"sequences of {self.seq_len} tokens; split by a hash of each document's content:"
        )
        for split in SPLITS:
            s = self.streams[split]
            used = self.sizes[split] or len(s)
            per_epoch = " per epoch" if split == "train" else ""
            log.info(
                f"  {split:<5} {s.documents:>7,} documents {len(s.ids):>12,} tokens {len(s):>8,} sequences "
                f"({used:,} used{per_epoch})"
            )

    # --- loaders ----------------------------------------------------------------------------------------------
    def train_order(self, epoch: int) -> torch.Tensor:
        """The train sequences of ``epoch``: positions ``epoch * S ..`` of an endless run of passes over the
        split, pass ``p`` in the order ``randperm(n, seed=(seed, p))``."""
        n = len(self.streams["train"])
        size = self.sizes["train"] or n
        first, last = epoch * size, (epoch + 1) * size
        orders = []
        for p in range(first // n, (last - 1) // n + 1):
            generator = torch.Generator().manual_seed(_stable_int(f"text|{self.seed}|pass|{p}") % 2**63)
            perm = torch.randperm(n, generator=generator)
            orders.append(perm[max(first - p * n, 0) : min(last - p * n, n)])
        return torch.cat(orders)

    def train_dataloader(self) -> DataLoader:
        epoch = self.trainer.current_epoch if (self.trainer is not None and self.fresh_train_samples) else 0
        dataset = TextDataset(self.streams["train"], self.train_order(epoch))
        # Resumable mid-epoch: Lightning saves how many batches were handed out and the sampler skips them.
        # The order lives in the dataset, so DDP's sampler (which splits indices in order) keeps it.
        return ResumableDataLoader(
            dataset,
            batch_sampler=SkippingBatchSampler(SequentialSampler(dataset), self.batch_size, drop_last=False),
            num_workers=self.num_workers,
        )

    def _eval_loader(self, split: str) -> DataLoader:
        count = self.sizes[split] or len(self.streams[split])
        dataset = TextDataset(self.streams[split], torch.arange(count))
        return DataLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    # --- checkpoints: the tokenizer travels with the weights (lmsleep generate reads it) -------------------
    def state_dict(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer.to_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("tokenizer")
        if saved is not None and saved != self.tokenizer.to_dict():
            raise ValueError(
                f"data.tokenizer: the checkpoint was trained with another tokenizer "
                f"({tokenizer_from_dict(saved).describe()}) than the configured one "
                f"({self.tokenizer.describe()}); pass the run's data.tokenizer"
            )
