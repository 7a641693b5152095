"""Error cases stop before any training with a message that names the bad value and what would be valid,
in process (``train`` / ``evaluate``) and through the ``lmsleep`` command (exit status, message, no epochs,
no checkpoints; most cases call the command's ``main`` in process, a few run it as a process). Also the
command's usage text."""

from __future__ import annotations

import concurrent.futures
import os
import re
from pathlib import Path

import pytest
import torch
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from lmsleep.evaluate import evaluate
from lmsleep.train import train
from lmsleep.utils.config import ConfigError

GARBAGE = bytes(range(256)) * 8


def bad_files(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "garbage.ckpt").write_bytes(GARBAGE)
    torch.save({"weights": torch.zeros(2)}, root / "not_lightning.ckpt")
    (root / "empty.ckpt").write_bytes(b"")
    (root / "a_folder").mkdir(exist_ok=True)
    torch.save({"state_dict": {}, "config": OmegaConf.create({"a": 1})}, root / "pickled.ckpt")
    # the names of the tiny transformer's weights, with another width
    torch.save({"state_dict": {"net.embed.weight": torch.zeros(8, 5)}}, root / "other_shape.ckpt")
    return {
        "missing": root / "nonexistent.ckpt",
        "garbage": root / "garbage.ckpt",
        "foreign": root / "not_lightning.ckpt",
        "empty": root / "empty.ckpt",
        "directory": root / "a_folder",
        "pickled": root / "pickled.ckpt",
        "shapes": root / "other_shape.ckpt",
    }


CKPT_MESSAGES = {
    "missing": r"ckpt_path=\S*nonexistent\.ckpt does not exist; pass the path of a \.ckpt file",
    "garbage": r"ckpt_path=\S*garbage\.ckpt is not a readable checkpoint",
    "foreign": r"ckpt_path=\S*not_lightning\.ckpt is not a Lightning checkpoint \(it holds no 'state_dict'\)",
    "empty": r"ckpt_path=\S*empty\.ckpt is an empty file \(0 bytes",
    "directory": r"ckpt_path=\S*a_folder is a directory; pass the path of a \.ckpt file inside it",
    "pickled": r"ckpt_path=\S*pickled\.ckpt holds pickled Python objects, which lmsleep does not load",
    "shapes": r"ckpt_path=\S*other_shape\.ckpt does not fit the configured model \(net\.embed\.weight is "
    r"\[8, 5\] there but \[8, 16\] here",
}

# (override, what the message must say: the bad value and the valid range)
TASK_SIZES = {
    "width": ("data.task.width=2", r"W=2 is too small; Rule 110 needs W >= 3"),
    "steps": ("data.task.steps=-1", r"steps t=\(-1, -1\) must be >= 0"),
    "window": ("data.task.window=0", r"window L must be >= 1 token, got 0"),
    "num_states": ("data.task.num_states=0", r"num_states=0 must be >= 1"),
}


# --- in process -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("group", "options"), [("model", "transformer"), ("experiment", "rule110_transformer")]
)
def test_unknown_config_name_in_process(compose, group, options):
    with pytest.raises(MissingConfigException, match=rf"Could not find '{group}/nope'") as info:
        compose([f"{group}=nope"])
    assert options in str(info.value)  # the available options are listed


@pytest.mark.parametrize("kind", CKPT_MESSAGES)
def test_bad_checkpoint_for_fit_in_process(compose_fit, tiny, tmp_path, kind):
    path = bad_files(tmp_path / "files")[kind]
    cfg = compose_fit("debug=limit", *tiny, f"ckpt_path={path}")
    with pytest.raises(ConfigError, match=CKPT_MESSAGES[kind]):
        train(cfg)
    assert not (tmp_path / "run").exists()  # stopped before the run folder, trainer or data existed


