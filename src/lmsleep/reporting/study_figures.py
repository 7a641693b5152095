"""The figures of a study (``lmsleep report``, ``notebooks/results.ipynb``), drawn from runs loaded by
:func:`lmsleep.reporting.report.load_raw`: ``{configuration label: [{"seed", "meta", "series": {tag: [(step, tokens,
value)]}}]}``.

- ``curves``: validation exact and per-answer accuracy (text runs: bits per byte and loss) against training
  tokens, one line per configuration (the mean over seeds, shaded between the seeds' min and max);
- ``buckets``: validation exact accuracy of each depth bucket (``val/acc_exact@k=K``) against training tokens,
  one panel per configuration, for runs whose samples mix depths (Depo's per-query k, the paper's Fig. 3);
- ``depth_curves``: the same curves the other way round, the paper's Fig. 2 layout: one panel per depth bucket,
  one line per configuration (the mean over seeds, shaded between the seeds' min and max), so N = 1, N = 4 and
  N = 1 at 4x the tokens meet in one panel per depth;
- ``depth_curves_compute``: the same against training compute (tokens x N, :func:`per_compute`), drawn when
  the configurations differ in N, so N = 4 at 1x tokens and N = 1 at 4x meet at the same x;
- ``final``: final test exact accuracy (text runs: bits per byte) per configuration, a dot per seed;
- ``depth``: final test exact accuracy against depth (``@t=``, ``@k=``, ``@ops=``) per configuration;
- ``window`` (text runs): test bits per byte against the window index within the sequence.

Each function returns a matplotlib figure, or None when the runs logged nothing it draws.
"""

from __future__ import annotations

import math
import re
import statistics
import textwrap
from collections import defaultdict
from itertools import cycle
from typing import Any

from lmsleep.reporting.plots import pyplot

DEPTH_TAG = re.compile(r"^test/acc_exact@(\w+)=(\d+)$")
VAL_DEPTH_TAG = re.compile(r"^val/acc_exact@(\w+)=(\d+)$")
WINDOW_TAG = re.compile(r"^test/bpb@(window)=(\d+)$")


def _mean_curve(
    series: list[list[tuple[int, int, float]]],
) -> tuple[list[float], list[float], list[float], list[float]]:
    """Millions of tokens, and the mean, min and max over runs of the value logged at each token count."""
    by_tokens: dict[int, list[float]] = defaultdict(list)
    for s in series:
        for _, tokens, value in s:
            by_tokens[tokens].append(value)
    xs = sorted(by_tokens)
    return (
        [x / 1e6 for x in xs],
        [statistics.fmean(by_tokens[x]) for x in xs],
        [min(by_tokens[x]) for x in xs],
        [max(by_tokens[x]) for x in xs],
    )


def _draw_curves(ax, curves: dict[str, list[list[tuple[int, int, float]]]], looks: dict[str, tuple]) -> None:
    """One line per configuration in ``curves`` (label -> its runs' series): the mean over runs, shaded
    between their min and max where there are several, in the configuration's ``(colour, style, marker)``.

    A curve that ends earlier is drawn above one that goes further: N = 1 at 4x tokens, with the seed and a
    constant learning rate of N = 1 at 1x, is the 1x run continued and would hide it exactly."""
    means = {label: _mean_curve(series) for label, series in curves.items()}
    end = max((xs[-1] for xs, *_ in means.values() if xs), default=1.0) or 1.0
    for label, (xs, mean, low, high) in means.items():
        if not xs:
            continue
        colour, style, _ = looks[label]
        ax.plot(xs, mean, color=colour, linestyle=style, label=label, zorder=2 + (1 - xs[-1] / end) / 2)
        if len(curves[label]) > 1:
            ax.fill_between(xs, low, high, color=colour, alpha=0.2)


def _line_styles():
    """``(colour, line style, marker)`` per curve: matplotlib's ten colours with solid lines and circles,
    then dashed with squares, dotted with triangles, dash-dot with diamonds: forty looks before one repeats,
    so a study of more than ten configurations draws no two alike (the marker tells apart single-point
    curves)."""
    colours = [f"C{i}" for i in range(10)]
    looks = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"))
    return cycle([(c, style, marker) for style, marker in looks for c in colours])


