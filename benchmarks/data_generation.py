"""Sample generation speed of the tasks at the paper's sizes (moved here from the tests: a time limit in a
test fails on a loaded machine without anything being wrong).

Generation runs in the data-loader workers, so it must keep up with training: at the paper's batch sizes
(128 Depo, 256 GSM-Infinite) a few ms a sample per worker is plenty. Val/test samples cost more than train
samples (a draw is kept only if its key hashes into the split's share).

    python -m benchmarks.data_generation               # ms per sample, train and test split
    python -m benchmarks.data_generation --samples 50
"""

from __future__ import annotations

import argparse
import time

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from lmsleep.utils.config import config_dir

# The tasks exactly as the paper-size experiments configure them (one source for their settings).
EXPERIMENTS = {
    "rule110 (paper)": ["experiment=paper/rule110_sleep"],
    "depo (paper)": ["experiment=paper/depo_sleep"],
    "gsm_inf (paper, modular)": ["experiment=paper/gsm_inf_sleep", "data.task.modular=true"],
    "gsm_inf (paper)": ["experiment=paper/gsm_inf_sleep", "data.task.modular=false"],
}


def paper_task(overrides: list[str]):
    with initialize_config_dir(config_dir(), version_base="1.3"):
        return instantiate(compose("fit", overrides=overrides).data.task)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=20, help="samples per task and split")
    args = parser.parse_args()
    print(f"{'task':<26} {'train ms/sample':>16} {'test ms/sample':>15}")
    for name, overrides in EXPERIMENTS.items():
        task = paper_task(overrides)
        row = []
        for split in ("train", "test"):
            task.sample(split, 0)  # warm-up (caches, first-call costs)
            start = time.perf_counter()
            for i in range(1, args.samples + 1):
                task.sample(split, i)
            row.append(1000 * (time.perf_counter() - start) / args.samples)
        print(f"{name:<26} {row[0]:>16.2f} {row[1]:>15.2f}")


if __name__ == "__main__":
    main()
