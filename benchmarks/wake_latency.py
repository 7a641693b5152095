"""Wake latency and memory of streaming decoding, and training cost against N (issue 4's benchmark).

For each model (the sleeping hybrid at N = 1 and N = 4, and the full-attention transformer) a stream is
pre-filled to each target length (1k, 8k, 64k tokens) in window-sized chunks, then ``--decode`` tokens are fed
one at a time. Reported per length: the median per-token wake latency (tokens whose step did not end a
window), the mean cost of a sleep (passes 2..N plus eviction, when a window fills), and the KV memory held.
Then the time of a training step against N (batch ``--batch`` of random tokens; the step every benchmark
times, ``benchmarks.common.model_step``: forward, cross-entropy, backward, clipping, Muon + AdamW; one
warm-up step, the median of ``--steps``) and of one sleep.

    python -m benchmarks.wake_latency                  # full table (several minutes)
    python -m benchmarks.wake_latency --quick          # 1k and 8k only
    python -m benchmarks.wake_latency --device cuda    # on a GPU (scripts/gpu_check.sh)
Writes ``benchmarks/results/wake_latency.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from benchmarks.common import machine, model_step, time_steps
from lmsleep.layers.attention import KVCache
from lmsleep.lit.optim import OptimConfig, build_optimizer
from lmsleep.models import HybridLM, SleepConfig, Stream
from lmsleep.models.sleep import SleepHooks


class SleepTimer(SleepHooks):
    def __init__(self):
        self.seconds: list[float] = []
        self._t0 = 0.0

    def on_sleep_start(self, window: int, passes: int) -> None:
        if torch.cuda.is_available():  # time the GPU's work, not its queueing
            torch.cuda.synchronize()
        self._t0 = time.perf_counter()

    def on_sleep_end(self, window: int, passes: int, state) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds.append(time.perf_counter() - self._t0)


def kv_bytes(stream: Stream) -> int:
    return sum(s.k.numel() * s.k.element_size() * 2 for s in stream.state.layers if isinstance(s, KVCache))


def build(args, layout: str) -> HybridLM:
    torch.manual_seed(0)
    ssm = {"rule": args.rule, "heads": args.heads, "head_dim": args.dim // args.heads}
    return HybridLM(args.vocab, dim=args.dim, layout=layout, heads=args.heads, ssm=ssm).eval().to(args.device)


def sync(args) -> None:
    """Wait for the GPU's queued work, so that wall-clock times cover it (nothing on CPU)."""
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


def stream_row(args, name: str, model: HybridLM, cfg: SleepConfig, length: int) -> dict:
    timer = SleepTimer()
    stream = Stream(model, cfg, batch_size=1, hooks=timer)
    gen = torch.Generator().manual_seed(length)
    prefill = length - args.decode - 8
    chunk = cfg.window if cfg.eviction != "none" else 4096
    t0 = time.perf_counter()
    for start in range(0, prefill, chunk):
        stream.feed(
            torch.randint(1, args.vocab, (1, min(chunk, prefill - start)), generator=gen).to(args.device)
        )
    sync(args)
    prefill_s = time.perf_counter() - t0
    for _ in range(8):  # warm-up: allocator and kernels settle before the timed tokens
        stream.feed(torch.randint(1, args.vocab, (1, 1), generator=gen).to(args.device))
    timer.seconds.clear()
    wake, peak_kv, peak_bytes = [], 0, 0
    for _ in range(args.decode):
        token = torch.randint(1, args.vocab, (1, 1), generator=gen).to(args.device)
        slept = len(timer.seconds)
        sync(args)
        t0 = time.perf_counter()
        stream.feed(token)
        sync(args)
        dt = time.perf_counter() - t0
        if len(timer.seconds) == slept:
            wake.append(dt)
        peak_kv, peak_bytes = max(peak_kv, stream.kv_length), max(peak_bytes, kv_bytes(stream))
    row = {
        "model": name,
        "length": length,
        "wake_ms_p50": 1e3 * statistics.median(wake),
        "wake_ms_mean": 1e3 * statistics.fmean(wake),
        "sleep_ms_mean": 1e3 * statistics.fmean(timer.seconds) if timer.seconds else 0.0,
        "peak_kv_tokens": peak_kv,
        "kv_mib": peak_bytes / 2**20,
        "prefill_s": prefill_s,
    }
    print(
        f"{name:<22} {length:>7} {row['wake_ms_p50']:>9.3f} {row['wake_ms_mean']:>9.3f} {row['sleep_ms_mean']:>9.2f} "
        f"{peak_kv:>8} {row['kv_mib']:>8.2f}",
        flush=True,
    )
    return row


