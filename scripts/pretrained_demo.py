#!/usr/bin/env python
"""The CPU-scale pretrained-model demonstration end to end, resumable (results/pretrained_demo).

    python scripts/pretrained_demo.py [--rev REV] [--log-dir logs] [--only pretrain|export|sleep|report]

1. a byte-level BPE tokenizer on the Python standard library (scripts/train_tokenizer.py), unless it exists;
2. pretraining, one fit at a time (scripts/study_queue.py, results/pretrained_demo/pretrain_queue.txt): a small
   Qwen3.5-architecture hybrid and a small Qwen3 (attention only), from configs, on the same text;
3. ``lmsleep export-hf`` of each final checkpoint into a transformers model folder, with the tokenizer beside
   it (what a hub download holds), unless the folder exists;
4. sleep fine-tuning of those folders on the GSM-style task through their tokenizer
   (results/pretrained_demo/sleep_queue.txt: N in {1, 2, 4}, and the attention-only model with inserted
   fast-weight blocks), one fit at a time;
5. ``lmsleep report`` of the fine-tuning runs, paired by seed with N = 1 of the same host:
   results/pretrained_demo/hybrid (the Qwen3.5-architecture model) and results/pretrained_demo/inserted.

Every step skips what is done, so running the script again after an interruption (or in the next working
session) goes on where it stopped. Folders: ``<log-dir>/demo/`` (tokenizer, model folders) and
``<log-dir>/queue/`` (the runs).
"""

from __future__ import annotations

import argparse
import runpy
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "pretrained_demo"
# The model folder each pretraining run is exported to, by its experiment (what sleep_queue.txt names).
EXPORTS = {
    "study/pretrained_demo/pretrain": "qwen3_5_hf",
    "study/pretrained_demo/pretrain_attention": "qwen3_hf",
}
STEPS = ("pretrain", "export", "sleep", "report")
# One report per question, each paired by seed with its host's N = 1: results/pretrained_demo/<name>.
REPORTS = {  # the folders of sleep_queue.txt's runs (not the pilots beside them in <log-dir>/queue)
    "hybrid": (
        "*pretrained_demo-sleep_model.net.path*qwen3_5_hf_model.sleep.passes-[0-9]_seed-[0-9]",
        "pretrained_demo_sleep hf qwen3_5_hf N=1",
    ),
    "inserted": (
        "*pretrained_demo-sleep_inserted_model.net.path*qwen3_hf_model.sleep.passes-[0-9]_seed-[0-9]",
        "pretrained_demo_sleep_inserted hf qwen3_hf +inserted N=1",
    ),
}


def run(*args: str) -> None:
    print("+", " ".join(args), flush=True)
    done = subprocess.run(args, cwd=ROOT)
    if done.returncode:
        raise SystemExit(done.returncode)


def queue(name: str, rev: str | None, log_dir: Path) -> None:
    extra = ["--rev", rev] if rev else []
    run(sys.executable, "scripts/study_queue.py", str(RESULTS / name), "--log-dir", str(log_dir), *extra)


def export(log_dir: Path) -> None:
    study_queue = runpy.run_path(str(ROOT / "scripts" / "study_queue.py"))
    from lmsleep.utils.checkpoint import newest_checkpoint

    for overrides in study_queue["read_queue"](RESULTS / "pretrain_queue.txt"):
        experiment = next(o.split("=", 1)[1] for o in overrides if o.startswith("experiment="))
        out = log_dir / "demo" / EXPORTS[experiment]
        if (out / "config.json").is_file():
            print(f"export: {out} exists", flush=True)
            continue
        folder = study_queue["run_dir"](log_dir, overrides)
        ckpt = newest_checkpoint([folder])
        if ckpt is None or not (folder / study_queue["DONE"]).is_file():
            raise SystemExit(f"pretrained_demo: {folder} has not finished; run the pretrain step first")
        run(sys.executable, "-m", "lmsleep", "export-hf", f"ckpt_path={ckpt}", f"out={out}")
        # A data=text run's tokenizer is lmsleep's own (plus <pad>), so export-hf writes none: the
        # tokenizer.json it was trained with goes beside the model, as in a hub folder.
        (out / "tokenizer.json").write_bytes((log_dir / "demo" / "tokenizer.json").read_bytes())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rev", default=None, help="git revision the fits run (scripts/study_queue.py --rev)")
    p.add_argument("--log-dir", type=Path, default=ROOT / "logs")
    p.add_argument("--only", choices=STEPS, action="append", help="run only these steps (repeatable)")
    args = p.parse_args(argv)
    log_dir = args.log_dir.expanduser().resolve()
    steps = args.only or STEPS
    tokenizer = log_dir / "demo" / "tokenizer.json"
    if "pretrain" in steps:
        if not tokenizer.is_file():
            stdlib = sysconfig.get_paths()["stdlib"]
            run(
                sys.executable,
                "scripts/train_tokenizer.py",
                str(tokenizer),
                stdlib,
                "--extra-words-of",
                "gsm_inf",
            )
        queue("pretrain_queue.txt", args.rev, log_dir)
    if "export" in steps:
        export(log_dir)
    if "sleep" in steps:
        queue("sleep_queue.txt", args.rev, log_dir)
    if "report" in steps:
        for name, (pattern, baseline) in REPORTS.items():
            runs = sorted(str(d) for d in (log_dir / "queue").glob(pattern))
            run(
                sys.executable,
                "-m",
                "lmsleep",
                "report",
                *runs,
                f"out={RESULTS / name}",
                f"baseline={baseline}",
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
