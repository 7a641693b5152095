"""Tokenizers of the text data (docs/text.md): UTF-8 bytes by default, or any file the ``tokenizers`` library
reads (``data.tokenizer=path/to/tokenizer.json``, or a model folder holding one).

Both encode a document to token ids ``[n]`` (int32) and say how many bytes of the UTF-8 text each token
stands for, which bits per byte divide by. Both add two ids of their own: ``<pad>`` (never a target) and
``<eod>`` (the end of a document, the separator between packed documents), unless a tokenizer file names its
own end-of-document token. A tokenizer is saved in every checkpoint of a text run (:meth:`to_dict`), so
``lmsleep generate`` decodes with the run's tokenizer whatever files lie where it runs.
"""

from __future__ import annotations

from typing import Any

import torch

PAD, EOD = "<pad>", "<eod>"


class ByteTokenizer:
    """Ids 0..255 are the bytes of the text; 256 is ``<pad>`` and 257 ``<eod>``. Nothing to download.

    ``<eod>`` counts as one byte in bits per byte (it stands for the document boundary, as a newline would),
    so with this tokenizer bits per byte equal bits per token.
    """

    kind = "bytes"
    tokens_are_bytes = True
    pad_id, eod_id, vocab_size = 256, 257, 258

    def encode(self, text: str | bytes) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(ids [n] int32, None)``: one token per byte (``None``: every token is one byte)."""
        data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
        if not data:
            return torch.zeros(0, dtype=torch.int32), None
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int32), None

    def decode(self, ids: Any) -> str:
        """The text of ``ids``: bytes as UTF-8 (invalid sequences as U+FFFD), ``<eod>`` by name, no padding."""
        out, run = [], bytearray()
        for i in torch.as_tensor(ids).flatten().tolist():
            if i < 256:
                run.append(i)
                continue
            out.append(run.decode("utf-8", "replace"))
            run = bytearray()
            out.append(EOD if i == self.eod_id else "")
        out.append(run.decode("utf-8", "replace"))
        return "".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def describe(self) -> str:
        return f"bytes ({self.vocab_size} ids: 256 bytes, {PAD}, {EOD})"


def _utf8_offsets(text: str) -> torch.Tensor:
    """``[len(text) + 1]``: the UTF-8 byte offset of every character index of ``text`` (and of its end)."""
    points = torch.frombuffer(bytearray(text.encode("utf-32-le", "surrogatepass")), dtype=torch.int32)
    width = 1 + (points >= 0x80).int() + (points >= 0x800).int() + (points >= 0x10000).int()
    return torch.cat([torch.zeros(1, dtype=torch.int64), width.cumsum(0)])


class TokenizersTokenizer:
    """A ``tokenizers.Tokenizer`` (a ``tokenizer.json``), plus ``<pad>`` and (unless ``eod_token`` names one
    of its tokens) ``<eod>`` appended after its largest id.

    Bytes per token come from the tokens' character offsets in the original text: each token stands for the
    bytes between the end of the text the tokens before it covered and the end of its own offsets (a character
    split over several byte-level tokens counts once; text that no token covers, such as whitespace a
    pre-tokenizer drops, goes to the token after it, and the document's tail to its last token), so the bytes
    of a document's tokens sum to the bytes of its text.
    """

    kind = "tokenizers"
    tokens_are_bytes = False

    def __init__(self, tokenizer: Any, eod_token: str | None = None, source: str = "the tokenizer"):
        self.tokenizer, self.eod_token, self.source = tokenizer, eod_token, source
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        size = max(vocab.values(), default=-1) + 1
        if eod_token is not None:
            eod = tokenizer.token_to_id(eod_token)
            if eod is None:
                raise ValueError(
                    f"data.eod_token={eod_token!r} is not a token of {source}; name one of its tokens (e.g. its "
                    "end-of-text token) or set data.eod_token=null to add <eod>"
                )
            self.eod_id = int(eod)
        else:
            self.eod_id, size = size, size + 1
        self.pad_id, self.vocab_size = size, size + 1
        self.base_size = self.eod_id if eod_token is None else self.pad_id  # ids the tokenizer decodes itself

    def encode(self, text: str | bytes) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids [n] int32, bytes per token [n] int32)``, without the tokenizer's own special tokens."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        ids = torch.tensor(encoding.ids, dtype=torch.int32)
        if not len(ids):
            return ids, torch.zeros(0, dtype=torch.int32)
        offsets = _utf8_offsets(text)
        ends = offsets[torch.tensor([end for _, end in encoding.offsets], dtype=torch.int64)]
        covered = ends.cummax(0).values
        nbytes = torch.diff(covered, prepend=torch.zeros(1, dtype=torch.int64))
        nbytes[-1] += offsets[-1] - covered[-1]
        return ids, nbytes.to(torch.int32)

    def decode(self, ids: Any) -> str:
        out, run = [], []
        for i in torch.as_tensor(ids).flatten().tolist():
            if i < self.base_size:
                run.append(i)
                continue
            out.append(self.tokenizer.decode(run, skip_special_tokens=False) if run else "")
            run = []
            out.append(EOD if i == self.eod_id and self.eod_token is None else "")
        out.append(self.tokenizer.decode(run, skip_special_tokens=False) if run else "")
        return "".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "json": self.tokenizer.to_str(), "eod_token": self.eod_token}

    def describe(self) -> str:
        eod = f"end of document {self.eod_token!r}" if self.eod_token else f"{EOD} added"
        return f"{self.source} ({self.vocab_size} ids with {PAD} added, {eod})"


def _tokenizers_module():
    try:
        import tokenizers
    except ImportError as exc:
        raise ValueError(
            "data.tokenizer needs the `tokenizers` package, which is not installed: pip install tokenizers "
            "(or pip install 'lmsleep[text]'); data.tokenizer=null uses bytes and needs nothing"
        ) from exc
    return tokenizers


def load_tokenizer(
    path: str | None = None, eod_token: str | None = None
) -> ByteTokenizer | TokenizersTokenizer:
    """Bytes when ``path`` is None, else the ``tokenizers`` file at ``path``, or the ``tokenizer.json`` in the
    folder ``path`` (a pretrained model's; ``tokenizers`` is imported only then)."""
    if path is None or str(path) in ("", "bytes"):
        if eod_token is not None:
            raise ValueError(
                f"data.eod_token={eod_token!r} names a token of a tokenizer file, but data.tokenizer is null "
                "(bytes, which have <eod> of their own); set data.tokenizer or data.eod_token=null"
            )
        return ByteTokenizer()
    from pathlib import Path

    file = Path(str(path)).expanduser()
    if file.is_dir():  # a model folder (save_pretrained, a hub download): its fast tokenizer's file
        if not (file / "tokenizer.json").is_file():
            raise ValueError(
                f"data.tokenizer={path} is a folder without a tokenizer.json (a transformers model folder has "
                "one when its tokenizer is a fast one); pass a folder with one, the file itself, or "
                "data.tokenizer=null for bytes"
            )
        file = file / "tokenizer.json"
    if not file.is_file():
        raise ValueError(
            f"data.tokenizer={path} is not a file; pass a tokenizer.json the `tokenizers` library reads (or a "
            "model folder holding one), or data.tokenizer=null for bytes"
        )
    tokenizers = _tokenizers_module()
    try:
        tokenizer = tokenizers.Tokenizer.from_file(str(file))
    except Exception as exc:  # the library's parse errors have no common type
        raise ValueError(
            f"data.tokenizer={path} is not a tokenizer file the `tokenizers` library reads "
            f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})"
        ) from exc
    return TokenizersTokenizer(tokenizer, eod_token, source=f"data.tokenizer={path}")


def tokenizer_from_dict(state: dict[str, Any]) -> ByteTokenizer | TokenizersTokenizer:
    """The tokenizer :meth:`to_dict` saved (in a checkpoint)."""
    if state.get("kind") == "bytes":
        return ByteTokenizer()
    if state.get("kind") == "tokenizers":
        tokenizer = _tokenizers_module().Tokenizer.from_str(state["json"])
        return TokenizersTokenizer(tokenizer, state.get("eod_token"), source="the run's tokenizer")
    raise ValueError(f"unknown saved tokenizer kind {state.get('kind')!r}; expected 'bytes' or 'tokenizers'")
