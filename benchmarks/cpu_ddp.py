"""One process with all cores against data-parallel processes of one thread each, on a CPU, same recipe.

A training step at d = 64 is bound by the count of small operations more than by arithmetic, and a second
thread inside one process speeds such operations up far less than 2x. DDP on CPU (gloo) runs
``--devices`` processes instead, each with ``cores // devices`` threads (Lightning's default) and
``batch / devices`` sequences, so the global batch, its samples (the distributed sampler deals the
sequential indices out in turn, so each global batch holds the same samples as one process's batch) and
the averaged gradient are the recipe's. Both sides run the real ``LitLM`` step as ``lmsleep fit`` builds it
(optimisers, clipping, schedule; no validation, test, checkpoints, loggers or callbacks), timed the way
``benchmarks/train_step.py`` times it (``benchmarks/common.py``: rank 0's steps, each from its batch's start
to its end, which the gradient all-reduce synchronises, median after ``--warmup``); the modes alternate,
so load on the machine hits both alike.

    python -m benchmarks.cpu_ddp --experiment rule110_sleep --passes 1 2
    python -m benchmarks.cpu_ddp --experiment depo_sleep --passes 2

Writes ``benchmarks/results/cpu_ddp_<experiment>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from benchmarks.common import RESULTS, machine, run_worker


def tokens_per_step(experiment: str, overrides: list[str]) -> tuple[int, int]:
    """``(batch size, tokens of one training batch)`` of the experiment as one process trains it."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from lmsleep.utils.config import config_dir

    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("fit", overrides=[f"experiment={experiment}", *overrides])
    batch = next(iter(instantiate(cfg.data).train_dataloader()))
    return int(cfg.data.batch_size), int(batch["input_ids"].numel())


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="rule110_sleep")
    p.add_argument("--passes", type=int, nargs="+", default=[1, 2], help="sleep passes N to measure")
    p.add_argument("--devices", type=int, default=2, help="DDP processes (cores // devices threads each)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=2, help="measurements per (mode, N), alternated")
    p.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")
    p.add_argument("--out", default=None, help="JSON output (default benchmarks/results/...)")
    args = p.parse_args(argv)
    args.precision = "32-true"
    batch, tokens = tokens_per_step(args.experiment, args.override)
    if batch % args.devices:
        p.error(f"the experiment's batch of {batch} does not split over --devices {args.devices}")
    cores = os.cpu_count() or 1
    modes = {
        "one process": [],
        f"ddp x {args.devices}": [
            "trainer=ddp",
            "trainer.accelerator=cpu",
            f"trainer.devices={args.devices}",
            f"data.batch_size={batch // args.devices}",
        ],
    }
    rows = []
    for n in args.passes:
        per_step = {mode: [] for mode in modes}
        for _ in range(args.repeats):
            for mode, extra in modes.items():
                # Lightning sets OMP_NUM_THREADS per rank; the worker's last JSON line is rank 0's.
                meas = run_worker(
                    "benchmarks.train_step", args, n, overrides=extra, env={"OMP_NUM_THREADS": None}
                )
                per_step[mode].append(meas["ms_per_step"] / 1e3)
                print(f"N = {n}, {mode}: {meas['ms_per_step']:.1f} ms/step", flush=True)
        one = statistics.median(per_step["one process"])
        for mode, times in per_step.items():
            ms = statistics.median(times)
            rows.append(
                {
                    "passes": n,
                    "mode": mode,
                    "ms_per_step": 1e3 * ms,
                    "each_repeat_ms": [round(1e3 * t, 1) for t in times],
                    "tokens_per_s": tokens / ms,
                    "speed_up": one / ms,
                }
            )
    import torch

    result = {
        "args": vars(args),
        "machine": machine(),
        "cores": cores,
        "batch_size": batch,
        "tokens_per_step": tokens,
        "torch": torch.__version__,
        "rows": rows,
    }
    out = Path(args.out or RESULTS / f"cpu_ddp_{args.experiment}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\n{args.experiment}, global batch {batch} ({tokens} tokens), {cores} cores, torch {torch.__version__}"
    )
    print("| N | mode | ms/step | tokens/s | speed-up |\n|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['passes']} | {r['mode']} | {r['ms_per_step']:.0f} | {r['tokens_per_s']:.0f} | "
            f"{r['speed_up']:.2f}x |"
        )
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
