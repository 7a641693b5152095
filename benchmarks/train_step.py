"""Training-step throughput of a named experiment: the real LitLM step, optionally against another revision.

Each measurement runs in a fresh process that builds the run as ``lmsleep fit`` does (``build_run``: seed,
data, model, trainer with its optimisers, clipping and schedule) with loggers, checkpoints, validation and
callbacks switched off, trains ``--warmup + --steps`` steps and times each step from the batch's start to
its end (forward, backward, optimiser steps, schedule, logging calls; data loading is reported apart): the
benchmarks' one way to time a step, ``benchmarks/common.py``.
``--against REV`` checks REV out into a temporary git worktree and runs the same measurement with that
revision's code and configs, alternating the two so that load on the machine hits both alike; the ratio of
the medians is the speed-up. The machine's fp32 and bf16 matmul peaks are measured in the same run.

    python -m benchmarks.train_step --experiment rule110_sleep --passes 1 2
    python -m benchmarks.train_step --experiment depo_sleep --passes 2 --against main
    python -m benchmarks.train_step --experiment rule110_sleep --passes 1 --against main --losses 50

``--against-precision P`` measures this tree a second time at precision P, alternated with the first, e.g.
whether ``bf16-mixed`` pays on this CPU (lmsleep refuses it on CPU; the benchmark lifts the refusal)::

    python -m benchmarks.train_step --passes 1 2 --precision bf16-mixed --against-precision 32-true

``--losses K`` also compares the training loss of the first K steps (same seed) between the revisions.
Writes ``benchmarks/results/train_step_<experiment>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from benchmarks.common import (
    RESULTS,
    ROOT,
    checkout,
    flops_per_token,
    machine,
    matmul_peaks,
    parse_args,
    remove_checkout,
    run_worker,
    step_worker,
    worker_args,
)

MODULE = "benchmarks.train_step"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="rule110_sleep")
    p.add_argument("--passes", type=int, nargs="+", default=[1, 2], help="sleep passes N to measure")
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=3, help="measurements per (revision, N), alternated")
    p.add_argument("--against", default=None, help="git revision to compare with (side by side)")
    p.add_argument("--losses", type=int, default=0, help="compare the first K steps' losses with --against")
    p.add_argument("--precision", default="32-true")
    p.add_argument(
        "--against-precision",
        default=None,
        help="also measure this tree at this precision (side by side), e.g. bf16-mixed against 32-true",
    )
    p.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")
    p.add_argument("--out", default=None, help="JSON output (default benchmarks/results/...)")
    worker_args(p)
    args = parse_args(p)
    if args.worker:
        result = step_worker(args)
        if result is not None:
            print(json.dumps(result))
        return

    # What is measured, by row label: (source tree, precision). The first row is the base of the speed-ups.
    variants = {"this tree": (ROOT, args.precision)}
    if args.against:
        variants[args.against] = (checkout(args.against), args.precision)
    if args.against_precision:
        variants[f"this tree, {args.against_precision}"] = (ROOT, args.against_precision)
    try:
        peaks = matmul_peaks()
        runs: dict[tuple[str, int], list[dict]] = {}
        for _ in range(args.repeats):
            for n in args.passes:
                for name, (tree, precision) in variants.items():
                    runs.setdefault((name, n), []).append(
                        run_worker(MODULE, args, n, tree=tree, precision=precision)
                    )
        losses = {}
        if args.against and args.losses:
            for n in args.passes:
                a, b = (
                    run_worker(MODULE, args, n, tree=variants[name][0], steps=args.losses, warmup=0)["losses"]
                    for name in ("this tree", args.against)
                )
                diff = [abs(x - y) for x, y in zip(a, b, strict=True)]
                losses[n] = {
                    "this_tree": a,
                    args.against: b,
                    "max_abs_diff": max(diff),
                    "max_rel_diff": max(d / abs(y) for d, y in zip(diff, b, strict=True)),
                }
        peaks_after = matmul_peaks()
    finally:
        if args.against:
            remove_checkout(variants[args.against][0])

    peak = {k: max(peaks[k], peaks_after[k]) for k in peaks}
    rows = []
    for n in args.passes:
        base = None
        for name in variants:
            meas = runs[(name, n)]
            ms = statistics.median(m["ms_per_step"] for m in meas)
            tok = meas[0]["tokens_per_step"]
            row = {
                "revision": name,
                "N": n,
                "ms_per_step": ms,
                "ms_per_step_each": [round(m["ms_per_step"], 1) for m in meas],
                "data_ms_per_step": statistics.median(m["data_ms_per_step"] for m in meas),
                "tokens_per_s": tok / ms * 1e3,
            }
            if name == "this tree":
                fl = flops_per_token(args, n, meas[0]["seq_len"])
                achieved = fl["training_flops_per_token"] * row["tokens_per_s"]
                row.update(fl)
                row["gflops_per_s"] = achieved / 1e9
                row["fraction_of_fp32_peak"] = achieved / 1e9 / peak["float32"]
                row["fraction_of_bf16_peak"] = achieved / 1e9 / peak["bfloat16"]
                base = row
            elif base is not None:
                base["speedup_vs_" + name] = row["ms_per_step"] / base["ms_per_step"]
            rows.append(row)

    first = next(iter(runs.values()))[0]
    print(
        f"\n{args.experiment}, precision {args.precision}, batch {first['batch_size']} x {first['seq_len']} "
        f"tokens, torch {first['torch']}, {first['threads']} threads; "
        f"matmul peak fp32 {peak['float32']:.0f} GFLOP/s, bf16 {peak['bfloat16']:.0f} GFLOP/s"
    )
    print(
        f"{'revision':<14} {'N':>2} {'ms/step':>9} {'tokens/s':>9} {'data ms':>8} {'MFLOP/tok':>10} "
        f"{'GFLOP/s':>8} {'%fp32':>6} {'%bf16':>6}  speed-up"
    )
    for r in rows:
        extra = (
            f"{r['training_flops_per_token'] / 1e6:>10.2f} {r['gflops_per_s']:>8.1f} "
            f"{100 * r['fraction_of_fp32_peak']:>6.1f} {100 * r['fraction_of_bf16_peak']:>6.1f}"
            if "gflops_per_s" in r
            else " " * 34
        )
        speed = "".join(f"  {v:.2f}x vs {k[11:]}" for k, v in r.items() if k.startswith("speedup_vs_"))
        print(
            f"{r['revision']:<14} {r['N']:>2} {r['ms_per_step']:>9.1f} {r['tokens_per_s']:>9.0f} "
            f"{r['data_ms_per_step']:>8.1f} {extra} {speed}"
        )
    for n, d in losses.items():
        print(
            f"N={n}: first {args.losses} training losses, max |diff| {d['max_abs_diff']:.3g}, "
            f"max relative {d['max_rel_diff']:.3g}"
        )
    out = Path(args.out) if args.out else RESULTS / f"train_step_{args.experiment}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"args": vars(args), "machine": machine(), "peak_gflops": peak, "rows": rows, "losses": losses},
            indent=1,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
