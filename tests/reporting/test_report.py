"""lmsleep report on two tiny real runs (two seeds of one configuration): raw files, tables, plots, and the
same tables and plots again from the raw files alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmsleep.cli import main
from lmsleep.reporting.report import report
from lmsleep.train import train
from lmsleep.utils.config import ConfigError
from tests.support import REPO, csv_rows

LIMIT = [
    "trainer.max_steps=4",
    "trainer.max_epochs=2",
    "++trainer.limit_val_batches=1",
    "++trainer.limit_test_batches=1",
]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, one_thread, compose, tiny):
    runs = []
    for seed in (0, 1):
        out = tmp_path_factory.mktemp(f"seed{seed}") / "run"
        cfg = compose([*tiny, *LIMIT, f"seed={seed}", "task_name=tiny", "data.task.steps=[1,2]"], "fit", out)
        metrics, _ = train(cfg)
        runs.append((out, metrics))
    return runs


def test_report_writes_raw_metrics_tables_and_plots(two_runs, tmp_path, capsys):
    out = tmp_path / "results"
    main(["report", *(str(d) for d, _ in two_runs), f"out={out}"])
    assert "wrote" in capsys.readouterr().out
    raw = sorted((out / "raw").glob("*.csv"))
    assert len(raw) == 2
    metas = sorted((out / "raw").glob("*.json"))
    assert sorted(json.loads(m.read_text())["seed"] for m in metas) == [0, 1]
    for meta_file in metas:
        meta = json.loads(meta_file.read_text())
        metrics = two_runs[meta["seed"]][1]
        assert meta["label"] == "tiny transformer (no eviction)"
        rows = csv_rows(meta_file.with_suffix(".csv"))
        test_acc = [float(r["value"]) for r in rows if r["tag"] == "test/acc"]
        assert test_acc and test_acc[-1] == pytest.approx(metrics["test/acc"], rel=1e-6)
        assert all(int(r["tokens"]) == int(r["step"]) * meta["settings"]["tokens_per_step"] for r in rows)
    summary = (out / "summary.md").read_text()
    row = next(line for line in summary.splitlines() if "| test/acc |" in line and line.startswith("| tiny"))
    finals = [m["test/acc"] for _, m in two_runs]
    mean = sum(finals) / 2
    assert row.startswith("| tiny transformer (no eviction) | 2 |")
    assert f"{mean:.3f} [{min(finals):.3f}, {max(finals):.3f}]" in row
    # the headline table: one row per configuration, its final test metrics in the header's order
    header = next(
        line for line in summary.splitlines() if line.startswith("| configuration | seeds | tokens | test/")
    )
    headline = next(
        line for line in summary.splitlines() if line.startswith("| tiny transformer") and "M |" in line
    )
    cells = dict(zip(header.strip("|").split(" | "), headline.strip("|").split(" | "), strict=True))
    exact = [m["test/acc_exact"] for _, m in two_runs]
    assert cells["test/acc_exact"].strip() == f"{sum(exact) / 2:.3f} [{min(exact):.3f}, {max(exact):.3f}]"
    for png in ("curves.png", "buckets.png", "depth_curves.png", "final.png", "depth.png"):
        assert (out / png).stat().st_size > 1000
    # the committed raw files alone reproduce the same tables and plots, byte for byte
    again = tmp_path / "again"
    report([str(out / "raw")], str(again))
    for name in ("summary.md", "curves.png", "buckets.png", "depth_curves.png", "final.png", "depth.png"):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name


def test_report_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="needs run folders"):
        report([], str(tmp_path))
    with pytest.raises(ConfigError, match="not a folder"):
        report([str(tmp_path / "nope")], str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no config.yaml"):
        report([str(tmp_path / "empty")], str(tmp_path / "out"))


def test_results_notebook_draws_a_study_from_its_raw_files(
    two_runs, tmp_path, monkeypatch, capsys, run_notebook
):
    """notebooks/results.ipynb on a tiny study: the headline table and one PNG per figure, from raw/ alone."""
    studies = tmp_path / "results"
    report([str(d) for d, _ in two_runs], str(studies / "tiny_study"))
    monkeypatch.setenv("LMSLEEP_RESULTS", str(studies))
    monkeypatch.setenv("LMSLEEP_NOTEBOOK_FIGURES", str(tmp_path / "figures"))
    notebook = REPO / "notebooks" / "results.ipynb"
    namespace = run_notebook(notebook)
    out = capsys.readouterr().out
    assert "1 studies" in out and "### tiny_study" in out
    exact = [m["test/acc_exact"] for _, m in two_runs]
    assert f"{sum(exact) / 2:.3f} [{min(exact):.3f}, {max(exact):.3f}]" in out
    names = sorted(p.name for p in namespace["figures_written"])
    assert names == [
        "tiny_study_buckets.png",
        "tiny_study_curves.png",
        "tiny_study_depth.png",
        "tiny_study_depth_curves.png",
        "tiny_study_final.png",
    ]
    for name in names:
        drawn = (tmp_path / "figures" / name).read_bytes()
        assert drawn[:8] == b"\x89PNG\r\n\x1a\n" and len(drawn) > 1000
    # the notebook draws what lmsleep report drew
    assert (tmp_path / "figures" / "tiny_study_final.png").read_bytes() == (
        studies / "tiny_study" / "final.png"
    ).read_bytes()


@pytest.mark.parametrize(
    ("overrides", "label"),
    [
        ([], "t transformer (no eviction)"),
        (["model.sleep.eviction=hard"], "t transformer (hard eviction)"),
        (["model=hybrid", "model.sleep.passes=2"], "t hybrid N=2"),  # hard: a hybrid's default, unsaid
        (["model=hybrid", "model.sleep.eviction=sliding"], "t hybrid N=1 (sliding)"),
        # a wrapped transformers model: its folder's name (or config's model_type), any inserted blocks
        (
            ["model=hf", "model.net.path=/models/Qwen3.5-0.8B", "model.sleep.passes=4"],
            "t hf Qwen3.5-0.8B N=4",
        ),
        (
            ["model=hf", "model.net.config={model_type:qwen3}", "model.net.insert=[1]"],
            "t hf qwen3 +inserted N=1",
        ),
    ],
)
def test_labels_name_the_model_passes_and_eviction(compose, tiny, tmp_path, overrides, label):
    from omegaconf import OmegaConf

    from lmsleep.reporting.report import run_settings

    sizes = [] if "model=hf" in overrides else tiny  # a wrapped model has its own sizes
    cfg = compose([*sizes, "task_name=t", *overrides], "fit", tmp_path / "run")
    # as a run folder's config.yaml holds it
    assert run_settings(OmegaConf.to_container(cfg, resolve=True))["label"] == label


def test_best_value_is_the_smallest_for_losses_and_bits_and_the_largest_for_accuracies():
    from lmsleep.reporting.report import summary_table

    series = {
        "val/bpb": [(1, 10, 3.9), (2, 20, 2.1), (3, 30, 2.2)],
        "val/loss": [(1, 10, 2.5), (2, 20, 1.4), (3, 30, 1.5)],
        "val/acc": [(1, 10, 0.5), (2, 20, 0.9), (3, 30, 0.8)],
    }
    table = summary_table({"hybrid N=2": [{"seed": 0, "series": series}]})
    rows = {line.split(" | ")[3]: line for line in table.splitlines() if line.startswith("| hybrid")}
    # final | best, each "mean [min, max]" over the one seed
    assert rows["val/bpb"].endswith("| 2.200 [2.200, 2.200] | 2.100 [2.100, 2.100] |")
    assert rows["val/loss"].endswith("| 1.500 [1.500, 1.500] | 1.400 [1.400, 1.400] |")
    assert rows["val/acc"].endswith("| 0.800 [0.800, 0.800] | 0.900 [0.900, 0.900] |")


def test_bucket_table_gives_each_depth_its_final_test_metrics_over_seeds():
    from lmsleep.reporting.report import bucket_table, summary_table

    def run(seed, acc_k2):
        series = {
            "test/acc@k=1": [(30, 300, 0.9)],
            "test/acc@k=2": [(30, 300, acc_k2)],
            "test/acc_exact@k=2": [(30, 300, acc_k2 / 2)],
            "val/acc@k=2": [(10, 100, 0.0), (30, 300, 1.0)],  # validation buckets are not in the table
            "test/acc": [(30, 300, 0.5)],
        }
        return {"seed": seed, "series": series}

    table = bucket_table({"N=2": [run(0, 0.2), run(1, 0.4)], "plain": [{"seed": 0, "series": {}}]})
    rows = [line for line in table.splitlines() if line.startswith("| N=2")]
    assert table.splitlines()[0] == "| configuration | seeds | tokens | bucket | test/acc | test/acc_exact |"
    assert rows == [
        "| N=2 | 2 | 0.0M | k=1 | 0.900 [0.900, 0.900] |  |",
        "| N=2 | 2 | 0.0M | k=2 | 0.300 [0.200, 0.400] | 0.150 [0.100, 0.200] |",
    ]
    assert "| plain |" not in table
    assert table in summary_table({"N=2": [run(0, 0.2), run(1, 0.4)]})
    # no run logged a bucket: neither the table nor its heading
    assert bucket_table({"plain": [run(0, 0.2) | {"series": {"test/acc": [(1, 1, 0.5)]}}]}) == ""
    assert "per bucket" not in summary_table({"plain": [{"seed": 0, "series": {"test/acc": [(1, 1, 0.5)]}}]})


def test_bucket_curves_draw_one_panel_per_configuration_with_mixed_depths_and_one_line_per_bucket():
    from lmsleep.reporting.study_figures import bucket_curves_figure

    def run(seed, buckets):
        series = {f"val/acc_exact@k={k}": [(10, 100, 0.1 * k), (20, 200, 0.2 * k + seed)] for k in buckets}
        return {"seed": seed, "series": {**series, "val/acc_exact": [(10, 100, 0.5), (20, 200, 0.6)]}}

    # one bucket per configuration (a depth sweep's runs): nothing to draw
    assert bucket_curves_figure({"t=2": [run(0, [2])], "t=3": [run(0, [3])]}) is None
    fig = bucket_curves_figure(
        {"N=1": [run(0, [1, 2, 3]), run(1, [1, 2, 3])], "N=2": [run(0, [1, 2])], "x": [run(0, [4])]}
    )
    drawn = [ax for ax in fig.axes if ax.lines]
    assert [ax.get_title() for ax in drawn] == ["N=1 (2 seeds)", "N=2 (1 seed)"]
    assert [line.get_label() for line in drawn[0].lines] == ["k=1", "k=2", "k=3"]
    # the mean over seeds at each token count, against millions of tokens
    line = drawn[0].lines[1]
    assert list(line.get_xdata()) == [1e-4, 2e-4]
    assert list(line.get_ydata()) == pytest.approx([0.2, 0.4 + 0.5])


def test_report_warns_about_a_run_without_test_metrics(two_runs, tmp_path, capsys):
    """A run still going (or stopped) has no test/ scalars: report says so and still draws its curves."""
    import shutil

    run = tmp_path / "unfinished"
    shutil.copytree(two_runs[0][0], run)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    for events in run.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        kept = [
            (tag, e) for tag in acc.Tags()["scalars"] if not tag.startswith("test/") for e in acc.Scalars(tag)
        ]
        folder = events.parent
        events.unlink()
        with SummaryWriter(str(folder)) as writer:
            for tag, e in kept:
                writer.add_scalar(tag, e.value, e.step)
    report([str(run)], str(tmp_path / "out"))
    err = capsys.readouterr().err
    assert f"{run} has no test metrics" in err and "stopped at step 4" in err
    assert (tmp_path / "out" / "curves.png").is_file()
    report([str(d) for d, _ in two_runs], str(tmp_path / "finished"))
    assert "no test metrics" not in capsys.readouterr().err


def write_raw(folder: Path, name: str, label: str, seed: int, settings: dict) -> None:
    """A raw run file pair (``<name>.json``, ``<name>.csv``) of study ``d`` with one validation point."""
    meta = {"label": label, "seed": seed, "settings": {"task_name": "d", **settings}}
    (folder / f"{name}.json").write_text(json.dumps(meta))
    (folder / f"{name}.csv").write_text("step,tokens,tag,value\n10,100,val/acc,0.5\n")


def test_runs_that_differ_in_their_budget_are_separate_configurations_not_seeds(tmp_path):
    from lmsleep.reporting.report import load_raw

    def write(name, seed, max_steps):
        budget = {} if max_steps is None else {"max_steps": max_steps}
        write_raw(tmp_path, name, "d hybrid N=1", seed, {"data": {"hops": [1, 8]}, **budget})

    write("a", 0, 1000)
    write("b", 1, 1000)
    write("c", 0, 4000)
    groups = load_raw(tmp_path)
    assert {label: len(runs) for label, runs in groups.items()} == {
        "d hybrid N=1 max_steps=1000": 2,
        "d hybrid N=1 max_steps=4000": 1,
    }
    # raw files written before the budget was recorded group as before
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.json").unlink()
    write("a", 0, None)
    write("b", 1, None)
    assert {label: len(runs) for label, runs in load_raw(tmp_path).items()} == {"d hybrid N=1": 2}


def test_runs_that_differ_in_their_layout_are_separate_configurations(tmp_path):
    from lmsleep.reporting.report import load_raw

    def write(name, seed, layout):
        settings = {"max_steps": 1000, "layout": layout, "data": {"hops": [1, 2]}}
        write_raw(tmp_path, name, "d hybrid N=2", seed, settings)

    write("a", 0, "attn,ssm,attn,ssm")
    write("b", 1, "attn,ssm,attn,ssm")
    write("c", 0, "attn,ssm")
    assert {label: len(runs) for label, runs in load_raw(tmp_path).items()} == {
        "d hybrid N=2 layout=attn,ssm": 1,
        "d hybrid N=2 layout=attn,ssm,attn,ssm": 2,
    }


def test_settings_a_raw_file_predates_are_left_out_of_its_label_not_called_none(tmp_path):
    from lmsleep.reporting.report import load_raw

    # two old runs (no budget or layout recorded) at t = 3 beside newer runs at t = 4 of two budgets
    write_raw(tmp_path, "a", "d hybrid N=1", 0, {"data": {"steps": 3}})
    write_raw(tmp_path, "b", "d hybrid N=1", 1, {"data": {"steps": 3}})
    for name, seed, max_steps in (("c", 0, 600), ("e", 1, 600), ("f", 0, 1200)):
        settings = {"max_steps": max_steps, "layout": "attn,ssm", "data": {"steps": 4}}
        write_raw(tmp_path, name, "d hybrid N=1", seed, settings)
    assert {label: len(runs) for label, runs in load_raw(tmp_path).items()} == {
        "d hybrid N=1 steps=3": 2,
        "d hybrid N=1 max_steps=600, steps=4": 2,
        "d hybrid N=1 max_steps=1200, steps=4": 1,
    }


def test_depth_figure_joins_a_sweep_but_not_other_budgets_or_runs_that_mix_depths(tmp_path):
    from lmsleep.reporting.report import load_raw
    from lmsleep.reporting.study_figures import depth_figure

    def write(name, seed, steps, max_steps, finals):
        settings = {"max_steps": max_steps, "layout": "attn,ssm", "data": {"steps": steps}}
        write_raw(tmp_path, name, "d hybrid N=1", seed, settings)
        rows = "".join(f"{max_steps},{max_steps * 10},test/acc_exact@t={t},{v}\n" for t, v in finals.items())
        (tmp_path / f"{name}.csv").write_text("step,tokens,tag,value\n" + rows)

    write("a", 0, 2, 600, {2: 0.9})  # a depth sweep at 600 steps, t = 2 and t = 3 (two seeds)
    write("b", 0, 3, 600, {3: 0.4})
    write("c", 1, 3, 600, {3: 0.2})
    write("e", 0, 3, 2400, {3: 1.0})  # t = 3 with 4x the budget: a point of its own
    write("f", 0, 9, 600, {1: 0.8, 2: 0.5})  # samples of mixed depth: a curve of its own
    fig = depth_figure(load_raw(tmp_path))
    lines = {line.get_label(): list(zip(*line.get_data(), strict=True)) for line in fig.axes[0].get_lines()}
    assert lines == {
        "d hybrid N=1 max_steps=600": [(2, 0.9), (3, pytest.approx(0.3))],
        "d hybrid N=1 max_steps=2400": [(3, 1.0)],
        "d hybrid N=1 max_steps=600, steps=9": [(1, 0.8), (2, 0.5)],
    }


def test_curves_of_more_configurations_than_colours_are_told_apart_and_bands_match_their_line():
    from matplotlib.colors import to_rgba

    from lmsleep.reporting.study_figures import curves_figure

    def run(seed, value):
        curve = [(10, 100, value), (20, 200, value + 0.1)]
        return {"seed": seed, "series": {"val/acc_exact": curve, "val/acc": curve}}

    groups = {f"config {i}": [run(0, 0.01 * i), run(1, 0.02 * i)] for i in range(13)}
    fig = curves_figure(groups)
    for ax in fig.axes[:2]:
        lines = [line for line in ax.get_lines() if line.get_label().startswith("config")]
        assert len(lines) == 13
        looks = {(to_rgba(line.get_color()), line.get_linestyle()) for line in lines}
        assert len(looks) == 13  # matplotlib's cycle alone repeats after ten
        # each configuration's band over seeds is drawn in its own line's colour
        bands = [c for c in ax.collections if len(c.get_paths())]
        assert [tuple(b.get_facecolor()[0][:3]) for b in bands] == [
            to_rgba(ln.get_color())[:3] for ln in lines
        ]
    # the same configuration looks the same in both panels
    assert [ln.get_color() for ln in fig.axes[0].get_lines()] == [
        ln.get_color() for ln in fig.axes[1].get_lines()
    ]


def test_depth_figure_tells_apart_more_single_depth_points_than_colours():
    from matplotlib.colors import to_rgba

    from lmsleep.reporting.study_figures import depth_figure

    groups = {
        f"config {i}": [
            {"seed": 0, "sweep": f"config {i}", "series": {f"test/acc_exact@t={2 + i % 2}": [(9, 90, 0.5)]}}
        ]
        for i in range(12)
    }
    groups["sweep"] = [
        {"seed": 0, "sweep": "sweep", "series": {f"test/acc_exact@t={t}": [(9, 90, 0.1 * t)]}} for t in (2, 3)
    ]
    lines = depth_figure(groups).axes[0].get_lines()
    assert len(lines) == 13
    assert len({(to_rgba(ln.get_color()), ln.get_linestyle(), ln.get_marker()) for ln in lines}) == 13
    # a lone point shows no line: colour and marker alone must tell the configurations apart
    assert len({(to_rgba(ln.get_color()), ln.get_marker()) for ln in lines}) == 13


def test_depth_curves_put_every_configuration_in_each_depth_panel_it_logged():
    """The Fig. 2 layout: a panel per depth, a line per configuration (a band where seeds differ), one legend
    entry per configuration even when the first panel lacks it."""
    from lmsleep.reporting.study_figures import depth_curves_figure

    def run(seed, depths, level):
        curve = {f"val/acc_exact@t={t}": [(1, 10, 0.1), (2, 20, level + seed / 10)] for t in depths}
        return {"seed": seed, "series": curve}

    groups = {
        "N=1": [run(0, (1, 2, 3), 0.3), run(1, (1, 2, 3), 0.3)],
        "N=4": [run(0, (1, 2, 3), 0.9)],
        "deep only": [run(0, (3,), 0.5)],
    }
    fig = depth_curves_figure(groups)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["t = 1", "t = 2", "t = 3"]
    assert [[line.get_label() for line in ax.get_lines()] for ax in panels] == [
        ["N=1", "N=4"],
        ["N=1", "N=4"],
        ["N=1", "N=4", "deep only"],
    ]
    assert len(panels[0].collections) == 1  # N = 1's two seeds: a band; one seed draws none
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["N=1", "N=4", "deep only"]
    assert depth_curves_figure({"N=1": [run(0, (3,), 0.3)]}) is None  # one depth: nothing to lay out


def test_a_run_continued_for_more_tokens_does_not_hide_the_shorter_run_it_retraces():
    """N = 1 at 4x tokens (same seed, constant rate) is N = 1 at 1x continued: the shorter line goes on top
    in every curve figure, whatever the configurations' order, and keeps its colour and legend place."""
    from lmsleep.reporting.study_figures import curves_figure, depth_curves_figure

    def run(last_step):
        curve = [(s, 10 * s, 0.1 * s) for s in range(1, last_step + 1)]
        return {
            "seed": 0,
            "series": {
                "val/acc_exact": curve,
                "val/acc": curve,
                "val/acc_exact@t=1": curve,
                "val/acc_exact@t=2": curve,
            },
        }

    for groups in ({"N=1 4x": [run(8)], "N=1": [run(2)]}, {"N=1": [run(2)], "N=1 4x": [run(8)]}):
        for fig in (curves_figure(groups), depth_curves_figure(groups)):
            for ax in (ax for ax in fig.axes if ax.get_lines()):
                z = {line.get_label(): line.get_zorder() for line in ax.get_lines()}
                assert z["N=1"] > z["N=1 4x"] >= 2  # above the other line, and above the bands and grid
            assert [t.get_text() for t in fig.legends[0].get_texts()] == list(groups)


