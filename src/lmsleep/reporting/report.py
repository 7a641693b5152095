"""``lmsleep report RUN_DIRS... out=results/``: tables and plots of a study from its runs' logs.

Step 1 reads every run folder (``config.yaml`` and the TensorBoard event files ``lmsleep fit`` wrote) and
writes its scalars as raw files, ``<out>/raw/<run>.csv`` (``step,tokens,tag,value``) and ``<out>/raw/<run>.json``
(the run's label, seed and settings). Step 2 builds everything else from those raw files alone, so
``lmsleep report <out>/raw out=<out>`` reproduces the tables and plots exactly from committed raw metrics:

- ``<out>/summary.md``: per configuration (runs that differ only in their seed), the final and the best value
  of each metric as mean, min and max over seeds, with the number of seeds and the tokens trained, and the
  final test metrics of each depth bucket (``test/acc@k=2``; a text run's ``@window=``) the same way;
- ``<out>/<figure>.png``: the figures of :mod:`lmsleep.reporting.study_figures` (``curves``, ``buckets``, ``final``,
  ``depth``, ``window``), each where the runs logged what it draws;
- with ``baseline=LABEL`` (a configuration's label as the summary prints it), ``summary.md`` ends with the
  paired statistics of every configuration that shares seeds with it (:mod:`lmsleep.reporting.paired_stats`);
  ``baseline=`` may be given more than once (e.g. N = 1 at the study's tokens and N = 1 at N x the tokens), one
  section each, in the order given.

``test/...`` is the best validated checkpoint (as in every run), ``test_final/...`` the weights of the last
step where a run logged them (``lmsleep fit`` tests both). Each raw JSON's ``settings`` also hold the
hyperparameters a study varies or fixes (:mod:`lmsleep.reporting.study_settings`), and a run that
``scripts/study_queue.py`` ran gets its revision and wall time (``queue``; :mod:`lmsleep.reporting.provenance`),
which ``summary.md`` lists last.

Tokens are ``step x batch_size x accumulate_grad_batches x (the task's max_length, or a text run's seq_len)``
summed over devices (a step is an optimiser step), i.e. the tokens the model was trained on including padding.
"""

from __future__ import annotations

import csv
import json
import os
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lmsleep.data.task import task_from_config
from lmsleep.reporting.plots import pyplot
from lmsleep.reporting.provenance import provenance_table, queue_record
from lmsleep.reporting.study_figures import figures
from lmsleep.reporting.study_settings import HPARAMS, grouping_hparams, run_hparams
from lmsleep.utils.config import ConfigError, is_hf_net

FINAL_METRICS = (
    *("val/acc", "val/acc_exact", "val/loss", "val/bpb"),
    *("test/acc", "test/acc_exact", "test/loss", "test/bpb"),
    # the final weights of runs that tested them beside the best checkpoint (``test/``)
    *("test_final/acc", "test_final/acc_exact", "test_final/loss", "test_final/bpb"),
)
TEST_PREFIXES = ("test/", "test_final/")
# A test metric of one bucket: its depth (Depo's k, Rule 110's t, GSM's ops) or a text run's window index.
BUCKET_TAG = re.compile(r"^(test|test_final)/(\w+)@(\w+)=(\d+)$")
BUCKET_METRICS = ("acc", "acc_exact", "loss", "bpb")  # the bucket table's first columns, in this order
# Metrics whose best value is the smallest (the others are accuracies).
LOWER_IS_BETTER = ("loss", "bpb", "bpt")
# The settings of a text run that decide its data (a task's are its task node).
TEXT_SETTINGS = ("paths", "glob", "exclude", "format", "tokenizer", "seq_len", "pack", "window")


# --- step 1: run folders -> raw files -----------------------------------------------------------------------
def model_kind(net: dict[str, Any]) -> str:
    """``transformer``, ``hybrid``, or for a wrapped transformers model (``model=hf``) ``hf <its folder's name
    or config's model_type>``, with ``+inserted`` where fast-weight blocks were inserted (the Ouro recipe)."""
    if is_hf_net(net):
        source = (
            Path(str(net["path"])).name if net.get("path") else (net.get("config") or {}).get("model_type")
        )
        return f"hf {source}" + (" +inserted" if net.get("insert") else "")
    return "transformer" if "ssm" not in str(net.get("layout", "")) else "hybrid"