def training_rows(args) -> list[dict]:
    torch.set_flush_denormal(True)  # as lmsleep fit trains: subnormal fast weights slow a CPU step ~5x
    ids = torch.randint(1, args.vocab, (args.batch, args.train_len)).to(args.device)
    rows = []
    print(
        f"\ntraining step (batch {args.batch} x {args.train_len} tokens, L = {args.window}) and one sleep, against N"
    )
    print(f"{'N':>3} {'step_ms':>9} {'x N=1':>7} {'sleep_ms':>9} {'x N=2':>7}")
    base_step = base_sleep = None
    for n in args.passes:
        cfg = SleepConfig(passes=n, window=args.window, eviction="hard")
        model = build(args, "attn,ssm,attn,ssm").train()  # every N from the same initial weights
        optimizer = build_optimizer(model, OptimConfig())
        step = time_steps(model_step(model, ids, cfg, optimizer), args.steps, warmup=1).median_s
        timer = SleepTimer()
        with torch.no_grad():
            for _ in range(3):
                model(ids[:, : 2 * args.window], cfg, hooks=timer)
        sleep_s = statistics.median(timer.seconds) if timer.seconds else 0.0
        base_step = base_step or step
        if n == 2:
            base_sleep = sleep_s
        rel_sleep = sleep_s / base_sleep if base_sleep else float("nan")
        rows.append({"passes": n, "step_ms": 1e3 * step, "sleep_ms": 1e3 * sleep_s})
        print(
            f"{n:>3} {1e3 * step:>9.1f} {step / base_step:>7.2f} {1e3 * sleep_s:>9.2f} {rel_sleep:>7.2f}",
            flush=True,
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 8192, 65536])
    p.add_argument("--quick", action="store_true", help="lengths 1k and 8k only")
    p.add_argument("--decode", type=int, default=256, help="tokens decoded one at a time at each length")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--rule", default="gated_delta", choices=["gated_delta", "mamba2"])
    p.add_argument("--vocab", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--train-len", type=int, default=512)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--passes", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "wake_latency.json"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lengths = [1024, 8192] if args.quick else args.lengths
    print(
        f"streaming decode, d = {args.dim}, L = {args.window}, rule {args.rule}, torch threads {torch.get_num_threads()}, "
        f"device {args.device}"
    )
    print(
        f"{'model':<22} {'length':>7} {'wake_p50':>9} {'wake_mean':>9} {'sleep_ms':>9} {'kv_tok':>8} {'kv_MiB':>8}"
    )
    models = [
        (
            "hybrid N=1",
            build(args, "attn,ssm,attn,ssm"),
            SleepConfig(passes=1, window=args.window, eviction="hard"),
        ),
        (
            "hybrid N=4",
            build(args, "attn,ssm,attn,ssm"),
            SleepConfig(passes=4, window=args.window, eviction="hard"),
        ),
        ("transformer (full)", build(args, "attn,attn,attn,attn"), SleepConfig(eviction="none")),
    ]
    stream_results = []
    with torch.inference_mode():
        for name, model, cfg in models:
            for length in lengths:
                stream_results.append(stream_row(args, name, model, cfg, length))
    train_results = training_rows(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"args": vars(args), "machine": machine(), "stream": stream_results, "training": train_results},
            indent=2,
        )
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
