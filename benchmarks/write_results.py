"""Write ``benchmarks/RESULTS.md`` from the JSON files the benchmarks left in ``benchmarks/results/``.

    python -m benchmarks.write_results          # after `make bench` (which calls it)

The figure of the sleep-throughput study is copied next to RESULTS.md (``benchmarks/figures/``) so the
committed page shows it; the JSON files themselves stay in the ignored ``results/`` folder. A section whose
JSON file is not in ``results/`` (a checkout that ran one benchmark, not ``make bench``) keeps its text from
the current RESULTS.md, and the machines that page names stay named: re-running one benchmark rewrites its
own section only.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from benchmarks.common import machine

HERE = Path(__file__).resolve().parent
RESULTS, FIGURES = HERE / "results", HERE / "figures"


def train_step_section(data: dict, title: str) -> list[str]:
    args, peak = data["args"], data["peak_gflops"]
    against = args.get("against")
    cmd = (
        f"python -m benchmarks.train_step --experiment {args['experiment']} --passes "
        + " ".join(map(str, args["passes"]))
        + f" --steps {args['steps']} --warmup {args['warmup']} --repeats {args['repeats']}"
        + (f" --precision {args['precision']}" if args["precision"] != "32-true" else "")
        + (f" --against {against}" if against else "")
        + (f" --against-precision {args['against_precision']}" if args.get("against_precision") else "")
        + (f" --losses {args['losses']}" if against and args["losses"] else "")
    )
    lines = [f"### {title}", "", f"`{cmd}`", ""]
    lines += [
        f"Matmul peak measured in the same run: fp32 {peak['float32']:.0f} GFLOP/s, "
        f"bf16 {peak['bfloat16']:.0f} GFLOP/s.",
        "",
        "| revision | N | ms/step (median of repeats) | each repeat | tokens/s | data ms/step | "
        "training MFLOP/token | GFLOP/s | % fp32 peak | % bf16 peak | speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        flops = (
            f"{r['training_flops_per_token'] / 1e6:.2f} | {r['gflops_per_s']:.1f} | "
            f"{100 * r['fraction_of_fp32_peak']:.1f} | {100 * r['fraction_of_bf16_peak']:.1f}"
            if "gflops_per_s" in r
            else " | | | "
        )
        speed = ", ".join(f"{v:.2f}x vs {k[11:]}" for k, v in r.items() if k.startswith("speedup_vs_"))
        lines.append(
            f"| {r['revision']} | {r['N']} | {r['ms_per_step']:.1f} | {r['ms_per_step_each']} | "
            f"{r['tokens_per_s']:.0f} | {r['data_ms_per_step']:.1f} | {flops} | {speed} |"
        )
    for n, d in data.get("losses", {}).items():
        lines.append("")
        lines.append(
            f"First {len(d['this_tree'])} training losses at N = {n} (seed 0) against {against}: "
            f"max |difference| {d['max_abs_diff']:.3g}, max relative {d['max_rel_diff']:.3g}."
        )
    return lines + [""]


def step_floor_section(data: dict, title: str) -> list[str]:
    args = data["args"]
    against = args.get("against")
    cmd = (
        f"python -m benchmarks.step_floor --experiment {args['experiment']} --passes "
        + " ".join(map(str, args["passes"]))
        + f" --steps {args['steps']} --warmup {args['warmup']} --repeats {args['repeats']}"
        + (f" --against {against}" if against else "")
    )
    lines = [
        f"### {title}",
        "",
        f"`{cmd}`: fixed = the step at batch 1 less its matrix products (the cost of its operations "
        "whatever the data); matmuls = every product of one step at the recipe's batch replayed alone; "
        "rest = step - fixed - matmuls (elementwise ops, copies, concatenations at the recipe's batch, and "
        "what the products cost in the step beyond their warm-cache replay). Medians of the repeats.",
        "",
        "| N | ms/step | fixed ms | matmul ms (GFLOP; the model's analytic training GFLOP) | rest ms | "
        "aten ops/step | fixed + matmul ms | step / (fixed + matmul) |"
        + (
            f" {against} ms/step | speed-up vs {against} | target: half of it | rest must shrink to reach it |"
            if against
            else ""
        ),
        "|---|---|---|---|---|---|---|---|" + ("---|---|---|---|" if against else ""),
    ]
    for r in data["rows"]:
        line = (
            f"| {r['N']} | {r['ms_per_step']:.1f} | {r['fixed_ms_per_step']:.1f} | "
            f"{r['matmul_ms']:.1f} ({r['matmul_gflop']:.1f}; model {r['analytic_training_gflop']:.1f}) | "
            f"{r['rest_ms']:.1f} | "
            f"{r['aten_ops_per_step']} | {r['floor_ms']:.1f} | {r['speedup_if_rest_were_free']:.2f}x |"
        )
        if against:
            room = r["target_ms"] - r["floor_ms"]  # what the rest may cost at the target
            shrink = f"{r['rest_ms'] / room:.1f}x" if room > 0 else "out of reach: fixed + matmul exceed it"
            line += (
                f" {r['against_ms_per_step']:.1f} | {r['speedup_vs_against']:.2f}x | {r['target_ms']:.1f} | "
                f"{shrink} |"
            )
        lines.append(line)
    return lines + [""]


def throughput_section(data: dict) -> list[str]:
    a = data["args"]
    cmd = (
        "python -m benchmarks.sleep_throughput --passes "
        + " ".join(map(str, a["passes"]))
        + " --windows "
        + " ".join(map(str, a["windows"]))
        + f" --seq-len {a['seq_len']} --batch {a['batch']} --dim {a['dim']} --steps {a['steps']}"
    )
    lines = [
        "### Throughput against N and L (the paper's Fig. 6)",
        "",
        f"`{cmd}`: hybrid attn,ssm,attn,ssm (gated delta rule), d = {a['dim']}, hard eviction, "
        f"batch {a['batch']} x {a['seq_len']} random tokens, forward + backward + Muon/AdamW step.",
        "",
        "| L | N | tokens/s | ms/step | step time / N = 1 | training MFLOP/token | GFLOP/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        base = next((b for b in data["rows"] if b["window"] == r["window"] and b["passes"] == 1), None)
        rel = f"{r['s_per_step'] / base['s_per_step']:.2f}" if base else ""
        lines.append(
            f"| {r['window']} | {r['passes']} | {r['tokens_per_s']:.0f} | {1e3 * r['s_per_step']:.0f} | "
            f"{rel} | {r['training_flops_per_token'] / 1e6:.2f} | {r['gflops_per_s']:.1f} |"
        )
    png = RESULTS / "sleep_throughput.png"
    if png.is_file():
        FIGURES.mkdir(exist_ok=True)
        shutil.copy(png, FIGURES / png.name)
        lines += ["", f"![throughput against N and L](figures/{png.name})"]
    return lines + [""]


def cpu_ddp_section(data: dict) -> list[str]:
    a = data["args"]
    cmd = (
        f"python -m benchmarks.cpu_ddp --experiment {a['experiment']} --passes "
        + " ".join(map(str, a["passes"]))
        + f" --devices {a['devices']} --steps {a['steps']} --warmup {a['warmup']} --repeats {a['repeats']}"
    )
    lines = [
        f"### One process against {a['devices']} data-parallel processes: `experiment={a['experiment']}`",
        "",
        f"`{cmd}`: global batch {data['batch_size']} ({data['tokens_per_step']} tokens), {data['cores']} "
        "cores; the same global batch, samples and averaged gradient in both modes. Medians of the repeats.",
        "",
        "| N | mode | ms/step | each repeat | tokens/s | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        lines.append(
            f"| {r['passes']} | {r['mode']} | {r['ms_per_step']:.1f} | {r['each_repeat_ms']} | "
            f"{r['tokens_per_s']:.0f} | {r['speed_up']:.2f}x |"
        )
    return lines + [""]


def compile_section(data: dict) -> list[str]:
    a, m = data["args"], data["machine"]
    cmd = (
        f"python -m benchmarks.compile --experiment {a['experiment']} --passes "
        + " ".join(map(str, a["passes"]))
        + " --targets "
        + " ".join(a["targets"])
        + f" --steps {a['steps']} --warmup {a['warmup']}"
        + (f" --threads {a['threads']}" if a.get("threads") else "")
    )
    lines = [
        f"### `model.compile`: eager against compiled, `experiment={a['experiment']}`",
        "",
        f"`{cmd}`, on {m['cpu']} ({m['features']}), {m['threads']} thread{'s' if m['threads'] > 1 else ''}. For each N and set of targets two "
        "processes share one fresh Inductor cache: compile s as the run logs it (`perf/compile_s`), with the "
        "cache empty (cold) and as the first process left it (warm). Each process then alternates compiled and "
        "eager steps (`torch.compiler.set_stance`): speed-up = the median ratio of an eager step to the compiled "
        "step before it, averaged over the two processes; ms/step = the best step of each kind. Recompiles: "
        "graphs compiled after the first step. Pays back after: compile s / the time a compiled step saves.",
        "",
        "| N | targets | eager ms/step (best) | compiled ms/step (best) | speed-up (paired) | compile s, cold "
        "cache | compile s, warm cache | first step s, cold / warm | graphs | recompiles | pays back after "
        "(cold / warm) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        payback = (
            f"{r['payback_steps_cold']:.0f} / {r['payback_steps_warm']:.0f} steps"
            if r["payback_steps_cold"] is not None
            else "never (no gain)"
        )
        lines.append(
            f"| {r['N']} | {r['targets']} | {r['eager_ms']:.0f} | {r['compiled_ms']:.0f} | {r['speed_up']:.2f}x | "
            f"{r['compile_s_cold']:.1f} | {r['compile_s_warm']:.1f} | {r['first_step_s_cold']:.1f} / "
            f"{r['first_step_s_warm']:.1f} | {r['graphs']} | {r['recompiles']} | {payback} |"
        )
    return lines + [""]


def generic_section(title: str, rows: list[dict], cmd: str, note: str = "") -> list[str]:
    if not rows:
        return []
    keys = list(rows[0])
    lines = [
        f"### {title}",
        "",
        f"`{cmd}`" + (f": {note}." if note else ""),
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---|" * len(keys),
    ]
    for r in rows:
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in (r.get(k, "") for k in keys)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def wake_sections(wake: dict) -> list[str]:
    lines = generic_section("Streaming decode", wake["stream"], "python -m benchmarks.wake_latency")
    step = (  # files without a recorded machine predate the benchmarks' shared step (issue 30)
        "step_ms: forward, cross-entropy, backward, clipping and Muon + AdamW (`benchmarks.common.model_step`)"
        if "machine" in wake
        else "step_ms: forward and backward of a surrogate loss, no optimiser (measured before the "
        "benchmarks shared one step; a re-run measures `benchmarks.common.model_step`)"
    )
    return lines + generic_section(
        "Training cost against N", wake["training"], "python -m benchmarks.wake_latency", step
    )


MARK = "<!-- measured on: {} -->"  # after each section: its machine, for a later write that keeps the section


def machine_entry(m: dict) -> str:
    threads = f"{m['threads']} thread{'s' if m['threads'] != 1 else ''}"
    return f"{m['cpu']} ({m['features']}), {m['cores']} cores; torch {m['torch']}, {threads}"


def marked(lines: list[str], entry: str) -> list[str]:
    """``lines`` (sections, each ending in a blank line) with the mark of ``entry`` at the end of each."""
    out: list[str] = []
    for line in lines:
        if line.startswith("### ") and out and not out[-1]:
            out.insert(-1, MARK.format(entry))
        out.append(line)
    return out[:-1] + [MARK.format(entry), ""] if out and not out[-1] else out


def machine_line(recorded: list[dict], kept: list[str] = ()) -> str:
    """The machines the figures were measured on: ``kept`` (those of the sections kept from the previous page),
    then those the result files record (this machine for files written before they did)."""
    lines = list(kept)
    for m in recorded or ([] if kept else [machine()]):
        if machine_entry(m) not in lines:
            lines.append(machine_entry(m))
    return ("Machine: " if len(lines) == 1 else "Machines: ") + "; ".join(lines) + "."


def previous_page(path: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """The sections of an existing RESULTS.md (``### title`` -> its lines up to the next heading) and the
    machines each was measured on: its own mark, else (a page written before the marks) every machine the
    page's machine line names."""
    if not path.is_file():
        return {}, {}
    sections: dict[str, list[str]] = {}
    marked: dict[str, list[str]] = {}
    named: list[str] = []
    current = None
    for line in path.read_text().splitlines():
        if line.startswith(("Machine: ", "Machines: ")):
            # entries are "cpu (features), N cores; torch V, T threads", joined by "; "
            named = re.split(r"; (?=[^;]*\), \d+ cores)", line.split(": ", 1)[1].removesuffix("."))
        if line.startswith("#"):
            current = line[4:] if line.startswith("### ") else None
            if current is not None:
                sections[current] = []
        if current is not None:
            sections[current].append(line)
            found = re.fullmatch(MARK.format("(.*)"), line)
            if found:
                marked[current] = [found.group(1)]
    machines = {t: marked.get(t, named) for t in sections}
    return {t: lines + [""] if lines[-1] else lines for t, lines in sections.items()}, machines


def main() -> None:
    loaded: list[dict] = []
    previous, previous_machines = previous_page(HERE / "RESULTS.md")
    kept: list[str] = []  # the machines of the sections kept from the previous page

    def section(name: str, titles: tuple[str, ...], render) -> list[str]:
        """``render(data)`` of ``results/<name>`` (with its machine's mark); without that file, the sections of
        the previous page whose titles start with one of ``titles``, in that order."""
        path = RESULTS / name
        data = json.loads(path.read_text()) if path.is_file() else None
        if data:
            loaded.append(data)
            lines = render(data)
            return marked(lines, machine_entry(data["machine"])) if "machine" in data else lines
        old = [t for prefix in titles for t in previous if t.startswith(prefix)]
        kept.extend(m for t in old for m in previous_machines[t] if m not in kept)
        return [line for t in old for line in previous[t]]

    lines = ["## Training step", ""]
    for name, title in [
        ("train_step_rule110_sleep.json", "Rule 110 (`experiment=rule110_sleep`)"),
        ("train_step_depo_sleep.json", "Depo (`experiment=depo_sleep`)"),
        (
            "train_step_rule110_sleep_bf16.json",
            "Rule 110: `bf16-mixed` against fp32 (bf16 is refused on CPU; measured here)",
        ),
    ]:
        lines += section(name, (title,), lambda data, title=title: train_step_section(data, title))
    for name, title in [
        ("step_floor_rule110_sleep.json", "Where a step's time goes: Rule 110"),
        ("step_floor_depo_sleep.json", "Where a step's time goes: Depo"),
    ]:
        lines += section(name, (title,), lambda data, title=title: step_floor_section(data, title))
    for experiment in ("rule110_sleep", "depo_sleep"):  # not in make bench: when run
        lines += section(
            f"cpu_ddp_{experiment}.json",
            tuple(t for t in previous if t.startswith("One process against") and f"={experiment}`" in t),
            # timed per step (files of the fit-difference timing have no warmup)
            lambda data: cpu_ddp_section(data) if "warmup" in data["args"] else [],
        )
    lines += section("sleep_throughput.json", ("Throughput against N and L",), throughput_section)
    lines += section("compile_rule110_sleep.json", ("`model.compile`",), compile_section)
    ops = section(
        "ops.json",
        ("Forward + backward tokens/s by backend",),
        lambda ops: generic_section(
            "Forward + backward tokens/s by backend", ops["rows"], "python -m benchmarks.ops"
        ),
    )
    if ops:
        lines += ["## Fast-weight ops", ""] + ops
    wake = section("wake_latency.json", ("Streaming decode", "Training cost against N"), wake_sections)
    if wake:
        lines += ["## Wake latency", ""] + wake
    header = [
        "# Benchmark results",
        "",
        "Written by `make bench` (`python -m benchmarks.write_results`) from the JSON files in "
        "`benchmarks/results/`. Timings on a shared machine are noisy: compare ratios measured side by side "
        "in one run (`--against`), never figures from different days.",
        "",
        machine_line([d["machine"] for d in loaded if "machine" in d], kept),
        "",
    ]
    (HERE / "RESULTS.md").write_text("\n".join(header + lines).rstrip() + "\n")
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
