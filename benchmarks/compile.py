"""What ``model.compile`` costs and gains on this machine: the real LitLM step, eager and compiled, side by side.

For an experiment, each N and each set of compile targets, two worker processes build the run as ``lmsleep
fit`` does with ``model.compile=[targets]`` (no validation, checkpoints, loggers or callbacks) and share one
fresh Inductor cache folder (``TORCHINDUCTOR_CACHE_DIR``):

- the **cold** worker compiles with that folder empty (what a first run on a machine pays);
- the **warm** worker compiles again with the folder the cold one filled (what every later run pays: Dynamo
  still traces, Inductor and AOTAutograd load their compiled graphs from disk).

Each worker reports the compile seconds its run logs (``perf/compile_s``: torch's own compile-time totals up to
the first step's end) and the first step's wall time, then, after ``--warmup`` more steps, runs ``2 x
--steps`` steps alternating compiled and eager (``torch.compiler.set_stance("force_eager")`` on every other
step: the same process, model, data and optimiser), each timed as every benchmark times a step
(``benchmarks/common.py``). The speed-up is the median ratio of each compiled step to the eager step after it
(a slow spell of a shared machine that outlasts a step slows both alike), averaged over the two workers; the
step times shown are the best of each kind (the machine's speed when nothing held it up). Graphs compiled
after the first step are recompiles (a new input shape, a failed guard): a setting that keeps recompiling
never pays.

On a 2-core machine where another process holds a core, a step with two threads can take 50-100x its time
(each of its thousands of small parallel regions waits for a descheduled thread: 20-44 s against 0.4 s,
seen here), in eager and compiled steps alike; ``--threads 1`` measures without that.

    python -m benchmarks.compile --experiment rule110_sleep --passes 1 2
    python -m benchmarks.compile --passes 1 --targets mlp attn mlp,attn ssm

Writes ``benchmarks/results/compile_<experiment>.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS, StepTimes, bare_fit, machine, parse_args, run_worker, worker_args

MODULE = "benchmarks.compile"


# --- worker -----------------------------------------------------------------------------------------------
def compile_worker(args: argparse.Namespace) -> dict:
    """One run with ``model.compile=[args.targets]``: its compile seconds, first step, recompiles, and the
    compiled and eager steps alternated in this process."""
    import lightning as L
    import torch

    from lmsleep.models.compilation import graphs_compiled

    first_timed = 1 + args.warmup  # step index of the first alternated step

    class Alternate(L.Callback):
        def __init__(self):
            self.compiled, self.eager = StepTimes(), StepTimes()
            self.first_s, self.graphs_after_first, self._t0 = None, None, None

        def _times(self, batch_idx: int) -> StepTimes | None:
            if batch_idx < first_timed:
                return None
            return self.eager if (batch_idx - first_timed) % 2 else self.compiled

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            times = self._times(batch_idx)
            torch.compiler.set_stance("force_eager" if times is self.eager else "default")
            if times is None:
                self._t0 = time.perf_counter()
            else:
                times.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            times = self._times(batch_idx)
            if times is not None:
                times.stop()
            elif batch_idx == 0:
                self.first_s, self.graphs_after_first = time.perf_counter() - self._t0, graphs_compiled()

    if args.threads:
        torch.set_num_threads(args.threads)
    args.override = [*args.override, f"model.compile=[{args.targets}]"]
    cfg, datamodule, model, trainer, run_dir = bare_fit(args, first_timed + 2 * args.steps)
    timer = Alternate()
    trainer.callbacks.append(timer)
    trainer.fit(model=model, datamodule=datamodule)
    torch.compiler.set_stance("default")
    run_dir.cleanup()
    pairs = zip(timer.eager.seconds, timer.compiled.seconds, strict=False)
    return {
        # each compiled step against the eager step after it: a slow spell of the machine that lasts longer
        # than a step hits both alike, a median of such ratios then ignores the spells that do not
        "paired_speed_up": statistics.median(e / c for e, c in pairs),
        "compile_s": model.compile_s,
        "first_step_s": timer.first_s,
        "compiled_ms": timer.compiled.median_ms,
        "eager_ms": timer.eager.median_ms,
        "compiled_best_ms": 1e3 * min(timer.compiled.seconds),
        "eager_best_ms": 1e3 * min(timer.eager.seconds),
        "compiled_each_ms": [round(1e3 * s, 1) for s in timer.compiled.seconds],
        "eager_each_ms": [round(1e3 * s, 1) for s in timer.eager.seconds],
        "modules": len(model.compiled),
        "graphs_first_step": timer.graphs_after_first,
        "recompiles_after_first_step": graphs_compiled() - timer.graphs_after_first,
        "batch_size": int(cfg.data.batch_size),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


# --- driver -----------------------------------------------------------------------------------------------
def measure(args: argparse.Namespace, n: int, targets: str) -> dict:
    """The cold and the warm worker for N = ``n`` and ``targets``, sharing one fresh Inductor cache."""
    cache = tempfile.mkdtemp(prefix="lmsleep-bench-inductor-")
    try:
        runs = {}
        for kind in ("cold", "warm"):
            runs[kind] = run_worker(
                MODULE,
                args,
                n,
                # OMP_NUM_THREADS: the OpenMP loops of Inductor's C++ kernels as well as torch's own
                env={"TORCHINDUCTOR_CACHE_DIR": cache}
                | ({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}),
                extra=["--targets", targets, "--threads", str(args.threads or 0)],
            )
            r = runs[kind]
            print(
                f"N = {n}, [{targets}], {kind} cache: compiled in {r['compile_s']:.1f} s (first step "
                f"{r['first_step_s']:.1f} s); eager {r['eager_ms']:.0f} ms, compiled {r['compiled_ms']:.0f} ms "
                f"(best {r['eager_best_ms']:.0f}, {r['compiled_best_ms']:.0f}), paired {r['paired_speed_up']:.2f}x; "
                f"{r['recompiles_after_first_step']} recompiles after the first step",
                flush=True,
            )
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    cold, warm = runs["cold"], runs["warm"]
    # The speed-up: the paired ratios of both workers' steps (each worker alternated its own). Step times: the
    # best of each kind, the machine's speed when nothing else held it up (medians are in the workers' records).
    workers = (cold, warm)
    eager = min(r["eager_best_ms"] for r in workers)
    compiled = min(r["compiled_best_ms"] for r in workers)
    speed_up = statistics.mean(r["paired_speed_up"] for r in workers)
    gain_ms = eager - eager / speed_up
    return {
        "N": n,
        "targets": targets,
        "eager_ms": eager,
        "compiled_ms": compiled,
        "speed_up": speed_up,
        "compile_s_cold": cold["compile_s"],
        "compile_s_warm": warm["compile_s"],
        "first_step_s_cold": cold["first_step_s"],
        "first_step_s_warm": warm["first_step_s"],
        "graphs": cold["graphs_first_step"],
        "recompiles": max(r["recompiles_after_first_step"] for r in (cold, warm)),
        # steps after which a compiled run has caught up with an eager one at the best eager speed (None: never)
        "payback_steps_cold": cold["compile_s"] * 1e3 / gain_ms if gain_ms > 0 else None,
        "payback_steps_warm": warm["compile_s"] * 1e3 / gain_ms if gain_ms > 0 else None,
        "workers": {"cold": cold, "warm": warm},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="rule110_sleep")
    p.add_argument("--passes", type=int, nargs="+", default=[1, 2], help="sleep passes N to measure")
    p.add_argument(
        "--targets",
        nargs="+",
        default=["mlp"],
        help="compile target sets, each a comma list of mlp, attn, ssm (default: mlp, what model.compile=true "
        "compiles); a worker takes one set",
    )
    p.add_argument(
        "--steps", type=int, default=10, help="timed steps of each kind (compiled, eager) per worker"
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after the first (compiling) one")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads of the workers (default: torch's, as a run has); 1 on a machine shared with other work",
    )
    p.add_argument("--precision", default="32-true", help=argparse.SUPPRESS)  # fp32: what lmsleep runs on CPU
    p.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")
    p.add_argument("--out", default=None, help="JSON output (default benchmarks/results/...)")
    worker_args(p)
    args = parse_args(p)
    if args.worker:
        args.targets = args.targets[0]
        print(json.dumps(compile_worker(args)))
        return
    from lmsleep.models.compilation import parse_targets

    for targets in args.targets:
        parse_targets(targets.split(","))  # a bad name stops here, not in a worker minutes later
    rows = [measure(args, n, targets) for targets in args.targets for n in args.passes]
    print(
        f"\n{args.experiment}: eager and compiled steps alternated in each worker; compile seconds as logged"
    )
    print(
        "| N | targets | best eager ms | best compiled ms | paired speed-up | compile s cold | warm | recompiles |"
    )
    for r in rows:
        print(
            f"| {r['N']} | {r['targets']} | {r['eager_ms']:.0f} | {r['compiled_ms']:.0f} | {r['speed_up']:.2f}x | "
            f"{r['compile_s_cold']:.1f} | {r['compile_s_warm']:.1f} | {r['recompiles']} |"
        )
    out = Path(args.out) if args.out else RESULTS / f"compile_{args.experiment}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    measured_on = {
        **machine(),
        "threads": rows[0]["workers"]["cold"]["threads"],
    }  # the workers', not this one's
    out.write_text(json.dumps({"args": vars(args), "machine": measured_on, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
