"""A checkpoint from elsewhere runs no code: its stored overrides are re-applied only when each is a plain
setting (src/lmsleep/utils/checkpoint.py). Every injection shape is refused by ``test``, ``generate``,
``export-hf`` and a resumed ``fit`` with one line naming the override, exit 2, before anything is instantiated: the file the
payload would write does not exist afterwards."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from lmsleep.utils.checkpoint import check_stored_overrides
from lmsleep.utils.config import ConfigError
from tests.support import REPO


def copy_payload(sentinel: Path) -> str:
    """A Hydra node that, once instantiated, copies the README to ``sentinel``."""
    return "{_target_:shutil.copyfile,_args_:['" + str(REPO / "README.md") + "','" + str(sentinel) + "']}"


def shapes(tmp: Path, sentinel: Path) -> dict[str, tuple[str, str]]:
    """name -> (stored override, what the error says about it)."""
    payload = copy_payload(sentinel)
    evil_group = tmp / "evil_configs" / "evil.yaml"
    evil_group.parent.mkdir(exist_ok=True)
    evil_group.write_text(f"# @package _global_\nmodel:\n  net:\n    evil: {payload}\n")
    return {
        "nested _target_ dict": (f"+model.net.evil={payload}", "adds a config node"),
        "dict value on an existing key": (f"model.net.dim={payload}", "config node \\(a dict\\)"),
        "force-added dict": (f"++model.net.evil={payload}", "config node \\(a dict\\)"),
        "key._target_": ("model.net._target_=shutil.copyfile", "its key names _target_"),
        "key._args_": ("model.net._args_=[1]", "its key names _args_"),
        "+node": ("+model.net.extra=1", "adds a config node \\(\\+\\)"),
        "++ new node": ("++model.net.extra=1", "does not have \\(an added node\\)"),
        "~node": ("~model.net.dim", "deletes a config node"),
        "group choice that is an absolute path": (
            f"experiment={evil_group.with_suffix('')}",
            "names no config of the experiment group",
        ),
        "group choice that climbs": (
            "experiment=../../evil_configs/evil",
            "names no config of the experiment group",
        ),
        "group choice that does not exist": ("data=evil", "names no config of the data group"),
        "_target_ inside a list": (
            f"model.net.layout=[attn,{payload}]",
            "config node \\(a dict\\)",
        ),
        "_target_ as a string in a list": ("model.net.layout=[attn,_target_]", "its value names _target_"),
        "resolver interpolation": ("model.net.dim=${oc.env:HOME}", "calls an interpolation resolver"),
        "reference to a node": ("model.net.dim=${data.task}", "refers to \\$\\{data.task\\}"),
        "replaces a node": ("model.net=5", "replaces a config node"),
        "package rename": ("data@model=rule110", "another package"),
        "sweep": ("seed=1,2", "is a sweep"),
        "trust_remote_code": ("model.net.trust_remote_code=true", "only the command line may set"),
    }


SHAPES = list(shapes(Path("/tmp"), Path("/tmp/x")))
TINY_OVERRIDES = ["data.batch_size=4", "data.train_size=16", "data.val_size=8", "data.test_size=8"]


def evil_checkpoint(path: Path, overrides: list[str]) -> Path:
    torch.save({"state_dict": {}, "global_step": 3, "lmsleep_run": {"overrides": overrides}}, path)
    return path


@pytest.mark.parametrize("command", ["test", "generate", "export-hf", "fit"])
@pytest.mark.parametrize("shape", SHAPES)
def test_stored_injection_is_refused(cli_in_process, tmp_path, command, shape):
    sentinel = tmp_path / "pwned"
    override, why = shapes(tmp_path, sentinel)[shape]
    ckpt = evil_checkpoint(tmp_path / "evil.ckpt", ["experiment=rule110_sleep", override])
    args = [command, f"ckpt_path={ckpt}", f"paths.log_dir={tmp_path}/logs"]
    if command == "generate":
        args.append("prompt=x")
    if command == "export-hf":
        args.append(f"out={tmp_path}/out")
    result = cli_in_process(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [ln for ln in result.stderr.splitlines() if ln.strip() and not ln.startswith("lmsleep: resuming")]
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("lmsleep: error: the checkpoint's stored override ")
    assert repr(override) in line  # names the override
    assert re.search(why, line), line
    assert "trust_checkpoint=true" in line or "only the command line" in line  # says how to proceed
    assert not sentinel.exists()


def test_trusted_checkpoint_still_never_sets_trust_remote_code(cli_in_process, tmp_path):
    ckpt = evil_checkpoint(tmp_path / "c.ckpt", ["model.hf.trust_remote_code=true"])
    result = cli_in_process("test", f"ckpt_path={ckpt}", "trust_checkpoint=true", cwd=tmp_path)
    assert result.returncode == 2
    assert "sets a key that only the command line may set" in result.stderr


def test_trust_checkpoint_takes_only_true_or_false(cli_in_process, tmp_path):
    ckpt = evil_checkpoint(tmp_path / "c.ckpt", [])
    result = cli_in_process("test", f"ckpt_path={ckpt}", "trust_checkpoint=yes", cwd=tmp_path)
    assert result.returncode == 2
    assert "trust_checkpoint=yes: pass trust_checkpoint=true or trust_checkpoint=false" in result.stderr


@pytest.mark.parametrize(
    "overrides",
    [
        ["experiment=rule110_sleep", "seed=3", "model.net.dim=16", "model.net.layout=[attn,ssm]"],
        ["data=depo", "model=hybrid", "data.task.max_nodes=20", "model.sleep.eviction=sliding"],
        ["++trainer.gradient_clip_val=0.5", "trainer.max_steps=5", "model.optim.muon_lr=1e-3", "tags=[a,b]"],
        [
            "model=hybrid",
            "model.net.ssm.rule=gated_delta",
            "model.sleep.window=${data.window}",
            "task_name=null",
        ],
    ],
)
def test_plain_settings_pass(overrides):
    check_stored_overrides(overrides, [], "fit")


def test_a_users_group_choice_makes_its_keys_settable(tmp_path):
    """The user's own ``data=depo`` decides which keys exist for the stored settings."""
    check_stored_overrides(["data.task.max_nodes=20"], ["data=depo"], "test")
    with pytest.raises(ConfigError, match="does not have"):
        check_stored_overrides(["data.task.max_nodes=20"], ["data=rule110"], "test")


