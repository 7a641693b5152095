"""The GSM-style task rendered as text for a pretrained model's own tokenizer (docs/pretrained.md).

:class:`GSMInfTextTask` draws exactly the problems of :class:`lmsleep.data.gsm_inf.GSMInfTask` (same name, so
the same problem for the same seed, split and index, and the same splits), and writes each one as the
text ``"what is <quantity> ? <statements ...> answer :"`` followed by the answer's digits, tokenised by the
tokenizer of the model being fine-tuned. Question first, no chain of thought, and a loss on the answer's
tokens only: with ``prompt`` ids ``p_1 .. p_n`` and answer ids ``a_1 .. a_m`` the sample is
``input_ids = p_1 .. p_n a_1 .. a_(m-1)`` with labels ``a_1 .. a_m`` at positions ``n .. n + m - 1`` (each
position predicts the next token; ``-100`` elsewhere). ``acc_exact`` is then "every digit right".

The tokenizer is a ``tokenizer.json`` of the ``tokenizers`` library (what a transformers model folder ships
for its fast tokenizer), given as that file or its folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmsleep.data.gsm_inf import ANSWER_PROMPT, GSMInfTask
from lmsleep.data.task import IGNORE_INDEX
from lmsleep.data.tokenizer import _tokenizers_module


def load_tokenizer_json(path: str | Path) -> Any:
    """A ``tokenizers.Tokenizer`` from a ``tokenizer.json`` or a model folder holding one."""
    file = Path(str(path)).expanduser()
    if file.is_dir():
        file = file / "tokenizer.json"
    if not file.is_file():
        raise ValueError(
            f"data.task.tokenizer={path} is neither a tokenizer.json nor a folder with one (a transformers "
            "model folder has it when its tokenizer is a fast one)"
        )
    return _tokenizers_module().Tokenizer.from_file(str(file))


class GSMInfTextTask(GSMInfTask):
    """:class:`GSMInfTask`'s problems as text through ``tokenizer`` (the module docstring).

    Args:
        tokenizer: a ``tokenizer.json`` or a model folder with one.
        **kwargs: :class:`GSMInfTask`'s arguments (ops, context_tokens, num_values, ..., window, seed);
            ``window`` counts the tokenizer's tokens.
    """

    def __init__(self, tokenizer: str | Path, **kwargs: Any):
        super().__init__(**kwargs)
        self.tokenizer_path = str(tokenizer)
        self.tokenizer = load_tokenizer_json(tokenizer)
        self._vocab_size = max(self.tokenizer.get_vocab(with_added_tokens=True).values()) + 1
        # Words are joined by single spaces, so no word takes more tokens than it does alone.
        words = self.vocab.tokens[1:]
        self._per_word = max(len(self._ids(" " + w)) for w in words)
        self._per_word = max(self._per_word, max(len(self._ids(w)) for w in words))

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def max_length(self) -> int:
        answer_digits = len(str(self.num_values - 1))
        return super().max_length * self._per_word + answer_digits * self._per_word

    def render(self, problem: dict[str, Any]) -> tuple[str, str]:
        """``(prompt, answer)`` text; the answer starts with the space that separates it."""
        words = problem["question"].split() + problem["context"].split() + ANSWER_PROMPT
        return " ".join(words), " " + str(problem["answer"])

    def encode(self, problem: dict[str, Any]) -> tuple[list[int], list[int]]:
        prompt, answer = self.render(problem)
        p, a = self._ids(prompt), self._ids(answer)
        if not a:
            raise ValueError(f"the tokenizer encodes the answer {answer!r} to no tokens")
        return p + a[:-1], [IGNORE_INDEX] * (len(p) - 1) + a

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)
