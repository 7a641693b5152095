"""A 2-process DDP fit of the sleeping hybrid (CPU, gloo) keeps the ranks in agreement.

Run through the CLI in a subprocess: under pytest, Lightning's DDP launcher would start rank 1 as another
pytest run. A test-only callback (``tests.support.models.DumpParams``, importable because the subprocess gets
the repository root on ``PYTHONPATH``) writes each rank's parameters and a hash of its batches at train end.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.support import repo_on_pythonpath
from tests.support.models import TINY_HYBRID

# one torch thread and a fixed seed, as for the model tests this sat beside
pytestmark = pytest.mark.usefixtures("one_thread_and_seed")
STEPS = 3


def test_two_process_ddp_fit_agrees_across_ranks(cli, tmp_path: Path):
    dump = tmp_path / "dump"
    args = [
        "fit",
        *TINY_HYBRID,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        f"trainer.max_steps={STEPS}",
        "trainer.max_epochs=10",
        "++trainer.limit_val_batches=0",
        "callbacks=none",
        "+callbacks.sleep_monitor._target_=lmsleep.callbacks.SleepMonitor",
        "+callbacks.sleep_monitor.every_n_steps=1",
        "+callbacks.dump._target_=tests.support.models.DumpParams",
        f"+callbacks.dump.dirpath={dump}",
        "model.sleep.passes=3",
        "test=false",
        f"paths.log_dir={tmp_path / 'logs'}",
    ]
    # PYTHONPATH: the ranks import the test-only callback from this checkout
    done = cli(*args, cwd=tmp_path, timeout=300, env={"PYTHONPATH": repo_on_pythonpath()})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    ranks = [torch.load(dump / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    assert all(r["global_step"] == STEPS for r in ranks)
    # each rank trained on its own shard of the data ...
    assert ranks[0]["batches"] != ranks[1]["batches"]
    # ... from the same start, and ends with the same weights (gradients all-reduced)
    names = ranks[0]["params"].keys()
    assert names == ranks[1]["params"].keys() and any(".mixer.A_log" in n for n in names)
    for name in names:
        assert torch.equal(ranks[0]["initial"][name], ranks[1]["initial"][name]), name
        assert torch.equal(ranks[0]["params"][name], ranks[1]["params"][name]), name
    moved = [n for n in names if not torch.equal(ranks[0]["params"][n], ranks[0]["initial"][n])]
    assert set(moved) == set(names), f"parameters that did not train: {set(names) - set(moved)}"
    # rank 0 alone wrote the sleep monitor's TensorBoard events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((tmp_path / "logs").rglob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("sleep_monitor/passes")] == [
        (s, 3.0) for s in range(STEPS)
    ]