def curves_figure(groups: dict[str, list[dict[str, Any]]]):
    """Validation exact and per-answer accuracy against training tokens, one line per configuration."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    tags = {tag for runs in groups.values() for r in runs for tag in r["series"]}
    metrics = (
        ("val/acc_exact", "val/acc")
        if "val/acc" in tags or "val/bpb" not in tags
        else ("val/bpb", "val/loss")
    )
    looks = dict(zip(groups, _line_styles(), strict=False))  # a configuration looks the same in both panels
    for ax, metric in zip(axes, metrics, strict=True):
        have = {
            label: [r["series"][metric] for r in runs if metric in r["series"]]
            for label, runs in groups.items()
        }
        _draw_curves(ax, {label: series for label, series in have.items() if series}, looks)
        ax.set(xlabel="training tokens (M)", ylabel=metric, title=f"{metric} against tokens")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _legend_below(fig, axes[0])
    return fig


def _legend_below(fig, *axes) -> None:
    """The legend of ``axes`` (each label once, in the order drawn) under the figure, one label a line:
    configuration labels are too long to sit inside a plot (save with ``bbox_inches="tight"`` to keep it)."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(
            list(handles.values()),
            list(handles),
            loc="upper center",
            bbox_to_anchor=(0.5, 0.0),
            fontsize=7,
            frameon=False,
        )


def _bucket_curves(
    groups: dict[str, list[dict[str, Any]]], pattern: re.Pattern
) -> tuple[str, dict[str, dict[int, list[list[tuple[int, int, float]]]]]]:
    """The bucket axis's name (``t``, ``k``) and ``{label: {bucket: [each run's series]}}`` of the tags
    ``pattern`` matches (``val/acc_exact@t=3``)."""
    axis_name, curves = "", {}
    for label, runs in groups.items():
        buckets: dict[int, list[list[tuple[int, int, float]]]] = defaultdict(list)
        for r in runs:
            for tag, s in r["series"].items():
                if match := pattern.match(tag):
                    axis_name = match.group(1)
                    buckets[int(match.group(2))].append(s)
        if buckets:
            curves[label] = buckets
    return axis_name, curves


def _seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def bucket_curves_figure(groups: dict[str, list[dict[str, Any]]], pattern: re.Pattern = VAL_DEPTH_TAG):
    """Validation exact accuracy per depth bucket against training tokens: one panel per configuration whose
    runs logged at least two buckets, one line per bucket (the mean over seeds); None when none did."""
    axis_name, curves = _bucket_curves(groups, pattern)
    panels = [
        (label, axis_name, dict(sorted(buckets.items())))
        for label, buckets in curves.items()
        if len(buckets) >= 2
    ]
    if not panels:
        return None
    plt = pyplot()
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False, sharey=True)
    colours = plt.get_cmap("viridis")
    for ax, (label, axis_name, buckets) in zip(axes.flat, panels, strict=False):  # spare panels stay blank
        for i, (bucket, series) in enumerate(buckets.items()):
            xs, mean, _, _ = _mean_curve(series)
            ax.plot(xs, mean, color=colours(i / max(1, len(buckets) - 1)), label=f"{axis_name}={bucket}")
        ax.set(
            xlabel="training tokens (M)",
            title=textwrap.fill(f"{label} ({_seeds(len(next(iter(buckets.values()))))})", 48),
        )
        ax.title.set_fontsize(8)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("val exact accuracy")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def depth_curves_figure(
    groups: dict[str, list[dict[str, Any]]],
    pattern: re.Pattern = VAL_DEPTH_TAG,
    xlabel: str = "training tokens (M)",
):
    """Validation exact accuracy against training tokens, one panel per depth bucket and one line per
    configuration (mean over seeds, shaded between their min and max); None unless two buckets were logged.
    With :func:`per_compute`'s groups and its ``xlabel``, the same against training compute."""
    axis_name, curves = _bucket_curves(groups, pattern)
    by_bucket: dict[int, dict[str, list[list[tuple[int, int, float]]]]] = defaultdict(dict)
    for label, buckets in curves.items():
        for bucket, series in buckets.items():
            by_bucket[bucket][label] = series
    if len(by_bucket) < 2:
        return None
    plt = pyplot()
    cols = min(3, len(by_bucket))
    rows = math.ceil(len(by_bucket) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, sharey=True)
    looks = dict(zip(groups, _line_styles(), strict=False))  # a configuration looks the same in every panel
    for ax, (bucket, lines) in zip(axes.flat, sorted(by_bucket.items()), strict=False):
        _draw_curves(ax, {label: lines[label] for label in groups if label in lines}, looks)
        ax.set(xlabel=xlabel, title=f"{axis_name} = {bucket}")
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("val exact accuracy")
    for ax in list(axes.flat)[len(by_bucket) :]:
        ax.axis("off")
    fig.tight_layout()
    _legend_below(
        fig, *axes.flat
    )  # a configuration may be missing from the first panel (a fixed-depth sweep)
    return fig