@pytest.mark.parametrize("kind", CKPT_MESSAGES)
def test_bad_checkpoint_for_test_in_process(compose_fit, tiny, tmp_path, kind):
    path = bad_files(tmp_path / "files")[kind]
    cfg = compose_fit(*tiny, f"ckpt_path={path}", config_name="test")
    with pytest.raises(ConfigError, match=CKPT_MESSAGES[kind]):
        evaluate(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", TASK_SIZES)
def test_impossible_task_size_in_process(compose_fit, tiny, tmp_path, case):
    override, message = TASK_SIZES[case]
    cfg = compose_fit("debug=limit", *tiny, override)
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert not (tmp_path / "run").exists()


# --- through the command ---------------------------------------------------------------------------------------
# name -> (arguments, expected exit status, regex the output must match)
CLI_CASES = {
    "fit model=nope": (["fit", "model=nope"], 1, r"Could not find 'model/nope'[\s\S]*transformer"),
    "fit experiment=nope": (
        ["fit", "experiment=nope"],
        1,
        r"Could not find 'experiment/nope'[\s\S]*rule110_transformer",
    ),
    **{
        f"fit ckpt {k}": (["fit", "ckpt_path={" + k + "}"], 2, "lmsleep: error: " + m)
        for k, m in CKPT_MESSAGES.items()
    },
    # (every kind goes through the same check for `test`; the in-process tests above cover them all)
    **{
        f"test ckpt {k}": (["test", "ckpt_path={" + k + "}"], 2, "lmsleep: error: " + CKPT_MESSAGES[k])
        for k in ("missing", "garbage", "foreign", "shapes")
    },
    "test without ckpt": (["test"], 2, r"lmsleep test needs ckpt_path=PATH"),
    "fit ckpt last without runs": (
        ["fit", "ckpt_path=last"],
        2,
        r"lmsleep: error: ckpt_path=last: no checkpoint found under \S*logs/fit/runs; pass the experiment",
    ),
    **{
        f"fit {k}": (["fit", o], 2, r"lmsleep: error: data\.task: [^\n]*" + m)
        for k, (o, m) in TASK_SIZES.items()
    },
    "fit max_steps": (
        ["fit", "trainer.max_steps=abc"],
        2,
        r"lmsleep: error: trainer\.max_steps='abc' must be an integer",
    ),
    "fit devices": (["fit", "trainer.devices=abc"], 2, r"lmsleep: error: trainer: `devices` selected"),
    "fit train_size": (
        ["fit", "data.train_size=0"],
        2,
        r"lmsleep: error: data\.train_size must be >= 1 sample, got 0",
    ),
    "fit sleep passes": (
        ["fit", "model.sleep.passes=0"],
        2,
        r"lmsleep: error: model: sleep\.passes must be >= 1",
    ),
    "fit run dir is a file": (
        ["fit", "hydra.run.dir={garbage}"],
        2,
        r"lmsleep: error: hydra\.run\.dir=\S*garbage\.ckpt is a file, not a folder",
    ),
    "fit run dir under a file": (
        ["fit", "hydra.run.dir={garbage}/run"],
        2,
        r"lmsleep: error: hydra\.run\.dir=\S*garbage\.ckpt/run cannot be written \(Not a directory",
    ),
    "test log dir cannot be created": (
        ["test", "ckpt_path={shapes}", "hydra.run.dir=/proc/lmsleep/run"],
        2,
        r"lmsleep: error: hydra\.run\.dir=/proc/lmsleep/run cannot be written",
    ),
    "unknown command": (["train"], 2, r"unknown command 'train'; use one of: fit, test, export-data"),
    "export split": (
        ["export-data", "split=dev"],
        2,
        r"split='dev' is not one of \['test', 'train', 'val'\]",
    ),
    "export n": (["export-data", "n=-1"], 2, r"n=-1 and start=0 must be >= 0"),
    "export out is a folder": (
        ["export-data", "out={directory}"],
        2,
        r"out=\S*a_folder is a folder; pass a file",
    ),
    "export out under a file": (
        ["export-data", "out={garbage}/x.jsonl"],
        2,
        r"out=\S*garbage\.ckpt/x\.jsonl cannot be written",
    ),
    "export out cannot be created": (
        ["export-data", "out=/proc/lmsleep/x.jsonl"],
        2,
        r"out=/proc/lmsleep/x\.jsonl cannot be written \(No such file or directory",
    ),
}


# These go through a real `lmsleep` process (exit status, stderr, no traceback at the top level): a Hydra error
# (status 1), a ConfigError found before Hydra starts and one raised inside the Hydra job (status 2). The rest run
# `lmsleep.cli.main` in process, which takes a second a case instead of a process's seconds of imports.
IN_A_PROCESS = ("fit model=nope", "fit ckpt garbage", "fit width", "unknown command")


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory, cli, cli_in_process, tiny):
    """Every case's (folder, result): those in IN_A_PROCESS as their own ``lmsleep`` processes, two at a time
    in threads, while this thread runs the others in process one by one."""
    root = tmp_path_factory.mktemp("cli_errors")
    files = bad_files(root / "files")

    def arguments(name: str) -> tuple[Path, list[str]]:
        args, _, _ = CLI_CASES[name]
        cwd = root / re.sub(r"\W+", "_", name)
        cwd.mkdir()
        args = [a.format(**files) for a in args]
        extra = [f"paths.log_dir={cwd}/logs", *tiny] if args[0] in ("fit", "test") else []
        # the case's own arguments last, so they win over the tiny defaults
        return cwd, [args[0], *extra, *args[1:]]

    def in_a_process(name: str):
        cwd, args = arguments(name)
        return cwd, cli(*args, cwd=cwd, timeout=120)

    results = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(in_a_process, name) for name in IN_A_PROCESS}
        for name in CLI_CASES:
            if name not in IN_A_PROCESS:
                cwd, args = arguments(name)
                results[name] = cwd, cli_in_process(*args, cwd=cwd)
        results.update({name: f.result() for name, f in futures.items()})
    return results


