"""Depo: answers re-derived by walking the cycle from the exported edges and from the token sequence."""

from __future__ import annotations

import pytest

from lmsleep.data.depo import DepoTask

PAPER = dict(
    min_nodes=10,
    max_nodes=75,
    tokens_per_node=2,
    node_vocab=50,
    edge_separator=False,
    context_tokens=300,
    num_queries=10,
    query_tokens=60,
    hops=[1, 16],
    window=75,
)


def successor_map(edges: list[list[str]]) -> dict[str, str]:
    succ = {}
    for source, target in edges:
        assert source not in succ, f"node {source} has two outgoing edges"
        succ[source] = target
    return succ


def assert_single_cycle(edges: list[list[str]]) -> None:
    succ = successor_map(edges)
    assert sorted(succ) == sorted(succ.values()), "every node must have exactly one edge in and one out"
    start = edges[0][0]
    node, seen = succ[start], 1
    while node != start:
        node, seen = succ[node], seen + 1
        assert seen <= len(succ)
    assert seen == len(succ), "the edges form more than one cycle"


def walk(succ: dict[str, str], start: str, hops: int) -> str:
    for _ in range(hops):
        start = succ[start]
    return start


def parse_text(
    task: DepoTask, text: str, labels: list[int]
) -> tuple[list[list[str]], list[tuple[int, str]], list[str]]:
    """Edges, queries (hops, start) and labelled answers read back from the decoded tokens."""
    tokens = text.split()
    p = task.tokens_per_node
    context = [t for t in tokens[: task.context_tokens] if t not in ("<pad>", ",")]
    edges = [
        ["".join(context[i : i + p]), "".join(context[i + p : i + 2 * p])]
        for i in range(0, len(context), 2 * p)
    ]
    queries, answers = [], []
    rest = tokens[task.context_tokens :]
    span = 2 * p + 2
    for q in range(0, len(rest), span):
        block = rest[q : q + span]
        assert block[0].startswith("k=") and block[p + 1] == "?"
        queries.append((int(block[0][2:]), "".join(block[1 : p + 1])))
        # The label at "?" and at every answer token but the last spell the answer, next-token style.
        at = task.context_tokens + q + p + 1
        answers.append("".join(task.vocab.tokens[i] for i in labels[at : at + p]))
        assert labels[at + p] == -100 and block[p + 2 :] == list(
            task.vocab.tokens[i] for i in labels[at : at + p]
        )
    return edges, queries, answers


def check_sample(task: DepoTask, split: str, index: int) -> dict:
    s = task.export(split, index)
    assert len(s["input_ids"]) == len(s["labels"]) <= task.max_length
    assert len(s["edges"]) <= task.max_nodes and len(s["edges"]) >= task.min_nodes
    assert_single_cycle(s["edges"])
    succ = successor_map(s["edges"])
    assert len(s["queries"]) == task.num_queries
    assert len({q["start"] for q in s["queries"]}) == task.num_queries
    for q in s["queries"]:
        assert task.hops[0] <= q["hops"] <= task.hops[1]
        assert q["answer"] == walk(succ, q["start"], q["hops"])
    assert s["depth"] == max(q["hops"] for q in s["queries"])
    if task.hops_per == "sample":
        assert len({q["hops"] for q in s["queries"]}) == 1
    # each labelled position carries its own query's hop count, in query order
    labelled = [d for d, label in zip(s["answer_depth"], s["labels"], strict=True) if label != -100]
    assert labelled == [q["hops"] for q in s["queries"] for _ in range(task.tokens_per_node)]
    # The same problem read back from the token sequence alone.
    edges, queries, answers = parse_text(task, s["text"], s["labels"])
    assert edges == s["edges"]
    assert queries == [(q["hops"], q["start"]) for q in s["queries"]]
    assert answers == [walk(succ, start, hops) for hops, start in queries]
    padding = task.context_tokens - len(s["edges"]) * task.edge_tokens
    assert (
        s["input_ids"][:padding] == [task.vocab.pad_id] * padding
        and task.vocab.pad_id not in s["input_ids"][padding:]
    )
    assert sum(label != -100 for label in s["labels"]) == task.num_queries * task.tokens_per_node
    return s


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        dict(edge_separator=False),
        dict(tokens_per_node=1, node_vocab=20, context_tokens=40, num_queries=3, query_tokens=12),
        dict(hops_per="sample"),
    ],
)
def test_smoke_size_answers_and_layout(kwargs):
    task = DepoTask(**kwargs)
    samples = [check_sample(task, "train", i) for i in range(150)]
    assert {q["hops"] for s in samples for q in s["queries"]} == set(task.depths)
    mixed = sum(len({q["hops"] for q in s["queries"]}) > 1 for s in samples)
    assert (mixed > 30) if task.hops_per == "query" else (mixed == 0)


def test_paper_size_is_within_360_tokens():
    # Generation speed at this size is measured by benchmarks/data_generation.py, not asserted here.
    task = DepoTask(**PAPER)
    assert task.max_length == 360
    samples = [check_sample(task, "test", i) for i in range(20)]
    assert all(len(s["input_ids"]) == 360 for s in samples)


def test_deterministic_in_seed_split_index():
    a, b, c = DepoTask(seed=1), DepoTask(seed=1), DepoTask(seed=2)
    assert a.export("train", 7) == b.export("train", 7)
    assert a.sample("train", 7)["edges"] != c.sample("train", 7)["edges"]
    assert a.sample("train", 7)["edges"] != a.sample("train", 8)["edges"]


def test_splits_are_disjoint(disjoint_splits):
    task = DepoTask(min_nodes=2, max_nodes=4, num_queries=1, query_tokens=6, hops=[1, 2])
    disjoint_splits(task, 300)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(max_nodes=1, min_nodes=1), r"max_nodes=1 .*>= 2"),
        (dict(min_nodes=9, max_nodes=8), r"min_nodes=9 must be in \[2, max_nodes=8\]"),
        (dict(hops=[0, 3]), r"hops=\[0, 3\] must be >= 1"),
        (dict(hops_per="batch"), r"hops_per='batch' must be 'query' or 'sample'"),
        (dict(context_tokens=50), r"context_tokens=50 .* needs at least 60 tokens"),
        (dict(query_tokens=10), r"query_tokens=10 .* needs at least 12 tokens"),
        (dict(node_vocab=3), r"only 9 distinct node names, fewer than max_nodes=12"),
        (dict(node_vocab=300), r"node_vocab=300 must be in \[1, 260\]"),
        (dict(num_queries=5, query_tokens=30), r"min_nodes=4 is smaller than num_queries=5"),
        (dict(tokens_per_node=0), r"tokens_per_node=0 must be >= 1"),
    ],
)
def test_impossible_sizes_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DepoTask(**kwargs)
