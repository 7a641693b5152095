"""One process with all cores against data-parallel processes of one thread each, on a CPU, same recipe.

A training step at d = 64 is bound by the count of small operations more than by arithmetic, and a second
thread inside one process speeds such operations up far less than 2x. DDP on CPU (gloo) runs
``--devices`` processes instead, each with ``cores // devices`` threads (Lightning's default) and
``batch / devices`` sequences, so the global batch, its samples (the distributed sampler deals the
sequential indices out in turn, so each global batch holds the same samples as one process's batch) and
the averaged gradient are the recipe's. Both sides run the real ``lmsleep fit`` (optimisers, clipping,
schedule; no validation, test, checkpoints, loggers or callbacks). Start-up cost cancels: each measurement
runs a short and a long fit and takes the time per step of the difference; the modes alternate, so load
on the machine hits both alike.

    python benchmarks/cpu_ddp.py --experiment rule110_sleep --passes 1 2
    python benchmarks/cpu_ddp.py --experiment depo_sleep --passes 2

Writes ``benchmarks/results/cpu_ddp_<experiment>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from train_step import BARE_FIT  # this folder is on sys.path when a script here runs

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["test=false", *BARE_FIT]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from lmsleep.utils.config import config_dir

    with initialize_config_dir(config_dir(), version_base="1.3"):
        return hydra_compose("fit", overrides=overrides)


def tokens_per_step(experiment: str, overrides: list[str]) -> tuple[int, int]:
    """``(batch size, tokens of one training batch)`` of the experiment as one process trains it."""
    from hydra.utils import instantiate

    cfg = compose([f"experiment={experiment}", *overrides])
    batch = next(iter(instantiate(cfg.data).train_dataloader()))
    return int(cfg.data.batch_size), int(batch["input_ids"].numel())


def fit_seconds(overrides: list[str], log_dir: str) -> float:
    """Wall time of one ``lmsleep fit`` with these overrides (raises with its output if it fails)."""
    # The installed script: Lightning starts the other ranks by re-running this command line.
    script = Path(sys.executable).parent / "lmsleep"
    launcher = [str(script)] if script.exists() else [sys.executable, "-m", "lmsleep"]
    cmd = [*launcher, "fit", *overrides, *QUIET, f"paths.log_dir={log_dir}"]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # Lightning sets it per rank
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=log_dir, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"cpu_ddp: `{' '.join(cmd)}` failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return seconds


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="rule110_sleep")
    p.add_argument("--passes", type=int, nargs="+", default=[1, 2], help="sleep passes N to measure")
    p.add_argument("--devices", type=int, default=2, help="DDP processes (cores // devices threads each)")
    p.add_argument("--steps", type=int, nargs=2, default=[20, 80], metavar=("SHORT", "LONG"))
    p.add_argument("--repeats", type=int, default=2, help="measurements per (mode, N), alternated")
    p.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")
    p.add_argument("--out", default=None, help="JSON output (default benchmarks/results/...)")
    args = p.parse_args(argv)
    short, long = args.steps
    if not 0 < short < long:
        p.error(f"--steps SHORT LONG needs 0 < SHORT < LONG, got {short} {long}")
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
    with tempfile.TemporaryDirectory(prefix="lmsleep-bench-ddp-") as log_dir:
        for n in args.passes:
            per_step = {mode: [] for mode in modes}
            for _ in range(args.repeats):
                for mode, extra in modes.items():
                    base = [
                        f"experiment={args.experiment}",
                        f"model.sleep.passes={n}",
                        *extra,
                        *args.override,
                    ]
                    walls = [fit_seconds([*base, f"trainer.max_steps={s}"], log_dir) for s in (short, long)]
                    if walls[1] <= walls[0]:
                        raise SystemExit(
                            f"cpu_ddp: the {long}-step fit took no longer than the {short}-step one "
                            f"({walls[1]:.1f} s, {walls[0]:.1f} s): the machine's load swamps the steps; "
                            "measure on a quiet machine or with a larger --steps LONG"
                        )
                    per_step[mode].append((walls[1] - walls[0]) / (long - short))
                    print(f"N = {n}, {mode}: {1e3 * per_step[mode][-1]:.1f} ms/step", flush=True)
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
        "cores": cores,
        "batch_size": batch,
        "tokens_per_step": tokens,
        "torch": torch.__version__,
        "rows": rows,
    }
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"cpu_ddp_{args.experiment}.json")
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