@pytest.mark.parametrize("name", CLI_CASES)
def test_cli_error(cli_results, name):
    _, status, message = CLI_CASES[name]
    cwd, result = cli_results[name]
    output = result.stdout + result.stderr
    assert result.returncode == status, output[-3000:]
    assert re.search(message, result.stderr), result.stderr[-3000:]
    assert "Traceback" not in output  # a message, not a stack trace
    assert "Epoch" not in output and "Sanity Checking" not in output
    assert not list(cwd.rglob("*.ckpt"))
    assert not list(cwd.rglob("events.out.tfevents.*"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_log_dir(cli, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = cli("fit", f"paths.log_dir={locked}/logs", cwd=tmp_path, timeout=60)
    finally:
        locked.chmod(0o755)
    assert result.returncode == 2
    assert re.search(r"lmsleep: error: paths\.log_dir=\S*locked/logs cannot be written", result.stderr)


def test_cli_usage(cli, tmp_path):
    result = cli("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: lmsleep COMMAND [hydra overrides]")
    for command in ("fit", "test", "generate", "export-data", "export-hf", "report"):
        assert re.search(rf"^\s+{command}\s", result.stdout, re.M)


def test_cli_without_a_command_is_a_usage_error(cli_in_process, tmp_path):
    result = cli_in_process(cwd=tmp_path)
    assert result.returncode == 2 and not result.stdout
    assert result.stderr.startswith("lmsleep: error: no command given\n\nusage: lmsleep COMMAND")


def test_cli_prints_the_composed_config(cli, tmp_path):
    result = cli("fit", "experiment=rule110_transformer", "data.task.width=12", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"^  task:\n(    .*\n)*?    width: 12$", result.stdout, re.M)
    assert "task_name: rule110_transformer" in result.stdout
    assert not list(tmp_path.iterdir())  # printing the config runs nothing


@pytest.mark.parametrize("flag_last", [False, True], ids=["m-first", "m-after-overrides"])
def test_cli_multirun(cli, tmp_path, flag_last):
    # `lmsleep fit debug=fdr -m seed=0,1` works as well as `lmsleep fit -m debug=fdr seed=0,1`.
    first = ["debug=fdr", "-m"] if flag_last else ["-m", "debug=fdr"]
    result = cli(
        "fit",
        *first,
        "seed=0,1",
        "model.net.dim=16",
        f"paths.log_dir={tmp_path}/logs",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "fit" / "multiruns").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for job in ("0", "1"):
        assert OmegaConf.load(sweep / job / "config.yaml").seed == int(job)
        assert f"run folder:  {sweep / job}\n" in result.stdout
