"""Depo: k-hop retrieval on one shuffled directed cycle (docs/design.md#tasks; Physics of Language Models,
Part 4.1).

A sample is one directed cycle of ``n`` nodes (``n`` uniform in ``[min_nodes, max_nodes]``) presented as its
``n`` edges in random order, then ``num_queries`` questions "which node is ``k`` hops after ``x``?". As in the
paper's example ("1 hop after a" and "4 hops after e" in one sample), every query draws its own ``k``
(uniform in ``hops``; ``hops_per="query"``), and per-depth metrics bucket each query's answer by its own
``k``; the sample's depth is its largest ``k``. ``hops_per="sample"`` draws one ``k`` for all queries.

A node name is ``tokens_per_node`` tokens from a node alphabet of ``node_vocab`` short letter-digit tokens
(``a0 .. a9 b0 .. b9 ...``); the name as a string is its tokens concatenated (``b3c1``). Layout of one sample
(``P = tokens_per_node``, optional ``,`` after each edge when ``edge_separator`` is set)::

    <pad> ... <pad>  x_1 .. x_P y_1 .. y_P [,]  ...  |  k=K s_1 .. s_P ? a_1 .. a_P   ...  (num_queries times)
    \\___ context: exactly context_tokens, left-padded ___/  \\______ query part: at most query_tokens ______/

The edge ``x -> y`` is the tokens of ``x`` followed by the tokens of ``y``. In a query, ``s`` is the start node
and ``a`` the node ``K`` hops after it. The answer is predicted next-token style from the model's outputs:
the label at ``?`` is ``a_1``, the label at ``a_i`` is ``a_(i+1)``; every other label is -100. The answer tokens
of earlier queries are part of the input of later ones (as in the original task); start nodes are distinct
within a sample, so an earlier answer never gives away a later one by repetition.

Paper size: ``max_nodes=75``, ``context_tokens=300``, ``num_queries=10``, ``query_tokens=60``, ``hops=[1, 16]``,
``window=75``, ``edge_separator=False`` (T = 360: four context windows and one query window). With
``tokens_per_node=2`` and no separator an edge is 4 tokens, so 75 edges fill the 300 context tokens and 10 queries take 6 tokens each.
Hops may exceed ``n``: the walk wraps around the cycle.
"""

from __future__ import annotations

import random
import string
from typing import Any

from lmsleep.data.task import IGNORE_INDEX, Task, parse_range
from lmsleep.data.vocab import PAD, Vocab

# Node tokens are a letter and a digit (a0 .. z9): short, readable, and of fixed width 2 so a node name's
# string form splits back into its tokens unambiguously.
MAX_NODE_VOCAB = 26 * 10
EDGE_SEPARATOR = ","
QUERY_MARK = "?"


def node_token(i: int) -> str:
    """The ``i``-th node token: ``a0 .. a9 b0 .. b9 ... z9``."""
    return f"{string.ascii_lowercase[i // 10]}{i % 10}"


def hop_token(k: int) -> str:
    return f"k={k}"


def split_node_name(name: str) -> list[str]:
    """The tokens of a node name (every node token is two characters)."""
    return [name[i : i + 2] for i in range(0, len(name), 2)]


def walk_cycle(successor: dict[str, str], start: str, hops: int) -> str:
    node = start
    for _ in range(hops):
        node = successor[node]
    return node