def test_depth_curves_per_compute_meet_n_4_at_1x_tokens_and_n_1_at_4x_at_one_x():
    """depth_curves_compute: each point's tokens times its run's N; none drawn where every run has one N."""
    from lmsleep.reporting.study_figures import COMPUTE_LABEL, depth_curves_figure, figures, per_compute

    def run(passes, last_tokens):
        curve = {f"val/acc_exact@t={t}": [(1, 10, 0.1), (2, last_tokens, 0.5)] for t in (1, 2)}
        return {"seed": 0, "series": curve, "meta": {"settings": {"passes": passes}}}

    groups = {"N=1 4x": [run(1, 400)], "N=4": [run(4, 100)], "transformer": [run(None, 100)]}
    compute = per_compute(groups)
    assert [compute[label][0]["series"]["val/acc_exact@t=2"][-1][1] for label in groups] == [400, 400, 100]
    assert groups["N=4"][0]["series"]["val/acc_exact@t=2"][-1][1] == 100  # the runs themselves are untouched
    fig = depth_curves_figure(compute, xlabel=COMPUTE_LABEL)
    panel = next(ax for ax in fig.axes if ax.get_title() == "t = 2")
    assert panel.get_xlabel() == COMPUTE_LABEL
    assert {line.get_label(): list(line.get_xdata()) for line in panel.get_lines()} == {
        "N=1 4x": [1e-5, 4e-4],
        "N=4": [4e-5, 4e-4],
        "transformer": [1e-5, 1e-4],
    }
    assert figures(groups)["depth_curves_compute"] is not None
    same_n = {"a": [run(2, 100)], "b": [run(2, 200)]}
    assert per_compute(same_n) is None and figures(same_n)["depth_curves_compute"] is None


