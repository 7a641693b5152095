"""Matplotlib figures for TensorBoard: Rule 110 space-time diagrams and metrics by depth or window.

matplotlib is imported on first use with the non-interactive Agg backend, so nothing needs a display.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def rule110_figure(samples: Sequence[dict[str, Any]], predictions: Sequence[Sequence[int]]):
    """One panel per sample: for each state, its Rule 110 rollout (rows = steps 0..t, columns = cells), with
    the true answer bit (cell 0 at step t) outlined, green when predicted right and red when wrong.

    Args:
        samples: Rule 110 samples (``states``, ``steps``, ``answer``).
        predictions: predicted answer bit per state, one list per sample (-1 = not a bit).
    """
    from lmsleep.data.rule110 import rule110_step

    plt = pyplot()
    from matplotlib.patches import Rectangle

    n_states = len(samples[0]["states"])
    fig, axes = plt.subplots(
        len(samples), n_states, figsize=(2.2 * n_states, 1.6 * len(samples) + 0.4), squeeze=False
    )
    for row, (sample, pred) in enumerate(zip(samples, predictions, strict=True)):
        for col, state in enumerate(sample["states"]):
            bits = [int(c) for c in state]
            rows = [bits]
            for _ in range(sample["steps"]):
                rows.append(rule110_step(rows[-1]))
            ax = axes[row][col]
            ax.imshow(rows, cmap="Greys", vmin=0, vmax=1, interpolation="nearest", aspect="auto")
            right = pred[col] == sample["answer"][col]
            t = sample["steps"]
            ax.add_patch(
                Rectangle((-0.5, t - 0.5), 1, 1, fill=False, lw=2.5, ec="tab:green" if right else "tab:red")
            )
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(
                f"Q{col}: true {sample['answer'][col]} pred {pred[col] if pred[col] >= 0 else '?'}",
                fontsize=8,
                color="black" if right else "tab:red",
            )
            if col == 0:
                ax.set_ylabel(f"t={t}", fontsize=8)
    fig.suptitle("Rule 110 rollouts (rows: steps; outlined: the answer cell)", fontsize=9)
    fig.tight_layout()
    return fig


def depth_bar_figure(
    metrics: dict[str, float],
    depth_name: str,
    metric: str = "acc",
    ylim: tuple[float, float] | None = (0.0, 1.0),
):
    """Bars of ``<metric>@<depth_name>=<d>`` against d, with the overall value as a dashed line.

    ``depth_name`` is any bucket axis: a task's depth (``acc@t=4``) or the window within a text sequence
    (``bpb@window=3``). ``ylim=None`` scales the axis from 0 to the data (bits per byte have no upper bound).
    """
    plt = pyplot()
    prefix = f"{metric}@{depth_name}="
    points = sorted((int(k.split("=")[-1]), float(v)) for k, v in metrics.items() if k.startswith(prefix))
    fig, ax = plt.subplots(figsize=(max(3.0, 0.45 * len(points) + 1.5), 2.6))
    if points:
        # bars at positions 0..n-1 labelled with the depths (string categories made matplotlib log a line
        # per figure at INFO)
        ax.bar(range(len(points)), [v for _, v in points], color="tab:blue")
        ax.set_xticks(range(len(points)), [str(d) for d, _ in points])
    if metric in metrics:
        ax.axhline(float(metrics[metric]), ls="--", color="gray", lw=1, label="all")
        ax.legend(fontsize=7)
    if ylim is None:
        ax.set_ylim(bottom=0)
    else:
        ax.set_ylim(*ylim)
    ax.set_xlabel(depth_name)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by {depth_name}", fontsize=9)
    fig.tight_layout()
    return fig
