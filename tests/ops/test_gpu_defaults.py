"""The GPU defaults (docs/gpu.md): ``trainer=gpu`` and the paper recipes take ``backend: auto`` and
bf16-mixed; an explicit kernel backend that cannot run stops before any work with one line naming the
install command; mamba-ssm's Triton kernels import without its CUDA extension."""

from __future__ import annotations

import sys

import pytest
import torch

from lmsleep.ops import backend as backend_mod
from lmsleep.ops.backend import KERNELS, _import_module
from lmsleep.train import build_run
from lmsleep.utils.config import ConfigError, check_kernel_backend

PAPER = ["paper/rule110_sleep", "paper/depo_sleep", "paper/gsm_inf_sleep"]


@pytest.fixture
def kernels(monkeypatch):
    """``kernels(op, fn_or_error)``: fake an (un)importable kernel package in a private kernel cache."""
    cache: dict = {}
    monkeypatch.setattr(backend_mod, "_KERNEL_CACHE", cache)

    def set_kernel(op: str, fn) -> None:
        spec = KERNELS[op]
        cache[(spec.module, spec.attr)] = fn

    return set_kernel


@pytest.mark.parametrize("experiment", [None, *PAPER])
def test_gpu_trainer_and_paper_recipes_take_auto_backend_and_bf16(compose, experiment):
    cfg = compose(["trainer=gpu", f"experiment={experiment}" if experiment else "model=hybrid_paper"])
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
    assert cfg.model.net.ssm.backend == "auto"
    if experiment:
        assert cfg.model.net.ssm.rule == "gated_delta"  # the paper's rule: fla's kernels on GPU


def test_missing_kernel_package_stops_with_one_line_naming_the_install(compose, kernels):
    kernels("gated_delta_rule", ModuleNotFoundError("No module named 'fla'\n(more lines)"))
    cfg = compose(["experiment=paper/rule110_sleep", "trainer=gpu", "model.net.ssm.backend=fla"])
    with pytest.raises(ConfigError) as err:
        check_kernel_backend(cfg)
    message = str(err.value)
    assert "\n" not in message and "flash-linear-attention" in message and "No module named 'fla'" in message
    assert 'MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE pip install -e ".[cuda]"' in message


def test_kernel_backend_without_cuda_stops_before_any_work(compose_fit, tiny, kernels):
    kernels("ssd", lambda *a, **k: None)  # importable
    cfg = compose_fit("model=hybrid", "model.net.ssm.rule=mamba2", "model.net.ssm.backend=mamba_ssm", *tiny)
    if torch.cuda.is_available():
        cfg.trainer.accelerator = "cpu"
    with pytest.raises(ConfigError, match="is a GPU kernel and this run has no CUDA device"):
        build_run(cfg)


def test_kernel_of_the_other_rule_is_refused(compose):
    cfg = compose(["model=hybrid_paper", "model.net.ssm.backend=mamba_ssm"])
    with pytest.raises(ConfigError, match="not a kernel of rule 'gated_delta' \\(its kernel: 'fla'\\)"):
        check_kernel_backend(cfg)


@pytest.mark.parametrize("backend", ["auto", "chunked", "recurrent"])
def test_torch_and_auto_backends_never_stop(compose, backend, kernels):
    kernels("ssd", ImportError("no mamba_ssm"))
    check_kernel_backend(compose(["model=hybrid", f"model.net.ssm.backend={backend}"]))


def test_submodule_imports_when_its_package_init_fails(tmp_path, monkeypatch):
    """What a mamba-ssm install without its CUDA extension looks like: the package ``__init__`` raises,
    the Triton submodule lmsleep needs does not."""
    pkg = tmp_path / "broken_pkg_for_lmsleep"
    (pkg / "ops").mkdir(parents=True)
    (pkg / "__init__.py").write_text("import selective_scan_cuda_that_is_not_built\n")
    (pkg / "ops" / "__init__.py").write_text("")
    (pkg / "ops" / "kernel.py").write_text("def fn():\n    return 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert _import_module("broken_pkg_for_lmsleep.ops.kernel").fn() == 42
        with pytest.raises(ModuleNotFoundError):
            _import_module("broken_pkg_for_lmsleep.ops.absent")
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] == "broken_pkg_for_lmsleep"]:
            del sys.modules[name]


def test_generate_and_export_stop_on_a_kernel_backend_that_cannot_run(compose, kernels):
    """The checkpoint commands rebuild the model through ``restore.load_trained_model``: the same check, before
    the checkpoint is read."""
    from lmsleep.restore import load_trained_model

    kernels("gated_delta_rule", lambda *a, **k: None)  # importable, but there is no GPU to run it on
    cfg = compose(["model=hybrid", "model.net.ssm.backend=fla", "ckpt_path=unused.ckpt"], "generate")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the kernel could run")
    with pytest.raises(ConfigError, match="is a GPU kernel and this run has no CUDA device"):
        load_trained_model(cfg, {})
