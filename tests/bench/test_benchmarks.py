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