def run_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """The settings that identify a configuration (everything a seed does not change) and its label."""
    model, sleep = cfg["model"]["net"], cfg["model"].get("sleep", {})
    layout = model.get("layout", "")
    kind = model_kind(model)
    data = cfg["data"]
    devices = cfg["trainer"].get("devices", 1)
    world = (devices if isinstance(devices, int) else len(devices)) * int(cfg["trainer"].get("num_nodes", 1))
    accumulate = int(cfg["trainer"].get("accumulate_grad_batches") or 1)
    if "task" in data:
        length = task_from_config(data["task"]).max_length
        data_settings = {k: v for k, v in data["task"].items() if k not in ("_target_", "seed")}
    else:  # text: every sequence is seq_len tokens
        length = int(data["seq_len"])
        data_settings = {k: data[k] for k in TEXT_SETTINGS if k in data}
    settings = {
        "task_name": cfg.get("task_name"),
        "model": kind,
        "passes": int(sleep.get("passes", 1)),
        "eviction": sleep.get("eviction", "none"),
        "window": sleep.get("window"),
        "dim": model.get("dim"),
        "layout": str(layout),
        # a logged step is an optimiser step: accumulate_grad_batches batches on every device
        "tokens_per_step": int(data["batch_size"]) * length * world * accumulate,
        "max_steps": cfg["trainer"].get("max_steps"),
        "data": data_settings,
    }
    if kind.startswith("hf "):  # the wrapped model: its folder or config, and any inserted blocks
        settings["hf"] = {k: model.get(k) for k in ("path", "config", "insert", "insert_ssm", "loop")}
    settings.update(run_hparams(cfg, settings["tokens_per_step"]))  # learning rates, schedule, clipping, ...
    label = f"{settings['task_name']} {kind}" + (f" N={settings['passes']}" if kind != "transformer" else "")
    # hard eviction is a hybrid's default and goes unsaid; a transformer's default is none
    evictions = {"none": " (no eviction)", "sliding": " (sliding)"}
    if kind == "transformer":
        evictions["hard"] = " (hard eviction)"
    label += evictions.get(settings["eviction"], "")
    return {"label": label, "seed": cfg.get("seed"), "settings": settings}


def read_scalars(run_dir: Path) -> list[tuple[int, str, float]]:
    """Every scalar of the run's TensorBoard event files as ``(step, tag, value)``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = []
    for events in sorted(run_dir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            rows += [(e.step, tag, float(e.value)) for e in acc.Scalars(tag)]
    return sorted(set(rows))


def write_raw(run_dir: Path, raw: Path, name: str) -> Path:
    from omegaconf import OmegaConf

    config = run_dir / "config.yaml"
    if not config.is_file():
        raise ConfigError(f"{run_dir} is not a run folder of `lmsleep fit`: it has no config.yaml")
    try:
        meta = run_settings(OmegaConf.to_container(OmegaConf.load(config), resolve=False))
    except ValueError as exc:  # a task value or target the run folder's config cannot have
        raise ConfigError(f"{config}: {exc}") from exc
    scalars = read_scalars(run_dir)
    if not scalars:
        raise ConfigError(f"{run_dir} holds no TensorBoard scalars (was it run with logger=tensorboard?)")
    if not any(tag.startswith("test/") for _, tag, _ in scalars):
        last = max(step for step, _, _ in scalars)
        print(
            f"lmsleep report: warning: {run_dir} has no test metrics (still running, or stopped at step {last}); "
            "its curves are included, its final values are its last validation",
            file=sys.stderr,
        )
    meta["run_dir"] = str(run_dir)
    if (record := queue_record(run_dir)) is not None:
        meta["queue"] = record
    per_step = meta["settings"]["tokens_per_step"]
    with open(raw / f"{name}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "tokens", "tag", "value"])
        writer.writerows((step, step * per_step, tag, repr(value)) for step, tag, value in scalars)
    (raw / f"{name}.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    return raw / f"{name}.csv"


# Settings that raw files written before them do not hold: such a file groups as before, and its label leaves
# them out rather than calling them None.
RECORDED_LATER = ("max_steps", "layout", *HPARAMS)


def _known(settings: dict[str, Any], key: str) -> bool:
    """Whether a run's grouping settings say anything about ``key`` (a setting recorded later is unknown)."""
    return key in settings or key not in RECORDED_LATER


