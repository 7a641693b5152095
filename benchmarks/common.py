"""What the benchmarks share: the one way they time a training step, and the run, revision and FLOP helpers.

A training step is timed by :class:`StepTimes`: ``time.perf_counter`` around each step, the first ``warmup``
steps untimed, the median of the next ``steps``. Two kinds of step use it:

- the real ``LitLM`` step of a named experiment (``train_step``, ``step_floor``, ``cpu_ddp``): a fresh worker
  process builds the run as ``lmsleep fit`` does (:func:`bare_fit`) and the :class:`StepTimer` callback
  times each step from its batch's start to its end (forward, backward, optimiser steps, schedule, logging
  calls; the data-loading gap between steps apart); :func:`run_worker` starts such a process, with this
  tree's code or another revision's;
- the model alone on random tokens (``sleep_throughput``, ``wake_latency``): :func:`model_step` is the same
  step without Lightning (forward over the windows, next-token cross-entropy, backward, clipping, Muon +
  AdamW) and :func:`time_steps` times it in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

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


# --- the machine ----------------------------------------------------------------------------------------
def cpuinfo(field: str) -> str | None:
    """The value of the first ``field`` line of /proc/cpuinfo (``model name``, ``flags``), None if absent."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    return cpuinfo("model name") or platform.processor() or platform.machine()


# The vector and matrix units that decide fp32 and bf16 speed, by /proc/cpuinfo flag.
UNITS = [("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_bf16", "AVX-512 BF16"), ("amx_bf16", "AMX-BF16")]


def cpu_features() -> str:
    flags = cpuinfo("flags")
    if flags is None:
        return "unknown"
    found = [name for flag, name in UNITS if flag in set(flags.split())]
    return ", ".join(found) if found else "no AVX2"


