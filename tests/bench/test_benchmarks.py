"""The benchmarks' shared code (``benchmarks/common.py``) and RESULTS.md writer, without timing anything: the
clock is a list of fake ticks."""

from __future__ import annotations

import json

import pytest
from benchmarks import write_results
from benchmarks.common import StepTimes, time_steps


def ticks(*values: float):
    it = iter(values)
    return lambda: next(it)


def test_step_times_drops_the_warmup_and_takes_the_median():
    times = StepTimes(warmup=1, steps=3, clock=ticks(0, 5, 5, 6, 6, 8, 8, 12, 12, 99))
    for _ in range(5):
        times.start()
        times.stop()
    assert times.seconds == [5, 1, 2, 4, 87]
    assert times.timed == [1, 2, 4]  # the warm-up step before, the step after the timed ones left out
    assert times.median_s == 2
    assert times.median_ms == 2000


def test_time_steps_runs_warmup_plus_steps():
    calls = []
    times = time_steps(lambda: calls.append(1), steps=2, warmup=1, clock=ticks(0, 1, 1, 3, 3, 6))
    assert len(calls) == 3
    assert times.timed == [2, 3]
    assert times.median_s == 2.5


def test_step_times_refuses_what_it_cannot_measure():
    with pytest.raises(ValueError, match="steps >= 1"):
        StepTimes(warmup=0, steps=0)
    with pytest.raises(RuntimeError, match="without start"):
        StepTimes().stop()
    times = StepTimes(warmup=2, clock=ticks(0, 1))
    times.start()
    times.stop()
    with pytest.raises(ValueError, match="no timed step"):
        times.median_s  # noqa: B018


MACHINE = {"cpu": "Some CPU", "features": "AVX2", "cores": 2, "torch": "2.13.0+cpu", "threads": 2}


def test_results_name_the_machine_the_files_record():
    assert write_results.machine_line([MACHINE, dict(MACHINE)]) == (
        "Machine: Some CPU (AVX2), 2 cores; torch 2.13.0+cpu, 2 threads."
    )
    other = {**MACHINE, "cpu": "Other CPU"}
    assert write_results.machine_line([MACHINE, other]).startswith("Machines: Some CPU (AVX2), 2 cores; ")


def test_results_page_from_result_files(tmp_path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    rows = [
        {"passes": 1, "step_ms": 6083.0, "sleep_ms": 0.0},
        {"passes": 2, "step_ms": 9627.0, "sleep_ms": 183.5},
    ]
    (results / "wake_latency.json").write_text(
        json.dumps({"machine": MACHINE, "stream": [], "training": rows})
    )
    monkeypatch.setattr(write_results, "HERE", tmp_path)
    monkeypatch.setattr(write_results, "RESULTS", results)
    write_results.main()
    page = (tmp_path / "RESULTS.md").read_text()
    assert "Machine: Some CPU (AVX2), 2 cores; torch 2.13.0+cpu, 2 threads." in page
    assert "`python -m benchmarks.wake_latency`" in page
    assert "| 2 | 9627 | 183.5 |" in page


def test_step_floor_rows_say_how_far_the_rest_must_shrink():
    row = {
        "N": 1,
        "ms_per_step": 300.0,
        "fixed_ms_per_step": 40.0,
        "matmul_ms": 80.0,
        "matmul_gflop": 8.6,
        "analytic_training_gflop": 8.3,
        "rest_ms": 180.0,
        "aten_ops_per_step": 2717,
        "floor_ms": 120.0,
        "speedup_if_rest_were_free": 2.5,
        "against_ms_per_step": 480.0,
        "speedup_vs_against": 1.6,
        "target_ms": 240.0,
    }
    args = {
        "experiment": "rule110_sleep",
        "passes": [1],
        "steps": 15,
        "warmup": 5,
        "repeats": 3,
        "against": "abc",
    }
    unreachable = {**row, "target_ms": 100.0}
    lines = write_results.step_floor_section({"args": args, "rows": [row, unreachable]}, "t")
    assert lines[-3].endswith("| 480.0 | 1.60x | 240.0 | 1.5x |")  # 180 ms of rest into the 120 ms left
    assert lines[-2].endswith("| out of reach: fixed + matmul exceed it |")


def compile_row(n: int, gain: bool) -> dict:
    worker = {"threads": 1}
    return {
        "N": n,
        "targets": "mlp",
        "eager_ms": 200.0,
        "compiled_ms": 180.0 if gain else 210.0,
        "speed_up": 1.1 if gain else 0.95,
        "compile_s_cold": 15.0,
        "compile_s_warm": 2.5,
        "first_step_s_cold": 15.4,
        "first_step_s_warm": 2.9,
        "graphs": 2,
        "recompiles": 0,
        "payback_steps_cold": 825.0 if gain else None,
        "payback_steps_warm": 137.5 if gain else None,
        "workers": {"cold": worker, "warm": worker},
    }


def test_results_page_keeps_the_sections_whose_files_are_absent(tmp_path, monkeypatch):
    """One benchmark re-run rewrites its own section; the rest of the page, and its machine, stay."""
    results = tmp_path / "results"
    results.mkdir()
    rows = [{"passes": 1, "step_ms": 6083.0, "sleep_ms": 0.0}]
    (results / "wake_latency.json").write_text(
        json.dumps({"machine": MACHINE, "stream": rows, "training": rows})
    )
    monkeypatch.setattr(write_results, "HERE", tmp_path)
    monkeypatch.setattr(write_results, "RESULTS", results)
    write_results.main()
    before = (tmp_path / "RESULTS.md").read_text()
    (results / "wake_latency.json").unlink()
    other = {**MACHINE, "cpu": "Other CPU", "threads": 1}
    args = {"experiment": "rule110_sleep", "passes": [1, 2], "targets": ["mlp"], "steps": 20, "warmup": 2}
    data = {
        "args": {**args, "threads": 1},
        "machine": other,
        "rows": [compile_row(1, True), compile_row(2, False)],
    }
    (results / "compile_rule110_sleep.json").write_text(json.dumps(data))
    write_results.main()
    page = (tmp_path / "RESULTS.md").read_text()
    assert before.split("## Wake latency")[1] in page  # both wake-latency tables, as they were
    assert (
        "Machines: Some CPU (AVX2), 2 cores; torch 2.13.0+cpu, 2 threads; Other CPU (AVX2), 2 cores; " in page
    )
    assert (
        "`python -m benchmarks.compile --experiment rule110_sleep --passes 1 2 --targets mlp --steps 20 "
        in page
    )
    assert "--warmup 2 --threads 1`, on Other CPU (AVX2), 1 thread." in page
    assert "| 1 | mlp | 200 | 180 | 1.10x | 15.0 | 2.5 | 15.4 / 2.9 | 2 | 0 | 825 / 138 steps |" in page
    assert "| 2 | mlp | 200 | 210 | 0.95x | 15.0 | 2.5 | 15.4 / 2.9 | 2 | 0 | never (no gain) |" in page
    write_results.main()  # nothing new: the page stays as it is
    assert (tmp_path / "RESULTS.md").read_text() == page
    # the compile section re-measured elsewhere: its old machine goes, the kept sections' stays
    (results / "compile_rule110_sleep.json").write_text(
        json.dumps({**data, "machine": {**other, "cpu": "Third CPU"}})
    )
    write_results.main()
    page = (tmp_path / "RESULTS.md").read_text()
    assert "Other CPU" not in page and "; Third CPU (AVX2), 2 cores; torch 2.13.0+cpu, 1 thread." in page