class DepoTask(Task):
    """Depo with cycles of ``min_nodes..max_nodes`` nodes and ``num_queries`` k-hop queries per sample.

    Args:
        min_nodes, max_nodes: inclusive range of the cycle size n, drawn uniformly per sample.
        tokens_per_node: tokens in a node name (P).
        node_vocab: size of the node-token alphabet (<= 260); it must offer ``node_vocab ** P >= max_nodes`` names.
        edge_separator: end every edge with a ``,`` token.
        context_tokens: length of the left-padded edge list; must hold ``max_nodes`` edges.
        num_queries: queries per sample, with distinct start nodes (so ``min_nodes >= num_queries``).
        query_tokens: bound on the query part; must hold ``num_queries * (2 P + 2)`` tokens.
        hops: hop count k, an int or an inclusive range ``[lo, hi]``.
        hops_per: ``query`` (each query draws its own k, the paper) or ``sample`` (one k for all queries).
        window: window L.
        seed: generation seed.
    """

    name = "depo"
    depth_name = "k"

    def __init__(
        self,
        min_nodes: int = 4,
        max_nodes: int = 12,
        tokens_per_node: int = 2,
        node_vocab: int = 26,
        edge_separator: bool = True,
        context_tokens: int = 64,
        num_queries: int = 2,
        query_tokens: int = 16,
        hops: Any = (1, 4),
        hops_per: str = "query",
        window: int = 16,
        seed: int = 0,
    ):
        super().__init__(seed=seed, window=window)
        if hops_per not in ("query", "sample"):
            raise ValueError(f"depo: hops_per={hops_per!r} must be 'query' or 'sample'")
        self.hops_per = hops_per
        if max_nodes < 2:
            raise ValueError(f"depo: max_nodes={max_nodes} is too small; a cycle needs max_nodes >= 2")
        if not 2 <= min_nodes <= max_nodes:
            raise ValueError(f"depo: min_nodes={min_nodes} must be in [2, max_nodes={max_nodes}]")
        if tokens_per_node < 1:
            raise ValueError(f"depo: tokens_per_node={tokens_per_node} must be >= 1")
        if not 1 <= node_vocab <= MAX_NODE_VOCAB:
            raise ValueError(f"depo: node_vocab={node_vocab} must be in [1, {MAX_NODE_VOCAB}]")
        if node_vocab**tokens_per_node < max_nodes:
            raise ValueError(
                f"depo: node_vocab={node_vocab} with tokens_per_node={tokens_per_node} gives only "
                f"{node_vocab**tokens_per_node} distinct node names, fewer than max_nodes={max_nodes}"
            )
        if num_queries < 1:
            raise ValueError(f"depo: num_queries={num_queries} must be >= 1")
        if min_nodes < num_queries:
            raise ValueError(
                f"depo: min_nodes={min_nodes} is smaller than num_queries={num_queries}; queries start at "
                "distinct nodes, so every cycle needs at least num_queries nodes"
            )
        self.hops = parse_range(hops, "depo.hops")
        if self.hops[0] < 1:
            raise ValueError(f"depo: hops={list(self.hops)} must be >= 1")
        self.min_nodes, self.max_nodes = int(min_nodes), int(max_nodes)
        self.tokens_per_node = int(tokens_per_node)
        self.node_vocab = int(node_vocab)
        self.edge_separator = bool(edge_separator)
        self.num_queries = int(num_queries)
        self.edge_tokens = 2 * self.tokens_per_node + int(self.edge_separator)
        self.query_span = 2 * self.tokens_per_node + 2  # hop token, start, "?", answer
        needed_context = self.max_nodes * self.edge_tokens
        if context_tokens < needed_context:
            raise ValueError(
                f"depo: context_tokens={context_tokens} cannot hold max_nodes={max_nodes} edges of "
                f"{self.edge_tokens} tokens; it needs at least {needed_context} tokens"
            )
        needed_queries = self.num_queries * self.query_span
        if query_tokens < needed_queries:
            raise ValueError(
                f"depo: query_tokens={query_tokens} cannot hold num_queries={num_queries} queries of "
                f"{self.query_span} tokens; it needs at least {needed_queries} tokens"
            )
        self.context_tokens = int(context_tokens)
        self.query_tokens = int(query_tokens)
        self.node_tokens = [node_token(i) for i in range(self.node_vocab)]
        self.vocab = Vocab(
            self.node_tokens
            + [hop_token(k) for k in range(self.hops[0], self.hops[1] + 1)]
            + [QUERY_MARK, EDGE_SEPARATOR]
        )

    @property
    def max_length(self) -> int:
        return self.context_tokens + self.query_tokens

    @property
    def depths(self) -> list[int]:
        return list(range(self.hops[0], self.hops[1] + 1))

    def _draw_names(self, rng: random.Random, n: int) -> list[str]:
        # Rejection from the name space is fast: it holds at least max_nodes names and usually far more.
        names: set[str] = set()
        ordered: list[str] = []
        while len(ordered) < n:
            name = "".join(rng.choice(self.node_tokens) for _ in range(self.tokens_per_node))
            if name not in names:
                names.add(name)
                ordered.append(name)
        return ordered

    def generate(self, rng: random.Random) -> dict[str, Any]:
        n = rng.randint(self.min_nodes, self.max_nodes)
        cycle = self._draw_names(rng, n)  # cycle[i] -> cycle[i + 1], in a random order of names
        edges = [[cycle[i], cycle[(i + 1) % n]] for i in range(n)]
        rng.shuffle(edges)
        shared = rng.randint(*self.hops) if self.hops_per == "sample" else None
        successor = dict(map(tuple, edges))
        starts = rng.sample(cycle, self.num_queries)
        hops = [rng.randint(*self.hops) if shared is None else shared for _ in starts]
        queries = [
            {"start": s, "hops": k, "answer": walk_cycle(successor, s, k)}
            for s, k in zip(starts, hops, strict=True)
        ]
        return {"edges": edges, "queries": queries}

    def key(self, problem: dict[str, Any]) -> str:
        # The cycle (edge order does not change the problem) and the ordered queries with their hops.
        cycle = ",".join(sorted(f"{x}>{y}" for x, y in problem["edges"]))
        queries = ",".join(f"{q['start']}+{q['hops']}" for q in problem["queries"])
        return f"{cycle}|{queries}"

    def depth(self, problem: dict[str, Any]) -> int:
        """The largest hop count of the sample's queries."""
        return max(q["hops"] for q in problem["queries"])

    def answer_depths(self, problem: dict[str, Any], labels: list[int]) -> list[int]:
        """Each labelled position gets the hop count of its query (queries come in order)."""
        depths, hops = [], iter(q["hops"] for q in problem["queries"])
        current, in_answer = 0, False
        for label in labels:
            labelled = label != IGNORE_INDEX
            if labelled and not in_answer:  # the first answer position of the next query
                current = next(hops)
            in_answer = labelled
            depths.append(current if labelled else 0)
        return depths

    def encode(self, problem: dict[str, Any]) -> tuple[list[int], list[int]]:
        context: list[str] = []
        for source, target in problem["edges"]:
            context += split_node_name(source) + split_node_name(target)
            if self.edge_separator:
                context.append(EDGE_SEPARATOR)
        tokens = [PAD] * (self.context_tokens - len(context)) + context
        labels = [IGNORE_INDEX] * len(tokens)
        for query in problem["queries"]:
            answer = split_node_name(query["answer"])
            tokens += [hop_token(query["hops"]), *split_node_name(query["start"]), QUERY_MARK]
            # Output at "?" predicts the first answer token, output at each answer token the next one.
            labels += [IGNORE_INDEX] * (1 + self.tokens_per_node) + [self.vocab.id(a) for a in answer]
            tokens += answer
            labels.append(IGNORE_INDEX)
        return self.vocab.encode(tokens), labels
