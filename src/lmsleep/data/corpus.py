"""The documents of the text data (docs/text.md): files, folders and JSON-lines files, split by document.

A document is one file (``format="text"``) or one line of a JSON-lines file (``format="jsonl"``: ``{"text":
...}``, or ``{"prompt": ..., "answer": ...}`` where only the answer carries loss). Its split is a pure function
of its content: a stable hash of the text (of the prompt, for prompt/answer records) falls in the train, val
or test share of the hash space, so identical documents share a split, no text is in two splits, and the split
is the same on every machine, whatever the order in which files are found.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

SPLITS = ("train", "val", "test")
FORMATS = ("text", "jsonl")


@dataclass(frozen=True)
class Document:
    """One document: ``prompt`` (context without loss; empty for plain text) then ``text`` (with loss).

    Text stays ``bytes`` as read from a file (the byte tokenizer needs no decoding); JSON-lines fields are str.
    """

    source: str  # where it came from, for messages: a path or "path:line"
    text: bytes | str
    prompt: bytes | str = b""

    @cached_property  # (written to the instance's __dict__, which a frozen dataclass allows)
    def key(self) -> int:
        """A stable 64-bit hash of the content that decides the split (the prompt's, if there is one)."""
        content = self.prompt or self.text
        data = content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content
        return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def split_of(key: int, val_fraction: float, test_fraction: float) -> str:
    """``test`` for the top ``test_fraction`` of the hash space, ``val`` below it, else ``train``."""
    u = key / 2**64
    if u >= 1.0 - test_fraction:
        return "test"
    return "val" if u >= 1.0 - test_fraction - val_fraction else "train"


def split_documents(
    documents: Sequence[Document], val_fraction: float, test_fraction: float
) -> dict[str, list[Document]]:
    """The documents of each split, by the hash of their content (:func:`split_of`), in hash order.

    A small corpus can leave val or test empty by chance; with at least 3 documents each split gets at least
    one: an empty split takes the document of the fullest split whose hash lies nearest its own share (test
    the highest, train the lowest, val the highest below test's). Still by document, still fixed by content.
    """
    by_split: dict[str, list[Document]] = {s: [] for s in SPLITS}
    for doc in sorted(documents, key=lambda d: (d.key, d.source)):  # fixed, whatever the file system's order
        by_split[split_of(doc.key, val_fraction, test_fraction)].append(doc)
    if len(documents) >= 3:
        for split in ("test", "val", "train"):
            if not by_split[split]:
                donor = max(SPLITS, key=lambda s: (len(by_split[s]), s == "train"))
                moved = by_split[donor].pop(0 if split == "train" else -1)
                by_split[split] = [moved]
                by_split[donor].sort(key=lambda d: (d.key, d.source))
    return by_split


@lru_cache(maxsize=64)
def glob_regex(pattern: str) -> re.Pattern:
    """A glob over ``/``-separated paths: ``**/`` is any number of folders (none too), ``*`` and ``?`` stay
    inside one name."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def excluded(relative: str, patterns: Sequence[str]) -> bool:
    """Whether a path inside a folder (``a/b/c.py``) is excluded: a pattern without ``/`` names a file or folder
    anywhere (``tests``, ``.*``), one with ``/`` a path from the folder (``idlelib/idle_test``, ``*/tests``)."""
    parts = relative.split("/")
    for pattern in patterns:
        if "/" not in pattern:
            if any(fnmatch.fnmatchcase(part, pattern) for part in parts):
                return True
        elif any(
            glob_regex(pattern.rstrip("/")).fullmatch("/".join(parts[:k])) for k in range(1, len(parts) + 1)
        ):
            return True
    return False


def find_files(paths: Sequence[str], glob: str = "**/*", exclude: Sequence[str] = ()) -> list[Path]:
    """Every file named in ``paths`` and every file under a folder in ``paths`` whose path inside it matches
    ``glob`` and no ``exclude`` pattern (folders that match one are not entered). Sorted, without repeats."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ValueError(
            "data.paths is empty; name your files or folders, e.g. data.paths=[/path/to/corpus] "
            "(folders are searched recursively with data.glob)"
        )
    found: list[Path] = []
    pattern = glob_regex(glob)
    for entry in paths:
        root = Path(str(entry)).expanduser()
        if root.is_file():
            found.append(root)
            continue
        if not root.is_dir():
            raise ValueError(f"data.paths: {entry} does not exist; pass existing files or folders")
        before = len(found)
        for folder, dirs, files in os.walk(root, followlinks=True):
            inside = Path(folder).relative_to(root).as_posix()
            prefix = "" if inside == "." else inside + "/"
            dirs[:] = sorted(d for d in dirs if not excluded(prefix + d, exclude))
            for name in sorted(files):
                relative = prefix + name
                if pattern.fullmatch(relative) and not excluded(relative, exclude):
                    found.append(Path(folder) / name)
        if len(found) == before:
            raise ValueError(
                f"data.paths: the folder {entry} holds no file matching data.glob='{glob}' outside "
                f"data.exclude={list(exclude)}; check the pattern (e.g. data.glob='**/*.txt')"
            )
    return sorted(set(found))


def read_documents(files: Sequence[Path], format: str = "text") -> list[Document]:
    """The documents of ``files``: each file (``text``) or each non-empty line (``jsonl``)."""
    if format not in FORMATS:
        raise ValueError(f"data.format={format!r} is not one of {list(FORMATS)}")
    if format == "text":
        return [Document(str(f), f.read_bytes()) for f in files]
    return [doc for f in files for doc in _jsonl_documents(f)]


def _jsonl_documents(file: Path) -> list[Document]:
    docs = []
    with open(file, encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{file}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"data.paths: {where} is not valid JSON ({exc.msg}); data.format=jsonl reads one JSON "
                    "object per line"
                ) from exc
            fields = record if isinstance(record, dict) else {}
            if isinstance(fields.get("text"), str):
                docs.append(Document(where, fields["text"], ""))
            elif isinstance(fields.get("prompt"), str) and isinstance(fields.get("answer"), str):
                docs.append(Document(where, fields["answer"], fields["prompt"]))
            else:
                keys = sorted(fields) if isinstance(record, dict) else type(record).__name__
                raise ValueError(
                    f"data.paths: {where} needs a 'text' field or 'prompt' and 'answer' fields (strings), but "
                    f"has {keys}; fix the line or use data.format=text to read the file as plain text"
                )
    return docs
