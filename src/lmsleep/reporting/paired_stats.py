"""Paired statistics of a study against a named baseline (``lmsleep report ... baseline=LABEL``).

Runs of two configurations that share a seed are a pair: the same data order and the same initial weights
where the models have the same shape. For each configuration that shares seeds with the baseline, and for
each final test metric both logged, this gives:

- the per-seed differences ``configuration - baseline`` of the metric's final value;
- how many pairs favour each side (higher is better for accuracies, lower for losses and bits), and ties;
- the two-sided exact sign test: under "no difference" each untied pair favours either side with
  probability 1/2, so with ``n`` untied pairs of which ``k`` favour the less frequent side,
  ``p = min(1, 2 * sum_{i <= k} C(n, i) / 2**n)`` (ties are left out; no untied pair gives ``p = 1``);
- a bootstrap interval of the mean difference: ``resamples`` means of ``n`` differences drawn with
  replacement, by a generator seeded with ``seed``, and their ``(1 - level) / 2`` and ``(1 + level) / 2``
  quantiles (the sorted means at indices ``floor(q * (resamples - 1))`` and ``ceil(...)``, i.e. the lower
  and the upper neighbour), so the same raw files always give the same interval.

With 3 seeds the smallest possible sign-test p-value is 0.25, with 5 seeds 0.0625: the table says how few
pairs there are rather than hiding it.
"""

from __future__ import annotations

import math
import random
import statistics
from typing import Any

LOWER_IS_BETTER = ("loss", "bpb", "bpt")
RESAMPLES = 10_000
LEVEL = 0.95
SEED = 0


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign-test p-value of ``wins`` against ``losses`` untied pairs."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def bootstrap_interval(
    diffs: list[float], resamples: int = RESAMPLES, level: float = LEVEL, seed: int = SEED
) -> tuple[float, float]:
    """A percentile bootstrap interval of the mean of ``diffs`` (deterministic in ``seed``)."""
    if not diffs:
        raise ValueError("bootstrap_interval needs at least one difference")
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(statistics.fmean(rng.choices(diffs, k=n)) for _ in range(resamples))
    lo, hi = (1 - level) / 2 * (resamples - 1), (1 + level) / 2 * (resamples - 1)
    return means[math.floor(lo)], means[math.ceil(hi)]


def compare(
    baseline: dict[int, float], other: dict[int, float], metric: str, **bootstrap: Any
) -> dict[str, Any] | None:
    """The paired statistics of ``other`` against ``baseline`` (each ``{seed: final value}``) on ``metric``;
    None when they share no seed."""
    seeds = sorted(set(baseline) & set(other), key=lambda s: (s is None, s))
    if not seeds:
        return None
    diffs = [other[s] - baseline[s] for s in seeds]
    sign = -1 if metric.split("/")[-1].split("@")[0].endswith(LOWER_IS_BETTER) else 1
    better = sum(1 for d in diffs if sign * d > 0)
    worse = sum(1 for d in diffs if sign * d < 0)
    return {
        "metric": metric,
        "seeds": seeds,
        "diffs": diffs,
        "mean": statistics.fmean(diffs),
        "better": better,
        "worse": worse,
        "ties": len(diffs) - better - worse,
        "p": sign_test(better, worse),
        "interval": bootstrap_interval(diffs, **bootstrap),
    }


def final_values(runs: list[dict[str, Any]], metric: str) -> dict[int, float]:
    """``{seed: final value of metric}`` of a configuration's runs (report.load_raw's run dicts)."""
    return {r["seed"]: r["series"][metric][-1][2] for r in runs if metric in r["series"]}


def _signed(x: float) -> str:
    """``+0.123``; a difference that rounds to zero prints as ``+0.000`` whatever its float sign."""
    text = f"{x:+.3f}"
    return "+0.000" if text == "-0.000" else text


def paired_table(groups: dict[str, list[dict[str, Any]]], baseline: str, metrics: list[str]) -> str:
    """A markdown section: every configuration that shares seeds with ``baseline``, against it, on each of
    ``metrics`` both logged (``groups`` as :func:`lmsleep.reporting.report.load_raw` returns them)."""
    if baseline not in groups:
        labels = "; ".join(groups)
        raise KeyError(f"baseline={baseline!r} is not a configuration of these runs; they are: {labels}")
    lines = [
        f"Paired by seed against the baseline {baseline}: the difference configuration - baseline of each "
        "shared seed's final value, the pairs where the configuration is better / worse / tied (higher "
        "accuracy, lower loss), the two-sided exact sign-test p-value (ties left out) and a 95% bootstrap "
        f"interval of the mean difference ({RESAMPLES:,} resamples, seed {SEED}).",
        "",
        "| configuration | metric | seeds | differences | mean difference | better / worse / tied | "
        "sign-test p | 95% bootstrap interval |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = 0
    for label, runs in groups.items():
        if label == baseline:
            continue
        for metric in metrics:
            result = compare(final_values(groups[baseline], metric), final_values(runs, metric), metric)
            if result is None:
                continue
            rows += 1
            seeds = ", ".join(str(s) for s in result["seeds"])
            diffs = ", ".join(_signed(d) for d in result["diffs"])
            lo, hi = result["interval"]
            counts = f"{result['better']} / {result['worse']} / {result['ties']}"
            lines.append(
                f"| {label} | {metric} | {seeds} | {diffs} | {_signed(result['mean'])} | {counts} | "
                f"{result['p']:.4g} | [{_signed(lo)}, {_signed(hi)}] |"
            )
    if not rows:
        lines.append(f"| (no configuration shares a seed with {baseline}) | | | | | | | |")
    return "\n".join(lines) + "\n"