COMPUTE_LABEL = "training tokens x N (M)"


def _passes(run: dict[str, Any]) -> int:
    return int(run["meta"]["settings"].get("passes") or 1)  # a transformer: one pass


def per_compute(groups: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]] | None:
    """The runs with each point's tokens multiplied by the run's N, its passes over every window: training
    compute in tokens of one pass (with every pass backpropagated, ``grad_passes=null``, the paper's setting,
    a step of N passes costs about N one-pass steps), so N = 4 at 1x tokens and N = 1 at 4x tokens end at one
    x. None when every configuration has the same N (the figure would be the token one)."""
    if len({_passes(r) for runs in groups.values() for r in runs}) < 2:
        return None
    return {label: [_times_passes(r) for r in runs] for label, runs in groups.items()}


def _times_passes(run: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``run`` whose points' tokens are multiplied by its N."""
    n = _passes(run)
    return {
        **run,
        "series": {tag: [(s, tok * n, v) for s, tok, v in pts] for tag, pts in run["series"].items()},
    }


def final_figure(groups: dict[str, list[dict[str, Any]]], metric: str = "test/acc_exact"):
    """``metric`` at the end of each configuration's runs: a bar at the seeds' mean, a dot per seed.

    Returns None when no run logged ``metric``.
    """
    rows = [
        (label, [r["series"][metric][-1][2] for r in runs if metric in r["series"]])
        for label, runs in groups.items()
    ]
    rows = [(label, values) for label, values in rows if values]
    if not rows:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    positions = list(range(len(rows)))
    ax.barh(positions, [statistics.fmean(v) for _, v in rows], color="#9ecae1")
    for y, (_, values) in zip(positions, rows, strict=True):
        ax.plot(values, [y] * len(values), "o", color="#08519c", markersize=4)
    ax.set_yticks(positions, [label for label, _ in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel=f"final {metric} (bar: mean over seeds; dots: seeds)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def depth_figure(
    groups: dict[str, list[dict[str, Any]]],
    pattern: re.Pattern = DEPTH_TAG,
    what: str = "test exact accuracy",
    axis: str = "depth",
    join_sweeps: bool = True,
):
    """The final values of the tags ``pattern`` matches against their bucket (a task's depth, or the window
    index of text runs), one line per configuration. With ``join_sweeps``, configurations of one depth each
    that differ only in data settings (a depth sweep) join into one curve; runs of another budget or layout
    do not. None when no line has two buckets."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    axis_name = None
    by_base: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for group, runs in groups.items():
        finals = []  # (run, depth, final value)
        for r in runs:
            for tag, s in r["series"].items():
                match = pattern.match(tag)
                if match:
                    axis_name = match.group(1)
                    finals.append((r, int(match.group(2)), s[-1][2]))
        # a run of one depth joins its sweep's curve; a run whose samples mix depths is a curve of its own
        single = len({depth for _, depth, _ in finals}) == 1
        for r, depth, value in finals:
            by_base[r["sweep"] if join_sweeps and single else group][depth].append(value)
    for (label, by_depth), (colour, style, marker) in zip(
        sorted(by_base.items()), _line_styles(), strict=False
    ):
        if by_depth:
            xs = sorted(by_depth)
            ax.plot(
                xs,
                [statistics.fmean(by_depth[x]) for x in xs],
                marker=marker,
                color=colour,
                linestyle=style,
                label=label,
            )
    if axis_name is None or max(len(d) for d in by_base.values()) < 2:  # no curve: nothing to draw
        plt.close(fig)
        return None
    ax.set(
        xlabel=f"{axis} {axis_name}" if axis != axis_name else axis, ylabel=what, title=f"{what} by {axis}"
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _legend_below(fig, ax)
    return fig


def figures(groups: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Every figure of a study by name (None where its runs logged nothing for it)."""
    text = any("test/bpb" in r["series"] for runs in groups.values() for r in runs)
    return {
        "curves": curves_figure(groups),
        "buckets": bucket_curves_figure(groups),
        "depth_curves": depth_curves_figure(groups),
        "depth_curves_compute": depth_curves_figure(compute, xlabel=COMPUTE_LABEL)
        if (compute := per_compute(groups))
        else None,
        "final": final_figure(groups, "test/bpb" if text else "test/acc_exact"),
        "depth": depth_figure(groups),
        "window": depth_figure(groups, WINDOW_TAG, "test bits per byte", "window", join_sweeps=False),
    }