def test_a_queued_runs_revision_and_wall_time_travel_with_its_raw_files(two_runs, tmp_path):
    """scripts/study_queue.py's records of a run (reporting/provenance.py) reach its raw JSON and the summary;
    a run the queue did not make says so, and a study with no queued run gets no such table."""
    import shutil

    queued = tmp_path / "runs" / "queued"
    shutil.copytree(two_runs[0][0], queued)
    attempts = [
        {"revision": "a" * 40, "returncode": 143, "seconds": 60.0},  # preempted, then resumed
        {"revision": "a" * 40, "returncode": 0, "seconds": 90.0, "resumed_from": "step_0000002.ckpt"},
    ]
    (queued / "queue.jsonl").write_text("".join(json.dumps(a) + "\n" for a in attempts))
    (queued / "queue_done.json").write_text(json.dumps(attempts[-1]))
    out = tmp_path / "results"
    report([str(queued), str(two_runs[1][0])], str(out))
    metas = {
        json.loads(p.read_text())["seed"]: json.loads(p.read_text()) for p in (out / "raw").glob("*.json")
    }
    assert metas[0]["queue"] == {
        "revisions": ["a" * 40],
        "attempts": 2,
        "wall_seconds": 150.0,
        "finished": True,
    }
    assert "queue" not in metas[1]
    summary = (out / "summary.md").read_text()
    rows = summary.split(
        "| configuration | seed | revision | attempts | wall, min |\n|---|---|---|---|---|\n"
    )[1]
    assert rows.splitlines() == [
        "| tiny transformer (no eviction) | 0 | aaaaaaaaaaaa | 2 | 2.5 |",
        "| tiny transformer (no eviction) | 1 | not recorded | | |",
    ]
    # the committed raw files alone rebuild the table
    again = tmp_path / "again"
    report([str(out / "raw")], str(again))
    assert (again / "summary.md").read_text() == summary
    # no queued run, no table
    plain = tmp_path / "plain"
    report([str(two_runs[1][0])], str(plain))
    assert "revision" not in (plain / "summary.md").read_text()
