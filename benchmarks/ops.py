"""Forward+backward throughput of the fast-weight ops on this machine (CPU by default).

Measures, for T in {64, 256, 1024, 4096}, B*H = 32 (B = 4, H = 8), K = V = 64 (SSD: P = N = 64, G = 1),
fp32 and bf16 inputs:

- gated delta rule: ``recurrent``, ``chunked`` and flash-linear-attention's ``naive_chunk_gated_delta_rule``
  (the pure-torch chunked reference that ships with fla, when installed);
- ssd: ``recurrent`` and ``chunked``.

Throughput is tokens/s with tokens = B * T (each token updates H = 8 heads). One measurement = forward,
a scalar loss and backward through every input. Prints a table and writes JSON.

    python -m benchmarks.ops                 # full sweep -> benchmarks/results/ops.json
    python -m benchmarks.ops --quick         # T in {64, 256}, fewer repeats
    python -m benchmarks.ops --out x.json --device cuda   # adds the kernel backends on CUDA
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import machine
from lmsleep.ops import gated_delta_rule, ssd

B, H, K, V = 4, 8, 64, 64
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def gdr_inputs(T: int, dtype: torch.dtype, device: str) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(B, T, H, K, generator=gen)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    v = torch.randn(B, T, H, V, generator=gen)
    g = F.logsigmoid(torch.randn(B, T, H, generator=gen) + 3.0)
    beta = torch.rand(B, T, H, generator=gen)
    h0 = torch.randn(B, H, K, V, generator=gen)
    return [
        t.to(device=device, dtype=dtype if t is not h0 else torch.float32) for t in (q, k, v, g, beta, h0)
    ]


def ssd_inputs(T: int, dtype: torch.dtype, device: str) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, H, V, generator=gen)
    dt = F.softplus(torch.randn(B, T, H, generator=gen) - 2.0)
    A = -torch.linspace(0.5, 4.0, H)
    Bm = torch.randn(B, T, 1, K, generator=gen) * K**-0.5
    Cm = torch.randn(B, T, 1, K, generator=gen) * K**-0.5
    h0 = torch.randn(B, H, V, K, generator=gen)
    out = [t.to(device=device, dtype=dtype) for t in (x, dt, Bm, Cm)]
    return [out[0], out[1], A.to(device), out[2], out[3], h0.to(device)]


def gdr_impl(backend: str) -> Callable:
    def run(q, k, v, g, beta, h0):
        return gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True, backend=backend)

    return run


def fla_naive_chunk() -> Callable | None:
    try:
        from fla.ops.gated_delta_rule.naive import naive_chunk_gated_delta_rule
    except Exception:  # fla is an optional dev dependency
        return None

    def run(q, k, v, g, beta, h0):
        return naive_chunk_gated_delta_rule(q, k, v, g, beta, 64, None, h0, True)

    return run


def ssd_impl(backend: str) -> Callable:
    def run(x, dt, A, Bm, Cm, h0):
        return ssd(x, dt, A, Bm, Cm, initial_state=h0, output_final_state=True, backend=backend)

    return run


def time_fwd_bwd(fn: Callable, inputs: list[torch.Tensor], repeats: int, budget_s: float) -> list[float]:
    """Seconds per forward+backward: one warm-up, then up to ``repeats`` runs within ``budget_s``."""
    leaves = [t.detach().requires_grad_(True) for t in inputs]

    def once() -> float:
        sync = torch.cuda.synchronize if leaves[0].is_cuda else (lambda: None)
        sync()
        t0 = time.perf_counter()
        out, state = fn(*leaves)
        (out.float().square().mean() + state.float().square().mean()).backward()
        sync()
        for t in leaves:
            t.grad = None
        return time.perf_counter() - t0

    first = once()
    times: list[float] = []
    if first > budget_s:  # too slow to repeat: keep the (warm-up-free) single run
        return [first]
    start = time.perf_counter()
    while len(times) < repeats and (not times or time.perf_counter() - start < budget_s):
        times.append(once())
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="T in {64, 256} and fewer repeats")
    parser.add_argument("--out", default="benchmarks/results/ops.json", help="where to write the JSON")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (0: torch's default); 1 is steadier on a busy machine",
    )
    parser.add_argument(
        "--only", default="", help="comma-separated op:impl filter, e.g. gated_delta_rule:chunked"
    )
    parser.add_argument("--lengths", default="", help="comma-separated T values overriding the sweep")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget", type=float, default=6.0, help="seconds per config before repeats stop")
    parser.add_argument(
        "--max-recurrent-T", type=int, default=4096, help="skip the token-loop backends above this T"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lengths = [64, 256] if args.quick else [64, 256, 1024, 4096]
    if args.lengths:
        lengths = [int(t) for t in args.lengths.split(",")]
    repeats = 2 if args.quick else args.repeats

    impls: list[tuple[str, str, Callable, Callable]] = [
        ("gated_delta_rule", "recurrent", gdr_impl("recurrent"), gdr_inputs),
        ("gated_delta_rule", "chunked", gdr_impl("chunked"), gdr_inputs),
    ]
    naive = fla_naive_chunk()
    if naive is not None:
        impls.append(("gated_delta_rule", "fla_naive_chunk", naive, gdr_inputs))
    if args.device == "cuda":
        impls.append(("gated_delta_rule", "fla", gdr_impl("fla"), gdr_inputs))
    impls += [
        ("ssd", "recurrent", ssd_impl("recurrent"), ssd_inputs),
        ("ssd", "chunked", ssd_impl("chunked"), ssd_inputs),
    ]
    if args.device == "cuda":
        impls.append(("ssd", "mamba_ssm", ssd_impl("mamba_ssm"), ssd_inputs))

    if args.only:
        keep = set(args.only.split(","))
        impls = [i for i in impls if f"{i[0]}:{i[1]}" in keep]

    rows = []
    header = (
        f"{'op':<17}{'impl':<17}{'dtype':<6}{'T':>6}{'ms/iter':>11}{'tok/s':>12}{'x recurrent':>13}{'n':>4}"
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
        f"B={B} H={H} K=V={K}; tokens = B*T; forward+backward"
    )
    print(header)
    print("-" * len(header))
    for dname, dtype in DTYPES.items():
        for T in lengths:
            base: dict[str, float] = {}
            for op, impl, fn, make in impls:
                if impl == "recurrent" and T > args.max_recurrent_T:
                    continue
                times = time_fwd_bwd(fn, make(T, dtype, args.device), repeats, args.budget)
                sec = statistics.median(times)
                if impl == "recurrent":
                    base[op] = sec
                speedup = base[op] / sec if op in base else float("nan")
                row = {
                    "op": op,
                    "impl": impl,
                    "dtype": dname,
                    "T": T,
                    "B": B,
                    "H": H,
                    "K": K,
                    "V": V,
                    "ms": sec * 1e3,
                    "tokens_per_s": B * T / sec,
                    "speedup_vs_recurrent": speedup,
                    "repeats": len(times),
                }
                rows.append(row)
                print(
                    f"{op:<17}{impl:<17}{dname:<6}{T:>6}{sec * 1e3:>11.2f}{B * T / sec:>12.0f}"
                    f"{speedup:>13.1f}{len(times):>4}",
                    flush=True,
                )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "quick": args.quick,
    }
    out.write_text(json.dumps({"meta": meta, "machine": machine(), "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
