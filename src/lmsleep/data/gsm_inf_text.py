"""The GSM-style task rendered as text for a pretrained model's own tokenizer (docs/pretrained.md).

:class:`GSMInfTextTask` draws exactly the problems of :class:`lmsleep.data.gsm_inf.GSMInfTask` (same name, so
the same problem for the same seed, split and index, and the same splits), and writes each one as the
text ``"what is <quantity> ? <statements ...> answer :"`` followed by the answer's digits, tokenised by the
tokenizer of the model being fine-tuned. Question first, no chain of thought, and a loss on the answer's
tokens only: with ``prompt`` ids ``p_1 .. p_n`` and answer ids ``a_1 .. a_m`` the sample is
``input_ids = p_1 .. p_n a_1 .. a_(m-1)`` with labels ``a_1 .. a_m`` at positions ``n .. n + m - 1`` (each
position predicts the next token; ``-100`` elsewhere). ``acc_exact`` is then "every digit right".

The tokenizer is a ``tokenizer.json`` of the ``tokenizers`` library (what a transformers model folder ships
for its fast tokenizer), given as that file or its folder (``data=gsm_inf_text`` takes ``model.net.path``).

Lengths: with ``lengths="tokens"`` (the default) ``context_tokens`` counts the tokenizer's tokens, as
``window`` does: a statement takes the tokens of its words, each with the space before it (what the tokenizer
gives the joined text when it splits at spaces first, as byte-level BPE tokenizers and word-level ones do), and
distractors are added while they fit. The problems then differ from ``data=gsm_inf``'s (fewer distractors
fill the same length). ``lengths="words"`` counts the task's words instead and gives exactly
:class:`GSMInfTask`'s problems for the same seed, split and index, with a context of more tokens than words.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmsleep.data.gsm_inf import (
    ANSWER_PROMPT,
    OPERATOR_WORDS,
    QUESTION_TOKENS,
    GSMInfTask,
    quantity_words,
)
from lmsleep.data.task import IGNORE_INDEX
from lmsleep.data.tokenizer import _tokenizers_module
from lmsleep.utils.config import ConfigError

LENGTHS = ("tokens", "words")


def load_tokenizer_json(path: str | Path) -> Any:
    """A ``tokenizers.Tokenizer`` from a ``tokenizer.json`` or a model folder holding one."""
    file = Path(str(path)).expanduser()
    if file.is_dir():
        file = file / "tokenizer.json"
    if not file.is_file():
        raise ConfigError(
            f"data.task.tokenizer={path} is neither a tokenizer.json nor a folder with one (a transformers "
            "model folder has it when its tokenizer is a fast one)"
        )
    return _tokenizers_module().Tokenizer.from_file(str(file))


class GSMInfTextTask(GSMInfTask):
    """:class:`GSMInfTask`'s problems as text through ``tokenizer`` (the module docstring).

    Args:
        tokenizer: a ``tokenizer.json`` or a model folder with one.
        lengths: ``tokens`` (``context_tokens`` counts the tokenizer's tokens) or ``words`` (the task's words,
            exactly :class:`GSMInfTask`'s problems).
        **kwargs: :class:`GSMInfTask`'s arguments (ops, context_tokens, num_values, ..., window, seed);
            ``window`` counts the tokenizer's tokens.
    """

    def __init__(self, tokenizer: str | Path | None = None, lengths: str = "tokens", **kwargs: Any):
        if tokenizer is None or str(tokenizer) in ("", "None", "null"):
            raise ConfigError(
                "data.task.tokenizer is not set: data=gsm_inf_text reads the model folder's tokenizer.json "
                "(model.net.path=DIR by default); pass model.net.path=DIR or data.task.tokenizer=DIR_OR_FILE"
            )
        if lengths not in LENGTHS:
            raise ConfigError(f"data.task.lengths={lengths!r} is not one of {LENGTHS}")
        self.lengths = lengths
        self.tokenizer_path = str(tokenizer)
        self.tokenizer = load_tokenizer_json(tokenizer)  # before GSMInfTask's checks, which count lengths
        super().__init__(**kwargs)
        self._vocab_size = max(self.tokenizer.get_vocab(with_added_tokens=True).values()) + 1
        # Words are joined by single spaces, so no word takes more tokens than it does alone.
        words = self.vocab.tokens[1:]
        self._word_tokens = {w: len(self._ids(" " + w)) for w in words}
        self._per_word = max(max(self._word_tokens.values()), max(len(self._ids(w)) for w in words))
        self._answer_bound = self._answer_statement_tokens()
        if lengths == "tokens" and self.context_tokens[0] < self._answer_bound:
            raise ConfigError(
                f"data.task.context_tokens={list(self.context_tokens)}: the answer's statements for ops up to "
                f"{self.ops[1]} can take {self._answer_bound} of this tokenizer's tokens, so the lower bound must "
                f"be >= {self._answer_bound} (or count words with data.task.lengths=words)"
            )

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def length(self, words: list[str]) -> int:
        """Tokens of ``words`` with a space before each (``lengths=tokens``), else one per word."""
        if self.lengths == "words":
            return len(words)
        return sum(self._word_tokens.get(w) or len(self._ids(" " + w)) for w in words)

    def _answer_statement_tokens(self) -> int:
        """The most :meth:`length` the answer's own statements can take (``ops`` operations on up to two
        quantities, ``ops + 1`` constants): what :class:`GSMInfTask` checks in words, in this unit."""
        quantity = max(self.length(quantity_words(q)) for pool in self.pools.values() for q in pool)
        value = max(self.length([str(v)]) for v in range(self.num_values))
        op = max(self.length([OPERATOR_WORDS[o]]) for o in self.operators)
        equals, stop = self.length(["equals"]), self.length(["."])
        operation = quantity + equals + op + stop + max(2 * quantity, quantity + value)
        constant = quantity + equals + value + stop
        return self.ops[1] * operation + (self.ops[1] + 1) * constant

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def max_length(self) -> int:
        """A bound on every sample: the question, context and answer in words, each word at its most tokens
        (the context holds at most ``context_tokens[1]`` words, or the answer's statements where they are
        longer)."""
        answer_digits = len(str(self.num_values - 1))
        context = max(self.context_tokens[1], self._answer_bound)
        return (QUESTION_TOKENS + context + len(ANSWER_PROMPT) + answer_digits) * self._per_word

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
