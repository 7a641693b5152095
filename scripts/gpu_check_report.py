"""The report of ``scripts/gpu_check.sh``: one markdown file with every figure and the command behind it.

    python scripts/gpu_check_report.py --env DIR/env.json     # the machine: versions, GPU, bf16 matmul peak
    python scripts/gpu_check_report.py DIR [--dry-run]        # DIR/report.md from DIR's logs and JSON

The layout of ``report.md`` is described in docs/gpu.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

# Dense bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s (the sparse figures are twice these).
# The first name that occurs in torch.cuda.get_device_name() wins, so the specific names come first.
BF16_PEAK_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H200": 989.4,
    "H100": 989.4,
    "GH200": 989.4,
    "B200": 2250.0,
    "A100": 312.0,
    "L40S": 362.1,
    "A10G": 70.0,
    "L4": 121.0,
}
PACKAGES = ("torch", "triton", "fla-core", "flash-linear-attention", "mamba-ssm", "lightning")


def spec_peak(device_name: str) -> float | None:
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in device_name), None)


def measured_bf16_peak(cuda: bool) -> float:
    """The best TFLOP/s of a square bf16 ``torch.mm`` here (8192 on a GPU; 256 on CPU, for the dry run)."""
    import torch

    n, device = (8192, "cuda") if cuda else (256, "cpu")
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    best = float("inf")
    for _ in range(10 if cuda else 2):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.mm(a, b)
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12


def environment() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()})"
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "time_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "git_rev": rev or None,
        "python": sys.version.split()[0],
        "cuda": cuda,
        "cuda_version": torch.version.cuda,
        "device": name,
        "packages": versions,
        "bf16_peak_tflops_spec": spec_peak(name) if cuda else None,
        "bf16_peak_tflops_measured": measured_bf16_peak(cuda),
    }


# --- the report -------------------------------------------------------------------------------------------
def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def steps(folder: Path) -> dict[str, dict]:
    rows = {}
    for line in (folder / "steps.tsv").read_text().splitlines():
        name, status, seconds, command = line.split("\t", 3)
        rows[name] = {"status": status, "seconds": float(seconds), "command": command}
    return rows


def table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def fmt(x: float | None, spec: str = ".3g") -> str:
    return "n/a" if x is None else format(x, spec)


def command_line(step: dict | None) -> list[str]:
    if step is None:
        return ["(step not run)", ""]
    status = {"0": "passed", "skipped": "skipped"}.get(step["status"], f"FAILED (exit {step['status']})")
    return [f"`{step['command']}` ({status}, {step['seconds']:.0f} s)", ""]


def log_tail(folder: Path, name: str, lines: int, pattern: str | None = None) -> list[str]:
    """The last ``lines`` lines of ``logs/<name>.log`` that match ``pattern`` (all but Python's warnings)."""
    path = folder / "logs" / f"{name}.log"
    if not path.is_file():
        return []
    text = [t for t in path.read_text(errors="replace").splitlines() if not re.match(r"\s*/.*Warning|/", t)]
    if pattern:
        text = [t for t in text if re.search(pattern, t)]
    return ["```", *text[-lines:], "```", ""]


def train_section(folder: Path, env: dict, step: dict | None) -> list[str]:
    out = ["## Training step at the paper's size", "", *command_line(step)]
    data = load(folder / "train_step.json")
    if data is None:
        return out + ["No result (see logs/train.log).", ""]
    peak_spec, peak_meas = env.get("bf16_peak_tflops_spec"), env.get("bf16_peak_tflops_measured")
    rows = []
    for r in data["rows"]:
        if r.get("revision") != "this tree":
            continue
        achieved = r["training_flops_per_token"] * r["tokens_per_s"] / 1e12  # TFLOP/s
        rows.append(
            [
                r["N"],
                f"{r['ms_per_step']:.1f}",
                f"{r['tokens_per_s']:,.0f}",
                f"{r['training_flops_per_token'] / 1e6:.1f}",
                f"{achieved:.2f}",
                f"{100 * achieved / peak_spec:.2f} %" if peak_spec else "n/a",
                f"{100 * achieved / peak_meas:.2f} %" if peak_meas else "n/a",
            ]
        )
    args = data["args"]
    out += [
        f"{args['experiment']}, precision {args['precision']}, overrides {args['override']}; median of "
        f"{args['steps']} steps after {args['warmup']} warm-up steps. MFU = analytic training FLOPs per token "
        f"(lmsleep.models.flops) x tokens/s over the bf16 peak: the datasheet's dense peak "
        f"({fmt(peak_spec)} TFLOP/s) and the best bf16 matmul measured here ({fmt(peak_meas)} TFLOP/s).",
        "",
        *table(
            ["N", "ms/step", "tokens/s", "MFLOP/token", "TFLOP/s", "MFU (datasheet)", "of measured mm"], rows
        ),
        "",
    ]
    return out


def ops_section(folder: Path, step: dict | None) -> list[str]:
    out = ["## Kernels against the torch chunked path (forward + backward)", "", *command_line(step)]
    data = load(folder / "ops.json")
    if data is None:
        return out + ["No result (see logs/ops.log).", ""]
    by_key: dict[tuple, dict[str, float]] = {}
    for r in data["rows"]:
        by_key.setdefault((r["op"], r["dtype"], r["T"]), {})[r["impl"]] = r["ms"]
    rows = []
    for (op, dtype, T), impls in by_key.items():
        kernel = impls.get("fla", impls.get("mamba_ssm"))
        chunked = impls.get("chunked")
        rows.append(
            [
                op,
                dtype,
                T,
                fmt(chunked, ".2f"),
                fmt(kernel, ".2f"),
                f"{chunked / kernel:.1f}x" if kernel and chunked else "n/a",
            ]
        )
    meta = data["meta"]
    return out + [
        f"B = 4, H = 8, K = V = 64, device {meta['device']}, torch {meta['torch']}; median ms per call.",
        "",
        *table(["op", "dtype", "T", "chunked ms", "kernel ms", "kernel speed-up"], rows),
        "",
    ]


def wake_section(folder: Path, step: dict | None) -> list[str]:
    out = ["## Wake latency (streaming decode, one token at a time)", "", *command_line(step)]
    data = load(folder / "wake_latency.json")
    if data is None:
        return out + ["No result (see logs/wake.log).", ""]
    a = data["args"]
    rows = [
        [
            r["model"],
            f"{r['length']:,}",
            f"{r['wake_ms_p50']:.3f}",
            f"{r['wake_ms_mean']:.3f}",
            f"{r['sleep_ms_mean']:.2f}",
            f"{r['kv_mib']:.2f}",
        ]
        for r in data["stream"]
    ]
    train = [[r["passes"], f"{r['step_ms']:.1f}", f"{r['sleep_ms']:.2f}"] for r in data["training"]]
    return out + [
        f"d = {a['dim']}, {a['heads']} heads, L = {a['window']}, rule {a['rule']}, device {a.get('device', 'cpu')}; "
        f"{a['decode']} tokens decoded after the prefill. Wake latency must not grow with N.",
        "",
        *table(["model", "tokens", "wake ms p50", "wake ms mean", "sleep ms", "KV MiB"], rows),
        "",
        f"Training step (batch {a['batch']} x {a['train_len']} tokens) and one sleep, against N:",
        "",
        *table(["N", "step ms", "sleep ms"], train),
        "",
    ]


def report(folder: Path, dry_run: bool) -> str:
    env = load(folder / "env.json") or {}
    st = steps(folder)
    packages = ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items() if v)
    lines = [
        f"# lmsleep GPU check{' (dry run on CPU, tiny sizes)' if dry_run else ''}",
        "",
        f"{env.get('time_utc', '?')}, git {env.get('git_rev', '?')}, {env.get('device', '?')}, "
        f"CUDA {env.get('cuda_version')}, Python {env.get('python', '?')}; {packages}.",
        "",
        "## Steps",
        "",
        *table(
            ["step", "status", "seconds", "command"],
            [[n, s["status"], f"{s['seconds']:.0f}", f"`{s['command']}`"] for n, s in st.items()],
        ),
        f"\nTotal {sum(s['seconds'] for s in st.values()):.0f} s.",
        "",
        "## Tests",
        "",
        "`make test-gpu`:",
        "",
        *command_line(st.get("test-gpu")),
        *log_tail(folder, "test-gpu", 3, r"passed|failed|skipped|error"),
        "Kernel tests, native (relative max error of kernel against torch chunked, per case):",
        "",
        *command_line(st.get("kernels")),
        *log_tail(folder, "kernels", 40, r"^(ops|model) |passed|failed"),
        *train_section(folder, env, st.get("train")),
        *ops_section(folder, st.get("ops")),
        *wake_section(folder, st.get("wake")),
        "## A 2-minute fit",
        "",
        *command_line(st.get("fit")),
        *log_tail(folder, "fit", 25),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", nargs="?", help="the gpu_check output folder")
    p.add_argument("--env", help="write the machine's description to this JSON file and stop")
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args()
    if args.env:
        Path(args.env).write_text(json.dumps(environment(), indent=1))
        return
    if not args.folder:
        p.error("give the gpu_check output folder (or --env FILE)")
    folder = Path(args.folder)
    (folder / "report.md").write_text(report(folder, args.dry_run))


if __name__ == "__main__":
    main()
