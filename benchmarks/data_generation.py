"""Sample generation speed of the tasks at the paper's sizes (moved here from the tests: a time limit in a
test fails on a loaded machine without anything being wrong).

Generation runs in the data-loader workers, so it must keep up with training: at the paper's batch sizes
(128 Depo, 256 GSM-Infinite) a few ms a sample per worker is plenty. Val/test samples cost more than train
samples (a draw is kept only if its key hashes into the split's share).

    python benchmarks/data_generation.py               # ms per sample, train and test split
    python benchmarks/data_generation.py --samples 50
"""

from __future__ import annotations

import argparse
import time

from lmsleep.data.depo import DepoTask
from lmsleep.data.gsm_inf import GSMInfTask
from lmsleep.data.rule110 import Rule110Task

TASKS = {
    "rule110 (paper)": lambda: Rule110Task(width=24, num_states=4, steps=32),
    "depo (paper)": lambda: DepoTask(
        min_nodes=10,
        max_nodes=75,
        tokens_per_node=2,
        node_vocab=50,
        edge_separator=False,
        context_tokens=300,
        num_queries=10,
        query_tokens=60,
        hops=[1, 16],
        window=75,
    ),
    "gsm_inf (paper, modular)": lambda: GSMInfTask(
        ops=[1, 8], context_tokens=[2000, 3300], window=2000, modular=True
    ),
    "gsm_inf (paper)": lambda: GSMInfTask(
        ops=[1, 8], context_tokens=[2000, 3300], window=2000, modular=False
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=20, help="samples per task and split")
    args = parser.parse_args()
    print(f"{'task':<26} {'train ms/sample':>16} {'test ms/sample':>15}")
    for name, make in TASKS.items():
        task = make()
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
