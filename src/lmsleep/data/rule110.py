"""Rule 110 rollout (docs/design.md#tasks): consolidate W-bit states, later answer where each one ends up.

Layout of one sample (``n`` states of width ``W``, window ``L``)::

    [state 0 bits, padded to a multiple of L] ... [state n-1 bits, padded]  [t=<t>] Q0 Q1 ... Q(n-1)
    \\____________ n context windows (no loss) ______________________/  \\____ answer window ______/

The label at ``Qi`` is bit 0 of state ``i`` after ``t`` steps of Rule 110 with a periodic boundary; every
other position has label -100. With ``W == L`` each state fills exactly one window, as in the paper
(W = L = 24, 4 states). The step token tells the model which ``t`` to roll out when ``t`` varies per sample.
"""

from __future__ import annotations

import math
import random
from typing import Any

from lmsleep.data.task import IGNORE_INDEX, Task, parse_range
from lmsleep.data.vocab import Vocab

# Rule 110: new cell = RULE110[(left << 2) | (centre << 1) | right]
RULE110 = tuple((110 >> n) & 1 for n in range(8))


def rule110_step(bits: list[int]) -> list[int]:
    """One synchronous update of a periodic row of cells."""
    w = len(bits)
    return [RULE110[(bits[i - 1] << 2) | (bits[i] << 1) | bits[(i + 1) % w]] for i in range(w)]


def rule110_rollout(bits: list[int], steps: int) -> list[int]:
    for _ in range(steps):
        bits = rule110_step(bits)
    return bits


class Rule110Task(Task):
    """Rule 110 with ``num_states`` random states of ``width`` bits, rolled out ``steps`` steps.

    Args:
        width: state width W (>= 3: a cell needs two neighbours).
        num_states: number of independent states (and query tokens).
        steps: rollout steps t, an int or an inclusive range ``[lo, hi]`` drawn uniformly per sample.
        window: window L; each state is padded to a multiple of L so it starts on a window boundary.
        seed: generation seed.
    """

    name = "rule110"
    depth_name = "t"

    def __init__(
        self, width: int = 8, num_states: int = 4, steps: Any = 1, window: int | None = None, seed: int = 0
    ):
        if width < 3:  # before the window check: the window defaults to (and in configs follows) the width
            raise ValueError(f"rule110: state width W={width} is too small; Rule 110 needs W >= 3")
        window = width if window is None else window
        super().__init__(seed=seed, window=window)
        if num_states < 1:
            raise ValueError(f"rule110: num_states={num_states} must be >= 1")
        self.width = int(width)
        self.num_states = int(num_states)
        self.steps = parse_range(steps, "rule110.steps")
        if self.steps[0] < 0:
            raise ValueError(f"rule110: steps t={self.steps} must be >= 0 (t = 0 asks for the state itself)")
        self.state_span = math.ceil(self.width / self.window) * self.window
        self.vocab = Vocab(
            ["0", "1"]
            + [f"t={t}" for t in range(self.steps[0], self.steps[1] + 1)]
            + [f"Q{i}" for i in range(self.num_states)]
        )

    @property
    def max_length(self) -> int:
        return self.num_states * self.state_span + 1 + self.num_states

    @property
    def depths(self) -> list[int]:
        return list(range(self.steps[0], self.steps[1] + 1))

    def generate(self, rng: random.Random) -> dict[str, Any]:
        states = ["".join(rng.choice("01") for _ in range(self.width)) for _ in range(self.num_states)]
        steps = rng.randint(*self.steps)
        answer = [rule110_rollout([int(c) for c in s], steps)[0] for s in states]
        return {"states": states, "steps": steps, "answer": answer}

    def key(self, problem: dict[str, Any]) -> str:
        return f"{','.join(problem['states'])}|{problem['steps']}"

    def depth(self, problem: dict[str, Any]) -> int:
        return problem["steps"]

    def encode(self, problem: dict[str, Any]) -> tuple[list[int], list[int]]:
        tokens: list[str] = []
        for state in problem["states"]:
            tokens += list(state)
            tokens += ["<pad>"] * (self.state_span - self.width)
        tokens.append(f"t={problem['steps']}")
        tokens += [f"Q{i}" for i in range(self.num_states)]
        labels = [IGNORE_INDEX] * (len(tokens) - self.num_states)
        labels += [self.vocab.id(str(bit)) for bit in problem["answer"]]
        return self.vocab.encode(tokens), labels