def machine() -> dict:
    """The machine a result file records (``write_results`` prints it above the tables)."""
    import torch

    return {
        "cpu": cpu_name(),
        "features": cpu_features(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


# --- the one clock ------------------------------------------------------------------------------------------
def cuda_sync() -> None:
    """Wait for the GPU's queued work, so that wall-clock times cover it (nothing to wait for on CPU)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()


class StepTimes:
    """Seconds of each training step: the first ``warmup`` steps untimed, then ``steps`` timed ones (all the
    rest when ``steps`` is None). ``clock`` is ``time.perf_counter`` (a test passes its own)."""

    def __init__(
        self, warmup: int = 0, steps: int | None = None, clock: Callable[[], float] = time.perf_counter
    ):
        if warmup < 0 or (steps is not None and steps < 1):
            raise ValueError(f"need warmup >= 0 and steps >= 1, got warmup={warmup}, steps={steps}")
        self.warmup, self.steps, self.clock = warmup, steps, clock
        self.seconds: list[float] = []  # every step, warm-up included
        self._t0: float | None = None

    def start(self) -> None:
        cuda_sync()
        self._t0 = self.clock()

    def stop(self) -> None:
        if self._t0 is None:
            raise RuntimeError("StepTimes.stop() without start()")
        cuda_sync()
        self.seconds.append(self.clock() - self._t0)
        self._t0 = None

    @property
    def timed(self) -> list[float]:
        """The timed steps' seconds (after the warm-up, at most ``steps`` of them)."""
        end = None if self.steps is None else self.warmup + self.steps
        return self.seconds[self.warmup : end]

    @property
    def median_s(self) -> float:
        """Median seconds of the timed steps (raises if none was timed)."""
        if not self.timed:
            raise ValueError(f"no timed step: {len(self.seconds)} steps run, {self.warmup} of them warm-up")
        return statistics.median(self.timed)

    @property
    def median_ms(self) -> float:
        return 1e3 * self.median_s


def time_steps(
    step: Callable[[], object], steps: int, warmup: int, clock: Callable[[], float] = time.perf_counter
) -> StepTimes:
    """Run ``step()`` ``warmup + steps`` times in this process, timing each."""
    times = StepTimes(warmup, steps, clock)
    for _ in range(warmup + steps):
        times.start()
        step()
        times.stop()
    return times


# --- the model alone ----------------------------------------------------------------------------------------
def model_step(model, ids, sleep_cfg, optimizer) -> Callable[[], object]:
    """One training step of a ``HybridLM`` on ``ids [B, T]`` as ``LitLM`` takes it, without Lightning: the
    forward over the windows, next-token cross-entropy, backward, gradient clipping at 1 and ``optimizer``'s
    step (``lmsleep.lit.optim.build_optimizer``: Muon + AdamW). Returns the step as a function (returning its
    detached loss)."""
    import torch

    from lmsleep.models import run_windows

    def step() -> torch.Tensor:
        logits, _ = run_windows(model, ids, sleep_cfg)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss.detach()

    return step


# --- the real LitLM step, in a worker process ---------------------------------------------------------------
def bare_fit(args: argparse.Namespace, steps: int):
    """``(cfg, datamodule, model, trainer, run_dir)`` of ``args.experiment`` at N = ``args.n`` as ``lmsleep
    fit`` builds it, for ``steps`` training steps and nothing else (no validation, checkpoints, loggers or
    callbacks); ``run_dir`` is a temporary folder to clean up after the fit. The ``lmsleep`` imported is the
    one on the worker's path (:func:`run_worker` puts the measured tree's ``src`` first)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    try:  # the run helpers moved out of lmsleep.train; --against may measure a revision from before
        import lmsleep.run as runs
    except ImportError:
        import lmsleep.train as runs
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
        runs.check_precision = lambda trainer_cfg: None
    datamodule, model, trainer, _ = runs.build_run(cfg)
    return cfg, datamodule, model, trainer, run_dir


def step_timer(warmup: int = 0, steps: int | None = None):
    """A Lightning callback that times each training step with :class:`StepTimes` (``.times``), from its
    batch's start to its end, and keeps the data-loading gap between steps (``.gap_s``), the tokens of each
    batch and the losses."""
    import lightning as L

    class StepTimer(L.Callback):
        def __init__(self):
            self.times = StepTimes(warmup, steps)
            self.gap_s, self.losses, self.tokens = [], [], []
            self._end = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            now = time.perf_counter()
            if self._end is not None:
                self.gap_s.append(now - self._end)
            self.tokens.append(batch["input_ids"].numel())
            self.times.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.times.stop()
            self._end = time.perf_counter()
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.losses.append(float(loss))

    return StepTimer()


def step_worker(args: argparse.Namespace) -> dict | None:
    """The worker's measurement: ``args.warmup + args.steps`` steps of the bare fit, timed by
    :func:`step_timer`. Returns None on any rank but 0 of a data-parallel fit (rank 0 reports)."""
    import torch

    cfg, datamodule, model, trainer, run_dir = bare_fit(args, args.warmup + args.steps)
    timer = step_timer(args.warmup, args.steps)
    trainer.callbacks.append(timer)
    trainer.fit(model=model, datamodule=datamodule)
    run_dir.cleanup()
    if trainer.global_rank:
        return None
    return {
        "ms_per_step": timer.times.median_ms,
        "data_ms_per_step": 1e3 * statistics.median(timer.gap_s[args.warmup :] or [0.0]),
        "tokens_per_step": statistics.median(timer.tokens),
        "seq_len": int(max(timer.tokens) // int(cfg.data.batch_size)),
        "batch_size": int(cfg.data.batch_size),
        "losses": timer.losses,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def worker_args(parser: argparse.ArgumentParser) -> None:
    """The hidden options a worker process is started with (:func:`run_worker`)."""
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=1, help=argparse.SUPPRESS)


def parse_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """``parser.parse_args()``, except that a worker accepts the ``hydra.*`` settings Lightning appends when it
    starts the other ranks of a data-parallel fit by re-running the worker's command line."""
    args, extra = parser.parse_known_args()
    if extra and not (args.worker and all(a.startswith("hydra.") for a in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def run_worker(
    module: str,
    args: argparse.Namespace,
    n: int,
    *,
    tree: Path = ROOT,
    steps: int | None = None,
    warmup: int | None = None,
    precision: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    extra: list[str] | tuple[str, ...] = (),
) -> dict:
    """Start ``python -m <module> --worker`` for ``args.experiment`` at N = ``n`` with ``tree``'s ``lmsleep``
    (its ``src`` first on ``PYTHONPATH``, this tree's ``benchmarks`` after it, and not the working folder:
    ``PYTHONSAFEPATH``) in ``tree``, and return its JSON line. ``extra``: more of the module's own options."""
    cmd = [sys.executable, "-m", module, "--worker", "--experiment", args.experiment, "--n", str(n)]
    cmd += ["--steps", str(args.steps if steps is None else steps)]
    cmd += ["--warmup", str(args.warmup if warmup is None else warmup)]
    if precision or getattr(args, "precision", None):
        cmd += ["--precision", precision or args.precision]
    for o in [*args.override, *overrides]:
        cmd += ["--override", o]
    cmd += list(extra)
    path = os.pathsep.join([str(tree / "src"), str(ROOT)])
    return run_json(
        cmd, tree, f"{module}, {tree}, N={n}", {"PYTHONPATH": path, "PYTHONSAFEPATH": "1", **(env or {})}
    )


def run_json(cmd: list[str], cwd: Path, what: str, env: dict[str, str] | None = None) -> dict:
    """Run a benchmark worker process and return the JSON object on its last line of output (raises with
    the end of its stderr if it fails). ``env`` entries replace the environment's; a None value removes one."""
    full = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    full = {k: v for k, v in full.items() if v is not None}
    out = subprocess.run(cmd, capture_output=True, text=True, env=full, cwd=cwd)
    if out.returncode:
        raise SystemExit(f"benchmark worker failed ({what}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- revisions, FLOPs, peaks --------------------------------------------------------------------------------
def checkout(rev: str) -> Path:
    """``rev`` checked out into a temporary git worktree (remove it with :func:`remove_checkout`)."""
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


def flops_per_token(args: argparse.Namespace, n: int, seq_len: int) -> dict:
    """Analytic training FLOPs per token of ``args.experiment``'s model at N = n (this tree's formula)."""
    from hydra import compose, initialize_config_dir

    from lmsleep.models.flops import forward_flops
    from lmsleep.utils.config import build_data_and_model, config_dir

    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose(
            "fit", overrides=[f"experiment={args.experiment}", f"model.sleep.passes={n}", *args.override]
        )
    _, lit = build_data_and_model(cfg)
    count = forward_flops(lit.net, lit.sleep, seq_len)
    return {
        "training_flops_per_token": count.training_per_token,
        "forward_by_component_per_token": {k: v / seq_len for k, v in count.forward.items()},
    }


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
