"""GSM-Infinite style task: answers re-derived by evaluating the exported program and by parsing the text."""

from __future__ import annotations

import pytest

from lmsleep.data.gsm_inf import GSMInfTask

PAPER = dict(ops=[1, 8], context_tokens=[2000, 3300], window=2000)
OPERATOR_WORDS = {"plus": "add", "minus": "sub", "times": "mul"}


def evaluate(program: list[dict], name: str, modulus: int | None, num_values: int) -> int:
    """Value of ``name``; fails on an undefined name, a cycle, or (without modulus) an out-of-range value."""
    by_name = {s["name"]: s for s in program}
    assert len(by_name) == len(program), "a quantity is defined twice"
    cache: dict[str, int] = {}

    def value(n: str, visiting: frozenset) -> int:
        assert n not in visiting, f"cyclic definition through {n}"
        if n in cache:
            return cache[n]
        st = by_name[n]
        args = [a if isinstance(a, int) else value(a, visiting | {n}) for a in st["args"]]
        if st["op"] == "const":
            (v,) = args
        else:
            a, b = args
            v = {"add": a + b, "sub": a - b, "mul": a * b}[st["op"]]
        v = v % modulus if modulus else v
        assert 0 <= v < num_values, f"{n} = {v} is out of range"
        cache[n] = v
        return v

    return value(name, frozenset())


def dependency_closure(program: list[dict], name: str) -> set[str]:
    by_name = {s["name"]: s for s in program}
    closure, stack = set(), [name]
    while stack:
        n = stack.pop()
        if n not in closure:
            closure.add(n)
            stack += [a for a in by_name[n]["args"] if isinstance(a, str)]
    return closure


def operations_in_closure(program: list[dict], name: str) -> int:
    by_name = {s["name"]: s for s in program}
    return sum(by_name[n]["op"] != "const" for n in dependency_closure(program, name))


def parse_text(text: str) -> tuple[str, list[dict]]:
    """The target and the program, read back from the decoded sample alone."""
    words = text.split()
    assert words[:5] == ["what", "is", "the", "number", "of"] and words[-2:] == ["answer", ":"]
    q_end = words.index("?")
    target = " ".join(words[5:q_end])
    program = []
    for sentence in " ".join(words[q_end + 1 : -2]).split(" . "):
        sentence = sentence.removesuffix(" .")
        lhs, rhs = sentence.split(" equals ")
        assert lhs.startswith("the number of ")
        terms, op = [rhs], "const"
        for word, name in OPERATOR_WORDS.items():
            if f" {word} " in rhs:
                terms, op = rhs.split(f" {word} "), name
        args = [int(t) if t.isdigit() else t.removeprefix("the number of ") for t in terms]
        program.append({"name": lhs.removeprefix("the number of "), "op": op, "args": args})
    return target, program


def check_sample(task: GSMInfTask, split: str, index: int) -> dict:
    s = task.export(split, index)
    ids, labels = s["input_ids"], s["labels"]
    assert len(ids) == len(labels) <= task.max_length
    assert [i for i, label in enumerate(labels) if label != -100] == [len(ids) - 1]
    answer = int(task.vocab.tokens[labels[-1]])
    # The sample states its own modulus (null when not modular), so it can be checked on its own.
    modulus = s["modulus"]
    assert modulus == (task.num_values if task.modulus else None)
    # The exported program, evaluated independently, gives the exported and the labelled answer.
    assert evaluate(s["program"], s["target"], modulus, task.num_values) == s["answer"] == answer
    assert operations_in_closure(s["program"], s["target"]) == s["ops"] == s["depth"]
    for st in s["program"]:  # every quantity is well defined and no literal step is vacuous
        evaluate(s["program"], st["name"], modulus, task.num_values)
        quantities = [a for a in st["args"] if isinstance(a, str)]
        assert len(set(quantities)) == len(quantities), f"{st} uses a quantity twice"
        for a in st["args"]:
            if isinstance(a, int) and st["op"] != "const":
                assert a >= (2 if st["op"] == "mul" and task.num_values > 2 else 1)
    # The text alone: the question comes first, and its program gives the same answer.
    target, program = parse_text(s["text"])
    assert target == s["target"] and program == s["program"]
    assert evaluate(program, target, modulus, task.num_values) == answer
    assert s["text"] == f"{s['question']} {s['context']} answer :"
    first_statement = s["text"].split().index("equals")
    assert s["text"].split().index("?") < first_statement
    context = len(s["context"].split())
    assert task.context_tokens[0] - 10 <= context <= task.context_tokens[1]
    return s


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        dict(modular=False),
        dict(ops=[2, 3], context_tokens=[128, 150], operators=["sub"], num_values=5, modular=False),
    ],
)
def test_smoke_size_answers_ops_and_layout(kwargs):
    task = GSMInfTask(**kwargs)
    samples = [check_sample(task, "train", i) for i in range(120)]
    assert {s["depth"] for s in samples} == set(task.depths)
    # Distractors are present: most programs define more quantities than the answer needs.
    distracted = [len(s["program"]) > len(dependency_closure(s["program"], s["target"])) for s in samples]
    assert sum(distracted) > len(samples) // 2


def test_paper_size_is_long_enough():
    # Generation speed at this size is measured by benchmarks/data_generation.py, not asserted here.
    for modular in (True, False):
        task = GSMInfTask(**PAPER, modular=modular)
        assert task.max_length == 11 + 3300 + 2
        for split in ("train", "test"):
            samples = [task.sample(split, i) for i in range(10)]
            assert all(1 <= s["ops"] <= 8 for s in samples)
        for i in range(2):
            s = check_sample(task, "test", i)
            assert 1990 <= len(s["context"].split()) <= 3300 and len(s["input_ids"]) <= task.max_length


def test_deterministic_in_seed_split_index():
    a, b, c = GSMInfTask(seed=3), GSMInfTask(seed=3), GSMInfTask(seed=4)
    assert a.export("val", 5) == b.export("val", 5)
    assert a.sample("val", 5)["context"] != c.sample("val", 5)["context"]
    assert a.sample("val", 5)["context"] != a.sample("val", 6)["context"]


def test_splits_are_disjoint(disjoint_splits):
    task = GSMInfTask(ops=1, context_tokens=[49, 60], num_values=5, domains=["cinema"])
    disjoint_splits(task, 200)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(ops=[0, 2]), r"ops=\[0, 2\] must be >= 1"),
        (dict(ops=[1, 8]), r"too short for ops up to 8; .* lower bound must be >= 315"),
        (dict(context_tokens=[200, 4000]), r"upper bound must be <= 3520"),
        (dict(num_values=1), r"num_values=1 must be >= 2"),
        (dict(modular=False, operators=["add", "mul"]), r"modular=False needs 'sub'"),
        (dict(operators=["div"]), r"operators=\['div'\] must be a non-empty subset"),
        (dict(domains=["farm"]), r"domains=\['farm'\] must be a non-empty subset"),
        (dict(context_tokens=[300, 200]), r"inclusive range"),
    ],
)
def test_impossible_sizes_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GSMInfTask(**kwargs)
