"""GSM-Infinite style arithmetic word problems (docs/design.md#tasks): question first, long noisy context,
one answer.

Our own generator after GSM-Infinite's design. A problem is a *program*: statements that each define one
quantity of an entity hierarchy ("the number of adult lions in Riverside Zoo"), either as a constant or as
one arithmetic operation on two arguments (quantities or small integer literals)::

    const  the number of baby owls in Hillcrest Zoo equals 4 .
    add    the number of adult lions in Riverside Zoo equals the number of baby owls in Hillcrest Zoo plus 3 .
    sub    ... equals <arg> minus <arg> .        mul    ... equals <arg> times <arg> .

The question asks for one *target* quantity. Its *dependency closure* is the target's statement plus, recursively,
the statements of every quantity it names. ``ops`` is the number of non-``const`` statements in that closure
(each is one arithmetic operation, however many times its value is reused); the generator builds exactly
``ops`` of them, every one reachable from the target, with at most ``ops + 1`` constants. Distractor
statements (same templates and domain, each defining a fresh quantity, possibly in terms of any quantity defined
before it, the answer's included; nothing the answer needs depends on them) fill the context up to a length drawn from ``context_tokens``, and all
statements are shuffled. Values are ``0 .. num_values - 1`` (one token each): with ``modular`` the arithmetic
is modulo ``num_values`` (GSM-Infinite's "modulo 23" option); otherwise each operation and literal is chosen
so every intermediate stays in range. Literals are >= 1 (>= 2 for ``times``), so no step is vacuous.

Layout of one sample (no chain of thought; the label is at the final ``:``, every other label is -100)::

    what is the number of <target> ?  <statement> <statement> ... <statement>  answer :
    \\_____ question (11 tokens) ___/  \\_____ context, shuffled, <= context_tokens ____/  ^ label = answer

The context is at most 10 tokens (``MIN_STATEMENT_TOKENS - 1``) short of the drawn length: sentences are not
cut. GSM-Infinite's reverse ("unknown in the middle") problems are not generated. Paper size: ``ops=[1, 8]``, ``context_tokens=[2000, 3300]``, ``window=2000`` (512 with sliding eviction).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lmsleep.data.task import IGNORE_INDEX, Task, parse_range
from lmsleep.data.vocab import Vocab

PLACES = (
    "Riverside Hillcrest Oakwood Maple Cedar Willow Lakeside Pinecrest Brookfield Fairview "
    "Greenwood Ashford Elmwood Sunnyvale Westbrook Northgate Stonebridge Redwood Bayview Highland"
).split()


@dataclass(frozen=True)
class Domain:
    """An entity hierarchy: quantities are "<modifier> <noun> in <Place> <container>"."""

    modifiers: tuple[str, ...]
    nouns: tuple[str, ...]
    container: str

    def quantities(self) -> list[str]:
        return [
            f"{m} {n} in {p} {self.container}" for p in PLACES for m in self.modifiers for n in self.nouns
        ]

    def words(self) -> list[str]:
        return [*self.modifiers, *self.nouns, self.container]


DOMAINS: dict[str, Domain] = {
    "zoo": Domain(
        ("adult", "baby"),
        ("lions", "owls", "bears", "wolves", "zebras", "otters", "eagles", "foxes", "deer", "penguins"),
        "Zoo",
    ),
    "school": Domain(
        ("junior", "senior"),
        ("teachers", "tutors", "coaches", "librarians", "counselors", "nurses", "cooks", "janitors"),
        "School",
    ),
    "cinema": Domain(
        ("comedy", "drama", "horror", "action", "romance", "mystery", "western", "cartoon"),
        ("movies", "premieres"),
        "Cinema",
    ),
}
OPERATOR_WORDS = {"add": "plus", "sub": "minus", "mul": "times"}
STRUCTURE_WORDS = ["what", "is", "the", "number", "of", "in", "equals", "?", ".", "answer", ":"]

QUANTITY_TOKENS = 8  # "the number of <modifier> <noun> in <Place> <container>"
QUESTION_TOKENS = 2 + QUANTITY_TOKENS + 1  # what is <quantity> ?
ANSWER_PROMPT = ["answer", ":"]
MIN_STATEMENT_TOKENS = QUANTITY_TOKENS + 3  # <quantity> equals <int> .
ONE_REF_TOKENS = 2 * QUANTITY_TOKENS + 4  # <quantity> equals <quantity> <op> <int> .
TWO_REF_TOKENS = 3 * QUANTITY_TOKENS + 3  # <quantity> equals <quantity> <op> <quantity> .
DISTRACTOR_KINDS = [
    ("constant", MIN_STATEMENT_TOKENS),
    ("one_ref", ONE_REF_TOKENS),
    ("two_ref", TWO_REF_TOKENS),
]

Arg = str | int  # a quantity name or an integer literal
Program = list[dict[str, Any]]
Values = dict[str, int]


def quantity_words(name: str) -> list[str]:
    return ["the", "number", "of", *name.split()]


def statement_words(statement: dict[str, Any]) -> list[str]:
    """The sentence that defines one quantity."""

    def term(arg: Arg) -> list[str]:
        return [str(arg)] if isinstance(arg, int) else quantity_words(arg)

    args = statement["args"]
    body = (
        term(args[0])
        if statement["op"] == "const"
        else [*term(args[0]), OPERATOR_WORDS[statement["op"]], *term(args[1])]
    )
    return [*quantity_words(statement["name"]), "equals", *body, "."]


def apply_op(op: str, a: int, b: int, modulus: int | None) -> int:
    value = a + b if op == "add" else a - b if op == "sub" else a * b
    return value % modulus if modulus else value


class GSMInfTask(Task):
    """GSM-Infinite style problems with ``ops`` operations hidden in ``context_tokens`` of statements.

    Args:
        ops: arithmetic operations the answer depends on, an int or an inclusive range, drawn per sample.
        context_tokens: target context length in tokens, an int or an inclusive range, drawn per sample.
        num_values: values are ``0 .. num_values - 1``, each one token (the answer is one of them).
        modular: arithmetic modulo ``num_values``; otherwise operations keep every value in range.
        operators: which of ``add``, ``sub``, ``mul`` statements use (``sub`` is required without ``modular``).
        domains: entity hierarchies to draw from (one per sample): ``zoo``, ``school``, ``cinema``.
        window: window L.
        seed: generation seed.
    """

    name = "gsm_inf"
    depth_name = "ops"

    def __init__(
        self,
        ops: Any = (1, 4),
        context_tokens: Any = (176, 240),
        num_values: int = 23,
        modular: bool = True,
        operators: Any = ("add", "sub", "mul"),
        domains: Any = ("zoo", "school", "cinema"),
        window: int = 64,
        seed: int = 0,
    ):
        super().__init__(seed=seed, window=window)
        self.ops = parse_range(ops, "gsm_inf.ops")
        self.context_tokens = parse_range(context_tokens, "gsm_inf.context_tokens")
        if self.ops[0] < 1:
            raise ValueError(f"gsm_inf: ops={list(self.ops)} must be >= 1")
        if num_values < 2:
            raise ValueError(f"gsm_inf: num_values={num_values} must be >= 2")
        self.operators = tuple(operators)
        bad = [op for op in self.operators if op not in OPERATOR_WORDS]
        if bad or not self.operators:
            raise ValueError(
                f"gsm_inf: operators={list(self.operators)} must be a non-empty subset of {list(OPERATOR_WORDS)}"
            )
        if not modular and "sub" not in self.operators:
            raise ValueError(
                "gsm_inf: modular=False needs 'sub' in operators: without it two quantities can have no "
                f"operation whose result stays in [0, {num_values - 1}]"
            )
        self.domains = tuple(domains)
        bad = [d for d in self.domains if d not in DOMAINS]
        if bad or not self.domains:
            raise ValueError(
                f"gsm_inf: domains={list(self.domains)} must be a non-empty subset of {list(DOMAINS)}"
            )
        # Worst case of the answer's own statements: ops two-quantity operations and ops + 1 constants.
        needed = self.ops[1] * TWO_REF_TOKENS + (self.ops[1] + 1) * MIN_STATEMENT_TOKENS
        if self.context_tokens[0] < needed:
            raise ValueError(
                f"gsm_inf: context_tokens={list(self.context_tokens)} is too short for ops up to {self.ops[1]}; "
                f"the answer's statements can take {needed} tokens, so the lower bound must be >= {needed}"
            )
        self.pools = {d: DOMAINS[d].quantities() for d in self.domains}
        smallest = min(len(pool) for pool in self.pools.values())
        longest = smallest * MIN_STATEMENT_TOKENS
        if self.context_tokens[1] > longest:
            raise ValueError(
                f"gsm_inf: context_tokens up to {self.context_tokens[1]} could need more statements than the "
                f"{smallest} distinct quantities of a domain; the upper bound must be <= {longest}"
            )
        self.num_values = int(num_values)
        self.modulus = self.num_values if modular else None
        domain_words = [w for d in self.domains for w in DOMAINS[d].words()]
        words = STRUCTURE_WORDS + list(OPERATOR_WORDS.values()) + [str(v) for v in range(self.num_values)]
        self.vocab = Vocab(dict.fromkeys(words + PLACES + domain_words))

    @property
    def max_length(self) -> int:
        return QUESTION_TOKENS + self.context_tokens[1] + len(ANSWER_PROMPT)

    def length(self, words: list[str]) -> int:
        """What ``words`` take of ``context_tokens``: one token per word here (the task's own vocabulary);
        :class:`lmsleep.data.gsm_inf_text.GSMInfTextTask` counts a tokenizer's tokens instead."""
        return len(words)

    @property
    def depths(self) -> list[int]:
        return list(range(self.ops[0], self.ops[1] + 1))

    # --- values ---------------------------------------------------------------------------------------
    def _in_range(self, value: int) -> bool:
        return 0 <= value < self.num_values

    def _literals(self, op: str) -> range:
        # "plus 0", "minus 0" and "times 1" would be operations in name only.
        low = 2 if op == "mul" and self.num_values > 2 else 1
        return range(low, self.num_values)

    def _choose_operation(
        self, rng: random.Random, args: list[Arg | None], values: Values
    ) -> tuple[str, list[Arg]]:
        """Pick an operator and fill the literal slot (``None``) so the result is a valid value.

        With ``modular`` every choice is valid. Otherwise pick uniformly among the operators that fit in
        some argument order; ``sub`` with the larger argument first always fits, so one exists.
        """
        if self.modulus:
            op = rng.choice(self.operators)
            return op, [rng.choice(self._literals(op)) if a is None else a for a in args]
        for op in rng.sample(self.operators, len(self.operators)):  # the first that fits: uniform over those
            options = [(o, f) for o in (args, args[::-1]) if (f := self._fitting_literals(op, o, values))]
            if options:
                ordered, fitting = rng.choice(options)
                literal = rng.choice(fitting)
                return op, [literal if a is None else a for a in ordered]
        raise AssertionError("unreachable: sub of the larger minus the smaller always fits")

    def _fitting_literals(self, op: str, ordered: list[Arg | None], values: Values) -> Sequence[int | None]:
        """Literals that keep ``op`` over ``ordered`` in range without a modulus; ``[None]`` if there is no
        literal slot and the result fits. Computed in closed form: generation must stay fast at paper size."""
        top = self.num_values - 1
        if None not in ordered:
            a, b = (values[x] for x in ordered)
            return [None] if 0 <= apply_op(op, a, b, None) <= top else []
        ref = values[next(x for x in ordered if x is not None)]
        low = self._literals(op).start
        if op == "add":
            high = top - ref
        elif op == "mul":
            high = top // ref if ref else top
        elif ordered[0] is None:  # literal minus quantity
            low, high = max(low, ref), top
        else:  # quantity minus literal
            high = ref
        return range(low, high + 1)

    def _define(
        self, rng: random.Random, program: Program, values: Values, name: str, args: list[Arg | None]
    ) -> None:
        op, filled = self._choose_operation(rng, args, values)
        a, b = (x if isinstance(x, int) else values[x] for x in filled)
        values[name] = apply_op(op, a, b, self.modulus)
        program.append({"name": name, "op": op, "args": filled})

    def _constant(self, rng: random.Random, program: Program, values: Values, name: str) -> None:
        values[name] = rng.randrange(self.num_values)
        program.append({"name": name, "op": "const", "args": [values[name]]})

    # --- problem ------------------------------------------------------------------------------------
    def _answer_program(
        self, rng: random.Random, ops: int, names: list[str], program: Program, values: Values
    ) -> str:
        """Define exactly ``ops`` operations, all in the closure of the last one, which is returned."""
        unreferenced: list[str] = []  # operations no later operation uses yet
        closure: list[str] = []  # quantities already used, which a later operation may reuse (a DAG)
        for i in range(ops):
            remaining = ops - 1 - i
            # Each later operation can absorb at most one net unreferenced operation, so this one must take
            # enough now for the last operation to leave only itself unreferenced.
            take = rng.randint(max(0, len(unreferenced) - remaining), min(2, len(unreferenced)))
            args: list[Arg | None] = [unreferenced.pop(rng.randrange(len(unreferenced))) for _ in range(take)]
            while len(args) < 2:
                kind = rng.choices(["constant", "literal", "reuse"], weights=[5, 3, 1 if closure else 0])[0]
                if kind == "literal" and None not in args:
                    args.append(None)
                elif kind == "reuse" and (reusable := [q for q in closure if q not in args]):
                    # Never the same quantity twice in one operation: "x minus x" says nothing.
                    args.append(rng.choice(reusable))
                else:
                    leaf = names.pop()
                    self._constant(rng, program, values, leaf)
                    args.append(leaf)
            rng.shuffle(args)
            closure += [a for a in args if isinstance(a, str) and a not in closure]
            name = names.pop()
            self._define(rng, program, values, name, args)
            unreferenced.append(name)
        return name

    def _add_distractors(
        self, rng: random.Random, room: int, names: list[str], program: Program, values: Values
    ) -> None:
        """Fresh statements until less than the shortest one fits in ``room`` tokens (or names run out).

        A kind's size in words is a lower bound of its :meth:`length`; a statement longer than the room left
        (only where lengths count another tokenizer's tokens) is taken back and ends the context."""
        defined = list(values)
        while names and room >= MIN_STATEMENT_TOKENS:
            kind, _ = rng.choice([(k, s) for k, s in DISTRACTOR_KINDS if s <= room])
            name = names.pop()
            if kind == "constant":
                self._constant(rng, program, values, name)
            else:
                # The answer's program already defines >= 2 quantities, so two distinct ones exist.
                refs = rng.sample(defined, 1 if kind == "one_ref" else 2)
                args: list[Arg | None] = [refs[0], None if kind == "one_ref" else refs[1]]
                self._define(rng, program, values, name, args)
            size = self.length(statement_words(program[-1]))
            if size > room:
                program.pop()
                del values[name]
                return
            defined.append(name)
            room -= size

    def generate(self, rng: random.Random) -> dict[str, Any]:
        ops = rng.randint(*self.ops)
        length = rng.randint(*self.context_tokens)
        pool = self.pools[rng.choice(self.domains)]
        # Every statement takes >= MIN_STATEMENT_TOKENS of the context, so this many fresh names suffice
        # (__init__ checked the pool is large enough); they are popped from the end.
        names = rng.sample(pool, min(len(pool), length // MIN_STATEMENT_TOKENS))
        program: list[dict[str, Any]] = []
        values: dict[str, int] = {}
        target = self._answer_program(rng, ops, names, program, values)
        used = sum(self.length(statement_words(s)) for s in program)
        self._add_distractors(rng, length - used, names, program, values)
        rng.shuffle(program)
        context = " ".join(" ".join(statement_words(s)) for s in program)
        question = " ".join(["what", "is", *quantity_words(target), "?"])
        return {
            "question": question,
            "context": context,
            "answer": values[target],
            "ops": ops,
            "target": target,
            "program": program,
            "modulus": self.modulus,  # None: plain arithmetic, every value within range
        }

    def key(self, problem: dict[str, Any]) -> str:
        # Statement order does not change the problem: the sorted program and the target identify it.
        statements = sorted(
            f"{s['name']}={s['op']}({','.join(map(str, s['args']))})" for s in problem["program"]
        )
        return f"{problem['target']}|{';'.join(statements)}"

    def depth(self, problem: dict[str, Any]) -> int:
        return problem["ops"]

    def encode(self, problem: dict[str, Any]) -> tuple[list[int], list[int]]:
        tokens = problem["question"].split() + problem["context"].split() + ANSWER_PROMPT
        labels = [IGNORE_INDEX] * (len(tokens) - 1) + [self.vocab.id(str(problem["answer"]))]
        return self.vocab.encode(tokens), labels
