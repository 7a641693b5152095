"""Where a CPU training step's time goes, and how far an eager rewrite of the same operations could take it.

For an experiment and each N, three measurements of the real ``LitLM`` step (optimisers, clipping and
schedule included; no validation, checkpoints, loggers or callbacks), each in a fresh process:

- **step**: ms per step at the recipe's batch (median after warm-up), timed as ``benchmarks/train_step.py``
  times it (``benchmarks/common.py``);
- **matmuls**: every matrix product of one profiled step at the recipe's batch (``aten::mm``, ``bmm``,
  ``addmm``, ``baddbmm``, ``addbmm``, forward, backward and optimiser), replayed alone at its shapes with
  random fp32 inputs on warm caches, summed: a floor for the products themselves at this CPU's speed;
- **fixed**: the step at batch 1 less its own products (replayed the same way): the same operations on a
  64th (or less) of the data, i.e. what the step costs per operation (dispatch, autograd, allocation,
  thread hand-off) whatever the data. It still holds a batch of 1's elementwise work, so it errs high.

``rest = step - fixed - matmuls`` is the part that scales with the data outside the products (elementwise
ops, copies, concatenations, reductions; also whatever the products cost in the step beyond their replay on
warm caches). ``fixed + matmuls`` bounds what removing that rest alone could reach; going below it takes
fewer operations (fusion: a compiler or kernels) or faster products. ``--against REV`` measures REV's step
beside them (alternated), so a speed-up target such as half REV's step sits in the same table as the floor.

    python -m benchmarks.step_floor --experiment rule110_sleep --passes 1 2 --against aef85d1
    python -m benchmarks.step_floor --experiment depo_sleep --passes 2 --against aef85d1

Writes ``benchmarks/results/step_floor_<experiment>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from benchmarks.common import (
    RESULTS,
    bare_fit,
    checkout,
    flops_per_token,
    machine,
    parse_args,
    remove_checkout,
    run_worker,
    step_timer,
    worker_args,
)

MATMULS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::addbmm")


# --- worker: profile one step, replay its matrix products ---------------------------------------------------
def profile_worker(args: argparse.Namespace) -> dict:
    import lightning as L
    import torch
    from torch.profiler import ProfilerActivity, profile

    profiled_step = args.warmup + args.steps  # after the timed steps, so profiling slows none of them

    class ProfileOneStep(L.Callback):
        def __init__(self):
            self.prof, self.step = None, -1  # steps counted here: batch_idx restarts every epoch

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.step += 1
            if self.step == profiled_step:
                self.prof = profile(activities=[ProfilerActivity.CPU], record_shapes=True)
                self.prof.__enter__()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if self.step == profiled_step:
                self.prof.__exit__(None, None, None)

    cfg, datamodule, model, trainer, run_dir = bare_fit(args, profiled_step + 1)
    timer, profiler = step_timer(args.warmup, args.steps), ProfileOneStep()
    trainer.callbacks += [timer, profiler]
    trainer.fit(model=model, datamodule=datamodule)
    run_dir.cleanup()
    products, ops = products_and_ops(profiler.prof.events())
    replayed = replay(products, torch)
    return {
        "ms_per_step": timer.times.median_ms,  # the profiled step is not one of the timed ones
        "batch_size": int(cfg.data.batch_size),
        "tokens_per_step": statistics.median(timer.tokens),
        "aten_ops_per_step": ops,
        "matmul_calls": sum(c for c, _ in replayed.values()),
        "matmul_gflop": sum(c * flops(name, shapes) for (name, shapes), (c, _) in replayed.items()) / 1e9,
        "matmul_ms": 1e3 * sum(c * s for c, s in replayed.values()),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def products_and_ops(events) -> tuple[dict[tuple[str, tuple], int], int]:
    """The outermost matrix products of a profile, counted by ``(op, input shapes)``, and the count of
    outermost aten ops (those no other aten op called: what the step dispatched, forward and backward)."""
    products: dict[tuple[str, tuple], int] = {}
    ops = 0
    for e in events:
        if not e.name.startswith("aten::"):
            continue
        ancestors, parent = [], e.cpu_parent
        while parent is not None:
            ancestors.append(parent.name)
            parent = parent.cpu_parent
        ops += not any(a.startswith("aten::") for a in ancestors)
        # aten::linear and aten::matmul are not products themselves: the mm/addmm/bmm below them are.
        if e.name in MATMULS and not any(a in MATMULS for a in ancestors):
            key = (e.name, tuple(tuple(s) for s in e.input_shapes))
            products[key] = products.get(key, 0) + 1
    return products, ops


def flops(name: str, shapes: tuple) -> int:
    """2 m n k (times the batch) of one product, from its input shapes."""
    a, b = shapes[:2] if name in ("aten::mm", "aten::bmm") else shapes[1:3]
    batch = a[0] if len(a) == 3 else 1
    return 2 * batch * a[-2] * a[-1] * b[-1]


def replay(products: dict[tuple[str, tuple], int], torch, budget_s: float = 0.02) -> dict:
    """``{(op, shapes): (calls, seconds per call)}``: each product run alone with random inputs (median of
    repeats filling ``budget_s``, after warm-up)."""
    out = {}
    for (name, shapes), calls in products.items():
        fn = getattr(torch.ops.aten, name.removeprefix("aten::"))
        inputs = [torch.randn(s) if s else 1.0 for s in shapes]
        inputs = inputs[:2] if name in ("aten::mm", "aten::bmm") else inputs[:3]
        for _ in range(3):
            fn(*inputs)
        t0 = time.perf_counter()
        fn(*inputs)
        reps = max(5, int(budget_s / max(time.perf_counter() - t0, 1e-6)))
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn(*inputs)
            times.append(time.perf_counter() - t0)
        out[(name, shapes)] = (calls, statistics.median(times))
    return out


# --- parent ---------------------------------------------------------------------------------------------
def measure_profile(args: argparse.Namespace, n: int, extra: tuple[str, ...] = ()) -> dict:
    return run_worker("benchmarks.step_floor", args, n, overrides=extra)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="rule110_sleep")
    p.add_argument("--passes", type=int, nargs="+", default=[1, 2], help="sleep passes N to measure")
    p.add_argument("--steps", type=int, default=15, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=2, help="measurements per (kind, N), alternated")
    p.add_argument(
        "--against", default=None, help="git revision whose step is measured beside (target: half)"
    )
    p.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")
    p.add_argument("--out", default=None, help="JSON output (default benchmarks/results/...)")
    p.add_argument("--precision", default="32-true", help=argparse.SUPPRESS)  # a worker's; fp32 only
    worker_args(p)
    args = parse_args(p)
    if args.worker:
        print(json.dumps(profile_worker(args)))
        return

    tree = checkout(args.against) if args.against else None
    runs: dict[tuple[str, int], list[dict]] = {}
    try:
        for _ in range(args.repeats):
            for n in args.passes:
                runs.setdefault(("step", n), []).append(measure_profile(args, n))
                runs.setdefault(("batch 1", n), []).append(measure_profile(args, n, ("data.batch_size=1",)))
                if tree is not None:
                    runs.setdefault(("against", n), []).append(
                        run_worker("benchmarks.train_step", args, n, tree=tree)
                    )
    finally:
        if tree is not None:
            remove_checkout(tree)

    rows = []
    for n in args.passes:
        prof = runs[("step", n)]
        step = statistics.median(m["ms_per_step"] for m in prof)
        one = runs[("batch 1", n)]
        seq_len = int(prof[0]["tokens_per_step"] // prof[0]["batch_size"])
        fixed = statistics.median(m["ms_per_step"] - m["matmul_ms"] for m in one)
        matmul = statistics.median(m["matmul_ms"] for m in prof)
        row = {
            "N": n,
            "batch_size": prof[0]["batch_size"],
            "tokens_per_step": prof[0]["tokens_per_step"],
            "ms_per_step": step,
            "ms_per_step_each": [round(m["ms_per_step"], 1) for m in prof],
            "fixed_ms_per_step": fixed,
            "batch1_ms_each": [round(m["ms_per_step"], 1) for m in one],
            "batch1_matmul_ms_each": [round(m["matmul_ms"], 1) for m in one],
            "aten_ops_per_step": prof[0]["aten_ops_per_step"],
            "aten_ops_per_step_batch1": one[0]["aten_ops_per_step"],
            "matmul_calls": prof[0]["matmul_calls"],
            "matmul_gflop": prof[0]["matmul_gflop"],
            # A check on the capture: the model's analytic training FLOPs (lmsleep.models.flops), which
            # the products should hold nearly all of (plus the optimiser's, less attention's fused kernel).
            "analytic_training_gflop": flops_per_token(args, n, seq_len)["training_flops_per_token"]
            * prof[0]["tokens_per_step"]
            / 1e9,
            "matmul_ms": matmul,
            "rest_ms": step - fixed - matmul,
            "floor_ms": fixed + matmul,
            "speedup_if_rest_were_free": step / (fixed + matmul),
        }
        if tree is not None:
            base = statistics.median(m["ms_per_step"] for m in runs[("against", n)])
            row.update(
                {
                    "against_ms_per_step": base,
                    "against_ms_each": [round(m["ms_per_step"], 1) for m in runs[("against", n)]],
                    "speedup_vs_against": base / step,
                    "target_ms": base / 2,
                    "floor_speedup_vs_against": base / (fixed + matmul),
                }
            )
        rows.append(row)

    first = runs[("step", args.passes[0])][0]
    print(
        f"\n{args.experiment}: batch {first['batch_size']}, {first['tokens_per_step']:.0f} tokens a step, "
        f"torch {first['torch']}, {first['threads']} threads"
    )
    print(
        f"{'N':>2} {'step ms':>8} {'fixed ms':>9} {'matmul ms':>10} {'rest ms':>8} {'ops/step':>9} "
        f"{'floor ms':>9} {'step/floor':>10}"
        + (f" {args.against + ' ms':>12} {'target ms':>10}" if tree else "")
    )
    for r in rows:
        line = (
            f"{r['N']:>2} {r['ms_per_step']:>8.1f} {r['fixed_ms_per_step']:>9.1f} {r['matmul_ms']:>10.1f} "
            f"{r['rest_ms']:>8.1f} {r['aten_ops_per_step']:>9} {r['floor_ms']:>9.1f} "
            f"{r['speedup_if_rest_were_free']:>9.2f}x"
        )
        if tree is not None:
            line += f" {r['against_ms_per_step']:>12.1f} {r['target_ms']:>10.1f}"
        print(line)
    out = Path(args.out) if args.out else RESULTS / f"step_floor_{args.experiment}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "machine": machine(), "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
