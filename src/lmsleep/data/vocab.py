"""A closed token vocabulary shared by the synthetic tasks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

PAD = "<pad>"


class Vocab:
    """Maps token strings to ids and back. Id 0 is always the padding token ``<pad>``."""

    def __init__(self, tokens: Iterable[str]):
        self.tokens: list[str] = [PAD]
        for tok in tokens:
            if tok == PAD:
                continue
            if tok in self.tokens:
                raise ValueError(f"duplicate token {tok!r} in vocabulary")
            if not tok or any(c.isspace() for c in tok):
                raise ValueError(f"token {tok!r} must be non-empty and contain no whitespace")
            self.tokens.append(tok)
        self._index = {tok: i for i, tok in enumerate(self.tokens)}

    @property
    def pad_id(self) -> int:
        return 0

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: str) -> bool:
        return token in self._index

    def id(self, token: str) -> int:
        try:
            return self._index[token]
        except KeyError:
            raise KeyError(f"token {token!r} is not in the vocabulary ({len(self)} tokens)") from None

    def encode(self, tokens: Sequence[str]) -> list[int]:
        return [self.id(t) for t in tokens]

    def decode(self, ids: Iterable[int], skip_pad: bool = False) -> str:
        """Space-joined token strings; the inverse of ``encode(text.split())``."""
        return " ".join(self.tokens[i] for i in ids if not (skip_pad and i == self.pad_id))
