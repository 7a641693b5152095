"""Training-step throughput of a named experiment: the real LitLM step, optionally against another revision.

Each measurement runs in a fresh process that builds the run as ``lmsleep fit`` does (``build_run``: seed,
data, model, trainer with its optimisers, clipping and schedule) with loggers, checkpoints, validation and
callbacks switched off, trains ``--warmup + --steps`` steps and times each step from the batch's start to
its end (forward, backward, optimiser steps, schedule, logging calls; data loading is reported apart).
``--against REV`` checks REV out into a temporary git worktree and runs the same measurement with that
revision's code and configs, alternating the two so that load on the machine hits both alike; the ratio of
the medians is the speed-up. The machine's fp32 and bf16 matmul peaks are measured in the same run.

    python benchmarks/train_step.py --experiment rule110_sleep --passes 1 2
    python benchmarks/train_step.py --experiment depo_sleep --passes 2 --against main
    python benchmarks/train_step.py --experiment rule110_sleep --passes 1 --against main --losses 50

``--against-precision P`` measures this tree a second time at precision P, alternated with the first, e.g.
whether ``bf16-mixed`` pays on this CPU (lmsleep refuses it on CPU; the benchmark lifts the refusal)::

    python benchmarks/train_step.py --passes 1 2 --precision bf16-mixed --against-precision 32-true

``--losses K`` also compares the training loss of the first K steps (same seed) between the revisions.
Writes ``benchmarks/results/train_step_<experiment>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Only the training steps: no validation, checkpoints, loggers, callbacks or progress output.
BARE_FIT = [
    "++trainer.limit_val_batches=0",
    "++trainer.num_sanity_val_steps=0",
    "++trainer.enable_progress_bar=false",
    "++trainer.enable_model_summary=false",
    "++trainer.enable_checkpointing=false",
    "~callbacks",
    "~logger",
]


# --- worker: one measurement in this process ----------------------------------------------------------------
def bare_fit(args: argparse.Namespace, steps: int):
    """``(cfg, datamodule, model, trainer, run_dir)`` of the experiment as ``lmsleep fit`` builds it, with
    ``args.src``'s code, for ``steps`` training steps and nothing else (no validation, checkpoints, loggers
    or callbacks); ``run_dir`` is a temporary folder to clean up after the fit."""
    sys.path.insert(0, str(Path(args.src).resolve()))
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    import lmsleep.train
    from lmsleep.utils.config import config_dir

    overrides = [
        f"experiment={args.experiment}",
        f"model.sleep.passes={args.n}",
        f"trainer.max_steps={steps}",
        f"trainer.precision={args.precision}",
        *BARE_FIT,
        *args.override,
    ]
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("fit", overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    run_dir = tempfile.TemporaryDirectory(prefix="lmsleep-bench-run-")
    with open_dict(cfg):
        cfg.paths.output_dir = run_dir.name
    if args.precision.startswith("bf16"):  # measure what lmsleep's CPU bf16 refusal rests on
        lmsleep.train.check_precision = lambda trainer_cfg: None
    datamodule, model, trainer, _ = lmsleep.train.build_run(cfg)
    return cfg, datamodule, model, trainer, run_dir


def step_timer():
    """A Lightning callback that times each training step from its batch's start to its end (forward,
    backward, optimiser steps, schedule) and the data-loading gap between steps; it keeps the losses."""
    import lightning as L
    import torch

    # On a GPU a step's work is queued: wait for it so that the times cover it (nothing to wait for on CPU).
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    class StepTimer(L.Callback):
        def __init__(self):
            self.step_s, self.gap_s, self.losses, self.tokens = [], [], [], []
            self._end = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            sync()
            now = time.perf_counter()
            if self._end is not None:
                self.gap_s.append(now - self._end)
            self.tokens.append(batch["input_ids"].numel())
            self._t0 = now

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            sync()
            self._end = time.perf_counter()
            self.step_s.append(self._end - self._t0)
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.losses.append(float(loss))

    return StepTimer()


def worker(args: argparse.Namespace) -> dict:
    import torch

    cfg, datamodule, model, trainer, run_dir = bare_fit(args, args.warmup + args.steps)
    timer = step_timer()
    trainer.callbacks.append(timer)
    trainer.fit(model=model, datamodule=datamodule)
    run_dir.cleanup()
    timed = timer.step_s[args.warmup :]
    return {
        "ms_per_step": 1e3 * statistics.median(timed),
        "data_ms_per_step": 1e3 * statistics.median(timer.gap_s[args.warmup :] or [0.0]),
        "tokens_per_step": statistics.median(timer.tokens),
        "seq_len": int(max(timer.tokens) // cfg.data.batch_size),
        "batch_size": int(cfg.data.batch_size),
        "losses": timer.losses,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


# --- parent: revisions, repeats, FLOPs and peaks ------------------------------------------------------------
def run_worker(
    src: Path, n: int, args: argparse.Namespace, steps: int | None = None, precision: str | None = None
) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--src",
        str(src),
        "--experiment",
        args.experiment,
        "--n",
        str(n),
        "--steps",
        str(args.steps if steps is None else steps),
        "--warmup",
        str(0 if steps is not None else args.warmup),
        "--precision",
        precision or args.precision,
    ]
    for o in args.override:
        cmd += ["--override", o]
    return run_json(cmd, src.parent, f"{src}, N={n}")


def run_json(cmd: list[str], cwd: Path, what: str) -> dict:
    """Run a benchmark worker process and return the JSON object on its last line of output (raises with
    the end of its stderr if it fails)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    if out.returncode:
        raise SystemExit(f"benchmark worker failed ({what}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def matmul_peaks(size: int = 2048, repeats: int = 5, budget_s: float = 0.5) -> dict[str, float]:
    """The best GFLOP/s of a square ``torch.mm`` in fp32 and bf16 on this machine, at sizes doubling from 256
    up to ``size`` while one product takes under ``budget_s`` (a CPU without bf16 units runs bf16 at about
    1 GFLOP/s, where one 2048-square product would take 20 s)."""
    import torch

    peaks = {}
    for dtype in (torch.float32, torch.bfloat16):
        best_rate, n = 0.0, 256
        while n <= size:
            a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
            t0 = time.perf_counter()
            torch.mm(a, b)  # warm-up, and the time that decides whether to repeat
            first = time.perf_counter() - t0
            best = first
            for _ in range(repeats - 1 if first < budget_s / repeats else 0):
                t0 = time.perf_counter()
                torch.mm(a, b)
                best = min(best, time.perf_counter() - t0)
            best_rate = max(best_rate, 2 * n**3 / best / 1e9)
            if first > budget_s / 8:  # the next size takes 8x longer
                break
            n *= 2
        peaks[str(dtype).removeprefix("torch.")] = best_rate
    return peaks


def flops_per_token(args: argparse.Namespace, n: int, seq_len: int) -> dict:
    """Analytic training FLOPs per token of the experiment's model at N = n (this tree's formula)."""
    sys.path.insert(0, str(ROOT / "src"))
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from lmsleep.models.flops import forward_flops
    from lmsleep.utils.config import build_data_and_model, config_dir

    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose(
            "fit", overrides=[f"experiment={args.experiment}", f"model.sleep.passes={n}", *args.override]
        )
    _, lit = build_data_and_model(cfg)
    count = forward_flops(lit.net, lit.sleep, seq_len)
    del instantiate
    return {
        "training_flops_per_token": count.training_per_token,
        "forward_by_component_per_token": {k: v / seq_len for k, v in count.forward.items()},
    }


def checkout(rev: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix="lmsleep-bench-")) / "tree"  # removed with the worktree
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev],
        check=True,
        capture_output=True,
    )
    return path


def remove_checkout(path: Path) -> None:
    """Remove a worktree made by :func:`checkout`, and its temporary folder."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], capture_output=True)
    shutil.rmtree(path.parent, ignore_errors=True)


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
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--src", default=str(ROOT / "src"), help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
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
                        run_worker(tree / "src", n, args, precision=precision)
                    )
        losses = {}
        if args.against and args.losses:
            for n in args.passes:
                a, b = (
                    run_worker(variants[name][0] / "src", n, args, steps=args.losses)["losses"]
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
    out = (
        Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"train_step_{args.experiment}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"args": vars(args), "peak_gflops": peak, "rows": rows, "losses": losses}, indent=1)
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
