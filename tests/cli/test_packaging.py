"""lmsleep as an installed package: a wheel carries the configs and runs from any folder; users add their own
configs through LMSLEEP_CONFIG_DIR; pyproject.toml names every package and config folder; one version."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import lmsleep
from lmsleep.utils.config import ConfigError, with_user_searchpath
from tests.support import REPO, run

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

USER_ENV = "LMSLEEP_CONFIG_DIR"


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_pyproject_lists_every_package_and_config_folder():
    """A package or config folder missing from the explicit list would be missing from the wheel."""
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    src = REPO / "src"
    code = {".".join(p.parent.relative_to(src).parts) for p in src.glob("lmsleep/**/__init__.py")}
    configs = {"lmsleep.configs"} | {
        "lmsleep.configs." + ".".join(p.relative_to(REPO / "configs").parts)
        for p in (REPO / "configs").rglob("*")
        if p.is_dir()
    }
    assert listed == code | configs


def test_version_is_written_once():
    project = _pyproject()["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert _pyproject()["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "lmsleep.__version__"}
    from importlib.metadata import version

    assert version("lmsleep") == lmsleep.__version__


def test_wheel_runs_fit_and_export_outside_the_repository(tmp_path, tiny):
    """Build a wheel from a copy of the sources, install it (not editable) into a folder of its own, and run
    the installed ``lmsleep`` script from a folder outside the repository, reusing this venv's torch and
    lightning (PYTHONPATH puts the installed copy first)."""
    source = _mkdir(tmp_path / "source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("src", "configs"):
        shutil.copytree(
            REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    dist, target, elsewhere = tmp_path / "dist", tmp_path / "target", _mkdir(tmp_path / "elsewhere")
    built = run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", dist, source], timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = dist.glob("lmsleep-*.whl")
    installed = run([*pip, "install", "--no-deps", "--target", target, wheel], timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert (target / "lmsleep" / "configs" / "experiment" / "rule110_sleep.yaml").is_file()

    env, drop = {"PYTHONPATH": str(target)}, (USER_ENV,)
    script = target / "bin" / "lmsleep"

    def installed_cli(*args: str) -> subprocess.CompletedProcess:
        proc = run([sys.executable, script, *args], cwd=elsewhere, env=env, drop_env=drop, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    where = run(
        [sys.executable, "-c", "import lmsleep; print(lmsleep.__file__)"],
        cwd=elsewhere,
        env=env,
        drop_env=drop,
    )
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(target)  # the installed copy, not the checkout

    installed_cli("export-data", "data=rule110", "split=test", "n=3", "out=samples.jsonl")
    assert len((elsewhere / "samples.jsonl").read_text().splitlines()) == 3
    fit = installed_cli("fit", "debug=fdr", *tiny, "logger=csv")
    assert "test/acc" in fit.stdout
    assert list((elsewhere / "logs" / "fit" / "runs").iterdir())  # the run folder is where it was run


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_user_config_folder_adds_options(tmp_path, cli, monkeypatch):
    """A data config in LMSLEEP_CONFIG_DIR is selectable by name, beside lmsleep's own."""
    mine = _mkdir(tmp_path / "my configs" / "data")
    (mine / "rule110_w5.yaml").write_text("defaults:\n  - rule110\n  - _self_\ntask:\n  width: 5\n")
    monkeypatch.setenv(USER_ENV, str(tmp_path / "my configs"))
    out = cli("export-data", "data=rule110_w5", "n=1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert [len(state) for state in json.loads(out.stdout)["states"]] == [5] * 4


def test_user_searchpath_merges_with_a_command_line_searchpath(tmp_path, monkeypatch):
    a, b = _mkdir(tmp_path / "a"), _mkdir(tmp_path / "b")
    monkeypatch.setenv(USER_ENV, f"{a}{os.pathsep}{b}")
    assert with_user_searchpath(["x=1"]) == [f"hydra.searchpath=['file://{a}','file://{b}']", "x=1"]
    merged = with_user_searchpath([f"hydra.searchpath=[file://{b},pkg://other.configs]", "x=1"])
    assert merged == [f"hydra.searchpath=['file://{b}','pkg://other.configs','file://{a}']", "x=1"]
    monkeypatch.delenv(USER_ENV)
    assert with_user_searchpath(["x=1"]) == ["x=1"]


def test_user_config_folder_that_does_not_exist_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv(USER_ENV, str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"LMSLEEP_CONFIG_DIR names \S*nope, which is not a folder"):
        with_user_searchpath([])
