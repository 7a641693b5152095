"""Training throughput against sleep passes N and window L at a fixed sequence length (the paper's Fig. 6).

The hybrid (attn, ssm, attn, ssm; gated delta rule; hard eviction) trains on random tokens: one step is the
forward over all windows and passes, the backward and the Muon + AdamW step (``benchmarks.common.model_step``,
timed as every benchmark times a step: ``benchmarks.common.time_steps``). For every N in ``--passes`` and
L in ``--windows`` the median tokens/s of ``--steps`` timed steps (after warm-up) is reported, with the
model's training FLOPs per token (``lmsleep.models.flops``) and the achieved GFLOP/s, and both curves are
drawn to ``benchmarks/results/sleep_throughput.png``.

Expected shape: a window that sleeps costs its wake pass plus N - 1 passes of the looped blocks (no output
head), so the step time grows about linearly, ``t(N) ~ t(1) (1 + (N - 1) f)`` with ``f`` a little under 1
(the last window never sleeps, the head runs once), and tokens/s falls about as 1/N. N = 1 runs the windows
in one span (no window loop), which makes it relatively cheaper than the trend through N >= 2.

    python -m benchmarks.sleep_throughput                       # N = 1, 2, 4, 8 x L = 16, 64, 256
    python -m benchmarks.sleep_throughput --passes 1 2 --windows 64 --steps 3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.common import RESULTS, machine, model_step, time_steps
from lmsleep.lit.optim import OptimConfig, build_optimizer
from lmsleep.models import HybridLM, SleepConfig
from lmsleep.models.flops import forward_flops


def measure(args: argparse.Namespace, passes: int, window: int) -> dict:
    torch.manual_seed(0)
    vocab = 64
    ssm = {"rule": "gated_delta", "heads": 4, "head_dim": args.dim // 4}
    model = HybridLM(vocab, dim=args.dim, layout="attn,ssm,attn,ssm", heads=4, ssm=ssm)
    optimizer = build_optimizer(model, OptimConfig())
    cfg = SleepConfig(passes=passes, window=window, eviction="hard")
    ids = torch.randint(0, vocab, (args.batch, args.seq_len))
    sec = time_steps(model_step(model, ids, cfg, optimizer), args.steps, args.warmup).median_s
    tokens = args.batch * args.seq_len
    flops = forward_flops(model, cfg, args.seq_len).training_per_token
    return {
        "passes": passes,
        "window": window,
        "s_per_step": sec,
        "tokens_per_s": tokens / sec,
        "training_flops_per_token": flops,
        "gflops_per_s": flops * tokens / sec / 1e9,
    }


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    passes = sorted({r["passes"] for r in rows})
    windows = sorted({r["window"] for r in rows})
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for L in windows:
        pts = sorted((r["passes"], r["tokens_per_s"]) for r in rows if r["window"] == L)
        a.plot([p for p, _ in pts], [t for _, t in pts], "o-", label=f"L = {L}")
        t1 = dict(pts).get(1)
        if t1:
            a.plot(
                [p for p, _ in pts], [t1 / p for p, _ in pts], ":", color=a.lines[-1].get_color(), alpha=0.6
            )
    a.set(
        xlabel="sleep passes N",
        ylabel="training tokens/s",
        xscale="log",
        yscale="log",
        title="throughput against N (dotted: 1/N from N = 1)",
    )
    a.set_xticks(passes, [str(p) for p in passes])
    a.legend()
    for N in passes:
        pts = sorted((r["window"], r["tokens_per_s"]) for r in rows if r["passes"] == N)
        b.plot([w for w, _ in pts], [t for _, t in pts], "o-", label=f"N = {N}")
    b.set(
        xlabel="window L (tokens)",
        ylabel="training tokens/s",
        xscale="log",
        yscale="log",
        title="throughput against L",
    )
    b.set_xticks(windows, [str(w) for w in windows])
    b.legend()
    for ax in (a, b):  # only the measured values as ticks, no log-scale minor labels
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--passes", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--windows", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()
    torch.set_flush_denormal(True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for L in args.windows:
        for N in args.passes:
            rows.append(measure(args, N, L))
            r = rows[-1]
            print(
                f"L={L:>4} N={N}: {r['tokens_per_s']:>8.0f} tokens/s  {1e3 * r['s_per_step']:>8.1f} ms/step  "
                f"{r['training_flops_per_token'] / 1e6:.2f} MFLOP/token  {r['gflops_per_s']:.1f} GFLOP/s",
                flush=True,
            )
    print("\nstep time relative to N = 1 (1/N throughput would read N):")
    for L in args.windows:
        base = next((r for r in rows if r["window"] == L and r["passes"] == 1), None)
        if base:
            rel = ", ".join(
                f"N={r['passes']}: {r['s_per_step'] / base['s_per_step']:.2f}"
                for r in rows
                if r["window"] == L
            )
            print(f"  L={L}: {rel}")
    (out / "sleep_throughput.json").write_text(
        json.dumps(
            {
                "args": vars(args),
                "machine": machine(),
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "rows": rows,
            },
            indent=1,
        )
    )
    plot(rows, out / "sleep_throughput.png")
    print(f"wrote {out / 'sleep_throughput.json'} and {out / 'sleep_throughput.png'}")


if __name__ == "__main__":
    main()
