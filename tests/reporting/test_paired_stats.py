"""lmsleep report's paired statistics (baseline=LABEL) on hand-made raw files with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmsleep.reporting.paired_stats import bootstrap_interval, compare, sign_test
from lmsleep.reporting.report import main, report
from lmsleep.utils.config import ConfigError


@pytest.mark.parametrize(
    ("wins", "losses", "p"),
    [
        (5, 0, 2 / 2**5),  # 5 of 5 pairs: 0.0625, the smallest p five pairs can give
        (0, 9, 2 / 2**9),
        (3, 0, 0.25),
        (3, 2, 1.0),  # 2 * (1 + 5 + 10) / 32
        (8, 2, 2 * (1 + 10 + 45) / 2**10),
        (0, 0, 1.0),
    ],
)
def test_sign_test_known_values(wins, losses, p):
    assert sign_test(wins, losses) == pytest.approx(p, rel=1e-12)


def test_bootstrap_interval_known_cases_and_determinism():
    assert bootstrap_interval([0.25] * 4) == (0.25, 0.25)
    assert bootstrap_interval([-0.1]) == (-0.1, -0.1)
    # two differences 0 and 1: the resampled mean is 0, 0.5 or 1 with probability 1/4, 1/2, 1/4, so both
    # 2.5% tails hold an extreme value
    assert bootstrap_interval([0.0, 1.0]) == (0.0, 1.0)
    diffs = [0.1, 0.4, -0.05, 0.3, 0.2]
    lo, hi = bootstrap_interval(diffs)
    assert (lo, hi) == bootstrap_interval(diffs)  # seeded: the same files give the same table
    assert min(diffs) <= lo < sum(diffs) / 5 < hi <= max(diffs)
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_interval([])


def test_compare_pairs_shared_seeds_and_knows_which_side_is_better():
    base = {0: 0.2, 1: 0.3, 2: 0.25}
    acc = compare(base, {0: 0.5, 1: 0.3, 2: 0.1, 7: 0.9}, "test/acc_exact")
    assert acc["seeds"] == [0, 1, 2]  # seed 7 has no partner
    assert acc["diffs"] == pytest.approx([0.3, 0.0, -0.15])
    assert (acc["better"], acc["worse"], acc["ties"]) == (1, 1, 1)
    assert acc["p"] == 1.0 and acc["mean"] == pytest.approx(0.05)
    # for a loss, lower is better: three lower losses are three pairs in favour of the configuration
    loss = compare({0: 0.6, 1: 0.5, 2: 0.7}, {0: 0.1, 1: 0.2, 2: 0.3}, "test/loss")
    assert (loss["better"], loss["worse"], loss["p"]) == (3, 0, 0.25)
    assert compare({0: 1.0}, {1: 1.0}, "test/acc") is None


def write_run(raw: Path, label: str, seed: int, finals: dict[str, float], steps: int = 3) -> None:
    name = f"{label.replace(' ', '_').replace('=', '-')}_seed-{seed}"
    meta = {"label": label, "seed": seed, "settings": {"task_name": "d", "data": {"steps": steps}}}
    (raw / f"{name}.json").write_text(json.dumps(meta))
    rows = "".join(f"600,60000,{tag},{value!r}\n" for tag, value in finals.items())
    (raw / f"{name}.csv").write_text("step,tokens,tag,value\n" + rows)


@pytest.fixture
def raw(tmp_path) -> Path:
    """N = 1 (the baseline) and N = 4 over seeds 0-4, N = 2 over seeds 0, 1 and 9, N = 3 over seed 8 only."""
    folder = tmp_path / "raw"
    folder.mkdir()
    n1 = [0.10, 0.20, 0.15, 0.12, 0.30]
    n4 = [0.60, 0.90, 0.40, 0.52, 0.35]
    for seed, (a, b) in enumerate(zip(n1, n4, strict=True)):
        write_run(
            folder, "d hybrid N=1", seed, {"test/acc_exact": a, "test/loss": 0.6, "test/acc_exact@t=3": a}
        )
        write_run(
            folder,
            "d hybrid N=4",
            seed,
            {"test/acc_exact": b, "test/loss": 0.6 - b / 2, "test/acc_exact@t=3": b},
        )
    write_run(folder, "d hybrid N=2", 0, {"test/acc_exact": 0.05, "test/loss": 0.7})
    write_run(folder, "d hybrid N=2", 1, {"test/acc_exact": 0.25, "test/loss": 0.5})
    write_run(folder, "d hybrid N=2", 9, {"test/acc_exact": 0.99, "test/loss": 0.1})
    write_run(folder, "d hybrid N=3", 8, {"test/acc_exact": 0.99, "test/loss": 0.1})
    return folder


def paired_rows(summary: str) -> dict[tuple[str, str], list[str]]:
    start = summary.index("Paired by seed against the baseline d hybrid N=1")
    rows = [line for line in summary[start:].splitlines() if line.startswith("| d hybrid")]
    return {(c[0], c[1]): c for c in (line.strip("| ").split(" | ") for line in rows)}


def test_report_with_a_baseline_ends_the_summary_with_the_paired_statistics(raw, tmp_path):
    report([str(raw)], str(tmp_path / "out"), baseline="d hybrid N=1")
    summary = (tmp_path / "out" / "summary.md").read_text()
    rows = paired_rows(summary)
    # N = 4: 5 of 5 seeds ahead in exact accuracy, differences known, p = 2 / 32
    n4 = rows[("d hybrid N=4", "test/acc_exact")]
    assert n4[2:7] == [
        "0, 1, 2, 3, 4",
        "+0.500, +0.700, +0.250, +0.400, +0.050",
        "+0.380",
        "5 / 0 / 0",
        "0.0625",
    ]
    lo, hi = bootstrap_interval([0.5, 0.7, 0.25, 0.4, 0.05])
    assert n4[7] == f"[{lo:+.3f}, {hi:+.3f}]" and 0.05 <= lo < 0.38 < hi <= 0.7
    assert rows[("d hybrid N=4", "test/loss")][5:7] == ["5 / 0 / 0", "0.0625"]  # lower loss is better
    assert rows[("d hybrid N=4", "test/acc_exact@t=3")][5:7] == ["5 / 0 / 0", "0.0625"]  # per depth
    # N = 2 pairs on seeds 0 and 1 only (seed 9 has no partner): one better, one worse
    n2 = rows[("d hybrid N=2", "test/acc_exact")]
    assert n2[2:7] == ["0, 1", "-0.050, +0.050", "+0.000", "1 / 1 / 0", "1"]
    # N = 3 shares no seed: not listed; neither is the baseline against itself
    assert not any(label in ("d hybrid N=3", "d hybrid N=1") for label, _ in rows)


def test_the_summary_without_a_baseline_has_no_paired_section(raw, tmp_path):
    report([str(raw)], str(tmp_path / "out"))
    assert "Paired by seed" not in (tmp_path / "out" / "summary.md").read_text()


def test_baseline_from_the_command_line_and_an_unknown_baseline(raw, tmp_path):
    main([str(raw), f"out={tmp_path / 'cli'}", "baseline=d hybrid N=1"])
    assert "Paired by seed against the baseline d hybrid N=1" in (tmp_path / "cli" / "summary.md").read_text()
    with pytest.raises(
        ConfigError, match=r"baseline='N=1' is not a configuration.*d hybrid N=1; d hybrid N=2"
    ):
        report([str(raw)], str(tmp_path / "bad"), baseline="N=1")


def test_two_baselines_give_a_section_each_in_the_order_given(raw, tmp_path):
    main([str(raw), f"out={tmp_path / 'two'}", "baseline=d hybrid N=1", "baseline=d hybrid N=4"])
    summary = (tmp_path / "two" / "summary.md").read_text()
    first = summary.index("Paired by seed against the baseline d hybrid N=1")
    second = summary.index("Paired by seed against the baseline d hybrid N=4")
    assert first < second
    against_n4 = [
        line for line in summary[second:].splitlines() if line.startswith("| d hybrid N=1 | test/acc_exact |")
    ]
    assert len(against_n4) == 1  # the same pairs seen from the other side: every difference negated
    cells = against_n4[0].strip("| ").split(" | ")
    assert cells[3:6] == ["-0.500, -0.700, -0.250, -0.400, -0.050", "-0.380", "0 / 5 / 0"]
    assert paired_rows(summary[:second])[("d hybrid N=4", "test/acc_exact")][5] == "5 / 0 / 0"
