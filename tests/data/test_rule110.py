"""Rule 110: answers re-derived by an independent simulator, the token layout, and `lmsleep export-data`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lmsleep.data import Rule110Task
from lmsleep.data.task import IGNORE_INDEX

# Rule 110 written out as its truth table (left, centre, right) -> new centre, not from the number 110.
TRUTH = {"111": 0, "110": 1, "101": 1, "100": 0, "011": 1, "010": 1, "001": 1, "000": 0}
TABLE = np.array([TRUTH[f"{n:03b}"] for n in range(8)])


def simulate(state: str, steps: int, periodic: bool = True) -> np.ndarray:
    """Roll a row of cells out ``steps`` steps with numpy (periodic boundary, or zeros outside)."""
    x = np.array([int(c) for c in state], dtype=np.int64)
    for _ in range(steps):
        left, right = np.roll(x, 1), np.roll(x, -1)
        if not periodic:
            left[0], right[-1] = 0, 0
        x = TABLE[4 * left + 2 * x + right]
    return x


def test_simulator_itself():
    # a single live cell grows to the left: 1, 11, 111, 1101, 11111, 110001
    rows = ["".join(map(str, simulate("0000000001", t))) for t in range(6)]
    assert rows == ["0000000001", "0000000011", "0000000111", "0000001101", "0000011111", "0000110001"]
    # periodic: the live cell at position 0 has the last cell as its left neighbour
    assert "".join(map(str, simulate("10000", 1))) == "10001"
    assert "".join(map(str, simulate("10000", 1, periodic=False))) == "10000"


# (width W, num_states, steps, window L): W = L, W < L (one padded window a state), W > L (two windows a state)
SHAPES = [
    (8, 4, 1, None),
    (6, 3, [0, 5], None),
    (5, 2, [2, 7], 4),
    (3, 2, [0, 3], 3),
    (7, 4, [1, 3], 16),
    (24, 4, 32, 24),
]


@pytest.mark.parametrize(("width", "num_states", "steps", "window"), SHAPES)
def test_answers_match_an_independent_simulator(width, num_states, steps, window):
    task = Rule110Task(width=width, num_states=num_states, steps=steps, window=window, seed=3)
    lo, hi = (steps, steps) if isinstance(steps, int) else steps
    seen_steps, boundary_matters = set(), 0
    for split in ("train", "val", "test"):
        for index in range(25):
            s = task.export(split, index)
            assert len(s["states"]) == num_states
            assert all(len(st) == width and set(st) <= {"0", "1"} for st in s["states"])
            assert lo <= s["steps"] <= hi and s["depth"] == s["steps"]
            expected = [int(simulate(st, s["steps"])[0]) for st in s["states"]]
            assert s["answer"] == expected, (s["states"], s["steps"])
            seen_steps.add(s["steps"])
            boundary_matters += any(
                int(simulate(st, s["steps"], periodic=False)[0]) != a
                for st, a in zip(s["states"], s["answer"], strict=True)
            )
    assert seen_steps == set(range(lo, hi + 1)) or hi - lo > 10  # the whole range is drawn
    if hi > 0:
        assert boundary_matters > 0  # the samples tell a periodic boundary from a zero boundary


@pytest.mark.parametrize(("width", "num_states", "steps", "window"), SHAPES)
def test_token_layout(width, num_states, steps, window):
    task = Rule110Task(width=width, num_states=num_states, steps=steps, window=window, seed=1)
    L = width if window is None else window
    span = math.ceil(width / L) * L
    assert task.max_length == num_states * span + 1 + num_states
    for index in range(10):
        s = task.export("train", index)
        tokens = s["text"].split()
        ids, labels = s["input_ids"], s["labels"]
        assert len(tokens) == len(ids) == len(labels) == task.max_length
        assert task.vocab.encode(tokens) == ids  # text decodes the ids, token by token
        for i, state in enumerate(s["states"]):
            start = i * span
            assert start % L == 0  # every state starts a window
            assert tokens[start : start + width] == list(state)
            assert tokens[start + width : start + span] == ["<pad>"] * (span - width)
            assert all(ids[p] == task.vocab.pad_id for p in range(start + width, start + span))
        q = num_states * span
        assert tokens[q] == f"t={s['steps']}"
        assert tokens[q + 1 :] == [f"Q{i}" for i in range(num_states)]
        # labels only at the query positions, each the answer bit's token
        assert labels[: q + 1] == [IGNORE_INDEX] * (q + 1)
        assert [task.vocab.tokens[y] for y in labels[q + 1 :]] == [str(a) for a in s["answer"]]


def test_t_zero_asks_for_the_first_bit():
    task = Rule110Task(width=6, num_states=4, steps=0)
    for index in range(20):
        s = task.sample("test", index)
        assert s["answer"] == [int(st[0]) for st in s["states"]]


def test_vocabulary():
    task = Rule110Task(width=8, num_states=3, steps=[2, 4])
    assert task.vocab.tokens == ["<pad>", "0", "1", "t=2", "t=3", "t=4", "Q0", "Q1", "Q2"]
    assert task.vocab_size == 9 and task.depths == [2, 3, 4] and task.depth_name == "t"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(width=2), r"W=2 .*W >= 3"),
        (dict(width=0), r"W=0 .*W >= 3"),
        (dict(steps=-1), r"t=.*-1.*>= 0"),
        (dict(steps=[-2, 3]), r"t=.*-2.*>= 0"),
        (dict(window=0), r"window L must be >= 1.*got 0"),
        (dict(num_states=0), r"num_states=0 must be >= 1"),
        (dict(steps=[5, 2]), r"lo <= hi.*\[5, 2\]"),
    ],
)
def test_impossible_sizes_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Rule110Task(**kwargs)


def test_a_problem_space_too_small_for_disjoint_splits_is_reported():
    """W = 3, one state, t = 0: eight problems in all, too few for every split to get one."""
    task = Rule110Task(width=3, num_states=1, steps=0)
    splits = {task.split_of({"states": [f"{n:03b}"], "steps": 0}) for n in range(8)}
    empty = sorted({"train", "val", "test"} - splits)
    assert empty, "every split got a problem; choose a smaller space for this test"
    with pytest.raises(ValueError, match=f"no problem for split '{empty[0]}'.*too small"):
        task.sample(empty[0], 0)


# --- lmsleep export-data ------------------------------------------------------------------------------------
FIELDS = {"states", "steps", "answer", "input_ids", "labels", "text", "depth", "split", "index"}


def check_record(record: dict, width: int, steps: tuple[int, int]) -> None:
    assert FIELDS <= set(record)
    assert all(isinstance(st, str) and len(st) == width and set(st) <= {"0", "1"} for st in record["states"])
    assert steps[0] <= record["steps"] <= steps[1]
    assert record["answer"] == [int(simulate(st, record["steps"])[0]) for st in record["states"]]
    assert len(record["input_ids"]) == len(record["labels"]) == len(record["text"].split())
    assert sum(y != IGNORE_INDEX for y in record["labels"]) == len(record["states"])
    assert record["labels"][0] == IGNORE_INDEX


def test_export_data_to_a_file(cli, tmp_path):
    out = tmp_path / "sub" / "val.jsonl"
    result = cli(
        "export-data", "data=rule110", "split=val", "n=12", "start=5", "seed=7",
        "data.task.width=6", "data.task.num_states=3", "data.task.steps=[0,4]", f"out={out}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == ""
    assert f"wrote 12 val samples of Rule110Task to {out}" in result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(5, 17))
    assert {r["split"] for r in records} == {"val"}
    for r in records:
        check_record(r, width=6, steps=(0, 4))
    # the same records as the task built in process (generation is a function of seed, split, index)
    task = Rule110Task(width=6, num_states=3, steps=[0, 4], seed=7)
    assert records == [task.export("val", i) for i in range(5, 17)]
    # nothing but the file is written: no run folder, no log file
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["sub", "sub/val.jsonl"]


def test_export_data_to_stdout(cli, tmp_path):
    result = cli("export-data", "data=rule110", "n=3", "out=-", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 3  # only JSON lines on stdout
    records = [json.loads(line) for line in lines]
    for r in records:
        check_record(r, width=8, steps=(1, 1))
    assert [r["split"] for r in records] == ["test"] * 3
    assert records == [
        Rule110Task(width=8, num_states=4, steps=1, seed=0).export("test", i) for i in range(3)
    ]
    assert list(tmp_path.iterdir()) == []
