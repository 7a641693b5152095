"""Multi-node DDP on one machine: two "nodes" of one CPU process each, started separately as a scheduler
would start them (``trainer.num_nodes=2 trainer.devices=1`` with ``MASTER_ADDR``, ``MASTER_PORT`` and
``NODE_RANK``), rendezvous over loopback. Both train on disjoint samples and end with identical weights.

Each node runs in its own folder, as on separate machines; a test-only callback
(``tests.support.models.DumpParams``, importable through ``PYTHONPATH``) writes what each rank saw and ended
with. Subprocesses run in their own sessions and are killed as a group on timeout.
"""

from __future__ import annotations

import os
import socket
import subprocess

import torch

from tests.support import REPO, kill_group, repo_on_pythonpath, run, start_cli

STEPS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_over_loopback_train_disjoint_data_to_identical_weights(tmp_path, tiny):
    dump, port = tmp_path / "dump", free_port()
    args = [
        "fit",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.num_nodes=2",
        "trainer.devices=1",
        f"trainer.max_steps={STEPS}",
        "trainer.max_epochs=5",
        "++trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0",
        *tiny,  # batches of 4, small splits, a d = 16 model
        "data.train_size=32",
        "callbacks=none",
        "+callbacks.dump._target_=tests.support.models.DumpParams",
        f"+callbacks.dump.dirpath={dump}",
        "test=false",
    ]
    procs = []
    for node in (0, 1):
        cwd = tmp_path / f"node{node}"
        cwd.mkdir()
        env = dict(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            NODE_RANK=str(node),
            PYTHONPATH=repo_on_pythonpath(),
        )
        procs.append(
            start_cli(*args, f"paths.log_dir={cwd}/logs", cwd=cwd, env=env, stderr=subprocess.STDOUT)
        )
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=180)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                kill_group(proc)
                proc.communicate()
    for node, (proc, out) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, f"node {node}:\n{out[-4000:]}"
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in outputs[0] and "GLOBAL_RANK: 1, MEMBER: 2/2" in outputs[1]

    ranks = [torch.load(dump / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    assert all(r["global_step"] == STEPS for r in ranks)
    seen = [set(r["samples"]) for r in ranks]
    assert all(len(s) == STEPS * 4 for s in seen)  # every rank: its own 4 samples a step, none twice
    assert not seen[0] & seen[1]  # disjoint shards
    for name in ranks[0]["initial"]:
        assert torch.equal(ranks[0]["initial"][name], ranks[1]["initial"][name]), name
        assert torch.equal(ranks[0]["params"][name], ranks[1]["params"][name]), name
        assert not torch.equal(ranks[0]["params"][name], ranks[0]["initial"][name]) or "norm" in name, name


def test_slurm_script_resumes_in_its_run_folder(tmp_path):
    """scripts/slurm_fit.sbatch with a stand-in ``srun`` that prints what it would start: the run folder is
    the job's, the world is nodes x tasks, and ``ckpt_path=last`` is added once a checkpoint exists there."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\nprintf "%s\\n" "$@"\nexit "${FAKE_STATUS:-0}"\n')
    (bin_dir / "scontrol").write_text(f'#!/bin/bash\necho "$@" >> {tmp_path}/scontrol.txt\n')
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    env = dict(PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="4242", SLURM_NNODES="3")
    env["SLURM_NTASKS_PER_NODE"] = "8"

    def submit(status: int = 0) -> list[str]:
        done = run(
            ["bash", str(REPO / "scripts" / "slurm_fit.sbatch"), "experiment=paper/rule110_sleep"],
            cwd=tmp_path,
            env={**env, "FAKE_STATUS": str(status)},
            timeout=30,
        )
        assert done.returncode == status, done.stderr
        return done.stdout.splitlines()

    first = submit()
    assert first[1:4] == ["bash", "-c", 'exec lmsleep fit "$@" hydra.job.name="rank${SLURM_PROCID}"']
    assert {
        "trainer=ddp",
        "trainer.num_nodes=3",
        "trainer.devices=8",
        "hydra.run.dir=logs/slurm/4242",
    } <= set(first)
    assert first[-1] == "experiment=paper/rule110_sleep" and "ckpt_path=last" not in first
    (tmp_path / "logs" / "slurm" / "4242" / "checkpoints").mkdir(parents=True)
    (tmp_path / "logs" / "slurm" / "4242" / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert "ckpt_path=last" in submit()  # the requeued job goes on from its newest checkpoint
    assert not (tmp_path / "scontrol.txt").exists()
    submit(status=143)  # stopped by SIGTERM (time limit ahead) with a checkpoint: the script requeues the job
    assert (tmp_path / "scontrol.txt").read_text() == "requeue 4242\n"