# --- step 2: raw files -> tables and plots ------------------------------------------------------------------
def load_raw(raw: Path) -> dict[str, list[dict[str, Any]]]:
    """Runs grouped by label: ``{label: [{"seed", "meta", "series": {tag: [(step, tokens, value)]}, "base",
    "sweep"}]}``; ``sweep`` names the depth sweep a run belongs to (its label and budget)."""
    runs = []
    for meta_file in sorted(raw.glob("*.json")):
        meta = json.loads(meta_file.read_text())
        series: dict[str, list[tuple[int, int, float]]] = defaultdict(list)
        with open(meta_file.with_suffix(".csv"), newline="") as f:
            for row in csv.DictReader(f):
                series[row["tag"]].append((int(row["step"]), int(row["tokens"]), float(row["value"])))
        runs.append({"seed": meta["seed"], "meta": meta, "series": dict(series), "base": meta["label"]})
    if not runs:
        raise ConfigError(f"{raw} holds no raw run files (<run>.json and <run>.csv)")
    # Runs with one label that differ in a data setting (a depth sweep) or in their budget (max_steps) are
    # separate configurations. A setting that varies anywhere within one study (one task_name) names the
    # value in every label of that study, also where a configuration ran at one value only (an N = 2 probe at
    # one depth of a sweep).
    by_study: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        by_study[str(run["meta"]["settings"].get("task_name"))].append(run)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for members in by_study.values():
        data = [_grouping_settings(m["meta"]["settings"]) for m in members]
        varying = sorted(
            k for k in set().union(*data) if len({json.dumps(d.get(k)) for d in data if _known(d, k)}) > 1
        )
        for run, d in zip(members, data, strict=True):
            suffix = ", ".join(f"{k}={d.get(k)}" for k in varying if _known(d, k))
            # what a depth figure joins into one curve: runs that differ only in data (the depth), not in
            # their budget or model
            budget = ", ".join(f"{k}={d[k]}" for k in varying if k in RECORDED_LATER and k in d)
            run["sweep"] = f"{run['base']} {budget}" if budget else run["base"]
            groups[f"{run['base']} {suffix}" if suffix else run["base"]].append(run)
    return dict(sorted(groups.items()))