def test_user_config_folders_hold_group_choices(tmp_path, monkeypatch):
    folder = tmp_path / "mine" / "experiment"
    folder.mkdir(parents=True)
    (folder / "my_run.yaml").write_text("# @package _global_\nseed: 7\n")
    with pytest.raises(ConfigError, match="experiment=my_run names no config of the experiment group"):
        check_stored_overrides(["experiment=my_run"], [], "fit")
    monkeypatch.setenv("LMSLEEP_CONFIG_DIR", str(tmp_path / "mine"))
    check_stored_overrides(["experiment=my_run"], [], "fit")


def test_trust_checkpoint_applies_a_self_written_added_node(tmp_path):
    check_stored_overrides(["+callbacks.steps.every_n_train_steps=5"], [], "fit", trust=True)
    with pytest.raises(ConfigError, match="adds a config node"):
        check_stored_overrides(["+callbacks.steps.every_n_train_steps=5"], [], "fit")


def test_trusted_payload_runs_which_is_why_it_is_refused_by_default(cli_in_process, tmp_path):
    """The control: the same stored node, trusted, is instantiated (it copies the file), so the refusals above
    are what keeps the sentinel away."""
    sentinel = tmp_path / "pwned"
    ckpt = evil_checkpoint(tmp_path / "evil.ckpt", [f"+model.net.evil={copy_payload(sentinel)}"])
    args = ["test", f"ckpt_path={ckpt}", f"paths.log_dir={tmp_path}/logs", *TINY_OVERRIDES]
    assert cli_in_process(*args, cwd=tmp_path).returncode == 2
    assert not sentinel.exists()
    result = cli_in_process(*args, "trust_checkpoint=true", cwd=tmp_path)
    assert result.returncode != 0  # HybridLM then rejects the unknown argument ...
    assert sentinel.exists()  # ... after Hydra has called the payload's target


@pytest.mark.parametrize("shape", ["target", "nested target", "args"])
def test_report_builds_only_known_tasks_from_a_run_folders_config(tmp_path, capsys, shape):
    """``lmsleep report RUN`` reads RUN/config.yaml: a task target that is not an lmsleep task, a nested
    node or a Hydra key there is refused with one line, and nothing is called."""
    from omegaconf import OmegaConf

    from lmsleep.cli import main

    sentinel = tmp_path / "pwned"
    call = {"_target_": "shutil.copyfile", "_args_": [str(REPO / "README.md"), str(sentinel)]}
    task = {
        "target": call,
        "nested target": {"_target_": "lmsleep.data.Rule110Task", "width": call},
        "args": {"_target_": "lmsleep.data.Rule110Task", "_args_": call["_args_"]},
    }[shape]
    run = tmp_path / "run"
    run.mkdir()
    config = {"model": {"net": {"layout": "attn"}}, "data": {"batch_size": 2, "task": task}, "trainer": {}}
    OmegaConf.save(OmegaConf.create(config), run / "config.yaml")
    with pytest.raises(SystemExit) as exit_:
        main(["report", str(run), f"out={tmp_path / 'out'}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"lmsleep: error: {run / 'config.yaml'}: data.task"), err
    assert not sentinel.exists()