def _grouping_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings whose differences make two runs of one label separate configurations, not seeds."""
    recorded_later = {k: settings[k] for k in RECORDED_LATER if k in settings}
    return {**settings["data"], **recorded_later, **grouping_hparams(settings)}


def _tokens_trained(runs: list[dict[str, Any]]) -> int:
    """The most tokens any of the runs logged a metric at."""
    return max(max((t for _, t, _ in s), default=0) for r in runs for s in r["series"].values())


def _stats(values: list[float]) -> str:
    return f"{statistics.fmean(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def headline_table(groups: dict[str, list[dict[str, Any]]]) -> str:
    """One row per configuration: the final test metrics, mean [min, max] over seeds."""
    logged = {tag for runs in groups.values() for r in runs for tag in r["series"]}
    metrics = [m for m in FINAL_METRICS if m.startswith(TEST_PREFIXES) and m in logged]
    lines = [
        "| configuration | seeds | tokens | " + " | ".join(metrics) + " |",
        "|---|---|---|" + "---|" * len(metrics),
    ]
    for label, runs in groups.items():
        tokens = _tokens_trained(runs)
        cells = []
        for metric in metrics:
            final = [r["series"][metric][-1][2] for r in runs if metric in r["series"]]
            cells.append(_stats(final) if final else "")
        lines.append(f"| {label} | {len(runs)} | {tokens / 1e6:.1f}M | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bucket_table(groups: dict[str, list[dict[str, Any]]]) -> str:
    """One row per configuration and bucket: the final test metrics of that bucket, mean [min, max] over
    seeds; empty when no run logged bucket metrics."""
    # {label: {(axis, bucket): {metric: [final value of each seed]}}}
    cells: dict[str, dict[tuple[str, int], dict[str, list[float]]]] = {}
    metrics: set[str] = set()
    for label, runs in groups.items():
        for r in runs:
            for tag, s in r["series"].items():
                if match := BUCKET_TAG.match(tag):
                    prefix, name, axis, bucket = match.groups()
                    metric, bucket = f"{prefix}/{name}", int(bucket)
                    metrics.add(metric)
                    by_bucket = cells.setdefault(label, {}).setdefault((axis, bucket), {})
                    by_bucket.setdefault(metric, []).append(s[-1][2])
    if not cells:
        return ""
    known = [f"{p}{m}" for p in TEST_PREFIXES for m in BUCKET_METRICS]
    order = [m for m in known if m in metrics] + sorted(metrics - set(known))
    lines = [
        "| configuration | seeds | tokens | bucket | " + " | ".join(order) + " |",
        "|---|---|---|---|" + "---|" * len(order),
    ]
    for label, by_bucket in cells.items():
        tokens = _tokens_trained(groups[label])
        for (axis, bucket), values in sorted(by_bucket.items()):
            seeds = max(len(v) for v in values.values())
            row = " | ".join(_stats(values[m]) if m in values else "" for m in order)
            lines.append(f"| {label} | {seeds} | {tokens / 1e6:.1f}M | {axis}={bucket} | {row} |")
    return "\n".join(lines) + "\n"


def summary_table(groups: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        "Final test metrics per configuration: mean [min, max] over seeds.",
        "",
        headline_table(groups),
        *(
            [
                "Final test metrics per bucket (a task's depth, or a text run's window): mean [min, max] over seeds.",
                "",
                table,
            ]
            if (table := bucket_table(groups))
            else []
        ),
        "Final and best value of each metric: mean [min, max] over seeds.",
        "",
        "| configuration | seeds | tokens | metric | final | best |",
        "|---|---|---|---|---|---|",
    ]
    for label, runs in groups.items():
        tokens = _tokens_trained(runs)
        for metric in FINAL_METRICS:
            have = [r["series"][metric] for r in runs if metric in r["series"]]
            if not have:
                continue
            best = min if metric.endswith(LOWER_IS_BETTER) else max
            final = [s[-1][2] for s in have]
            top = [best(v for _, _, v in s) for s in have]
            lines.append(
                f"| {label} | {len(have)} | {tokens / 1e6:.1f}M | {metric} | {_stats(final)} | {_stats(top)} |"
            )
    return "\n".join(lines) + "\n"


def paired_section(groups: dict[str, list[dict[str, Any]]], baseline: str) -> str:
    """The paired statistics against ``baseline`` (:mod:`lmsleep.reporting.paired_stats`) of the final test metrics and
    of each bucket's exact accuracy (a depth's)."""
    from lmsleep.reporting.paired_stats import paired_table

    logged = {tag for runs in groups.values() for r in runs for tag in r["series"]}
    metrics = [m for m in FINAL_METRICS if m.startswith(TEST_PREFIXES) and m in logged]
    buckets = [t for t in logged if (m := BUCKET_TAG.match(t)) and m.group(2) == "acc_exact"]
    metrics += sorted(buckets, key=lambda t: (t.split("@")[0], t.split("=")[0], int(t.rsplit("=", 1)[1])))
    try:
        return paired_table(groups, baseline, metrics)
    except KeyError as exc:
        raise ConfigError(f"lmsleep report: {exc.args[0]}") from None


def _baselines(baseline: str | Sequence[str] | None) -> list[str]:
    return [] if baseline is None else [baseline] if isinstance(baseline, str) else list(baseline)


def build(raw: Path, out: Path, baseline: str | Sequence[str] | None = None) -> list[Path]:
    """Tables and plots from the raw files in ``raw`` (with the paired statistics against each configuration
    labelled in ``baseline``, if given); returns the files written."""
    groups = load_raw(raw)
    out.mkdir(parents=True, exist_ok=True)
    summary = summary_table(groups)
    for label in _baselines(baseline):
        summary += "\n" + paired_section(groups, label)
    if runs := provenance_table(groups):
        summary += "\n" + runs
    (out / "summary.md").write_text(summary)
    written = [out / "summary.md"]
    plt = pyplot()
    for name, fig in figures(groups).items():
        if fig is not None:
            fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")  # legends sit below the axes
            plt.close(fig)
            written.append(out / f"{name}.png")
    return written


def report(paths: list[str], out: str = "results", baseline: str | Sequence[str] | None = None) -> list[Path]:
    """Run folders (or one folder of raw files) -> ``out/raw/`` and the tables and plots in ``out``;
    ``baseline``: the label (or labels) of the configuration to pair the others with by seed (``summary.md``
    then ends with their paired statistics, a section per baseline)."""
    if not paths:
        raise ConfigError("lmsleep report needs run folders (logs/<task>/runs/<time>) or a raw/ folder")
    out_dir = Path(out)
    dirs = [Path(p) for p in paths]
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        raise ConfigError(f"lmsleep report: not a folder: {', '.join(missing)}")
    if len(dirs) == 1 and list(dirs[0].glob("*.json")) and not (dirs[0] / "config.yaml").exists():
        return build(dirs[0], out_dir, baseline)  # committed raw files: reproduce the tables and plots
    raw = out_dir / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    # a run's raw files are named after its folder below the runs' common parent folder
    common = Path(os.path.commonpath([d.resolve().parent for d in dirs]))
    for d in dirs:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(d.resolve().relative_to(common)))[-200:].lstrip("-_.")
        write_raw(d, raw, name)
    return build(raw, out_dir, baseline)


def main(args: list[str]) -> None:
    out = next((a.split("=", 1)[1] for a in args if a.startswith("out=")), "results")
    baseline = [a.split("=", 1)[1] for a in args if a.startswith("baseline=")]
    paths = [a for a in args if not a.startswith(("out=", "baseline="))]
    for path in report(paths, out, baseline):
        print(f"wrote {path}")
