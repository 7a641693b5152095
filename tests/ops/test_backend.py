"""Backend resolution: errors, auto fallback, warn-once, lazy kernel imports, kernel adapter wiring."""

from __future__ import annotations

import warnings

import pytest
import torch

from lmsleep.ops import BackendUnavailableError, gated_delta_rule, ssd
from lmsleep.ops import backend as backend_mod
from lmsleep.ops.backend import INSTALL_HINT, KERNELS, resolve_backend
from lmsleep.ops.gated_delta_rule import gated_delta_rule_chunked, gated_delta_rule_fla
from lmsleep.ops.ssd import ssd_chunked, ssd_mamba
from tests.support import run_python

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def call(fn, inputs: dict, **kw):
    """Call an op with its tensors; the initial state by keyword (it follows ``scale`` in the GDR API)."""
    tensors = [t for n, t in inputs.items() if n != "initial_state"]
    return fn(*tensors, initial_state=inputs["initial_state"], **kw)


@pytest.fixture
def kernel_cache(monkeypatch):
    """A private kernel cache / warn-once set, so tests can fake (un)importable kernels without CUDA."""
    cache: dict = {}
    monkeypatch.setattr(backend_mod, "_KERNEL_CACHE", cache)
    monkeypatch.setattr(backend_mod, "_WARNED_FALLBACK", set())

    def set_kernel(op: str, fn) -> None:
        spec = KERNELS[op]
        cache[(spec.module, spec.attr)] = fn

    return set_kernel


def test_import_does_not_import_kernel_packages():
    code = (
        "import sys, lmsleep, lmsleep.ops\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('fla', 'mamba_ssm'))\n"
        "print(bad)\n"
    )
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("op, kernel", [("gated_delta_rule", "fla"), ("ssd", "mamba_ssm")])
def test_kernel_backend_on_cpu_raises_with_install_hint(op, kernel, make_gdr, make_ssd):
    inputs = make_gdr(T=3) if op == "gated_delta_rule" else make_ssd(T=3)
    fn = gated_delta_rule if op == "gated_delta_rule" else ssd
    with pytest.raises(BackendUnavailableError, match="needs CUDA tensors") as err:
        call(fn, inputs, backend=kernel)
    assert 'pip install -e ".[cuda]"' in str(err.value)
    assert isinstance(err.value, RuntimeError)


@pytest.mark.parametrize(
    "op, backend",
    [("gated_delta_rule", "triton"), ("gated_delta_rule", "mamba_ssm"), ("ssd", "fla"), ("ssd", "Chunked")],
)
def test_unknown_backend_raises(op, backend):
    with pytest.raises(ValueError, match=f"unknown backend '{backend}'") as err:
        resolve_backend(op, backend, CPU)
    assert "'chunked'" in str(err.value) and "pip install" in str(err.value)


def test_auto_is_chunked_on_cpu(make_gdr, make_ssd):
    assert resolve_backend("gated_delta_rule", "auto", CPU) == "chunked"
    assert resolve_backend("ssd", "auto", CPU) == "chunked"
    inputs = make_gdr(T=20)
    o_auto, _ = call(gated_delta_rule, inputs)
    o_chunk, _ = call(gated_delta_rule, inputs, backend="chunked")
    assert torch.equal(o_auto, o_chunk)
    inputs = make_ssd(T=20)
    assert torch.equal(call(ssd, inputs)[0], call(ssd, inputs, backend="chunked")[0])


def test_auto_on_cuda_falls_back_and_warns_once(kernel_cache):
    kernel_cache("ssd", ImportError("no module named mamba_ssm"))
    with pytest.warns(RuntimeWarning, match="falling back") as record:
        assert resolve_backend("ssd", "auto", CUDA) == "chunked"
    assert INSTALL_HINT in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_backend("ssd", "auto", CUDA) == "chunked"


def test_auto_on_cuda_uses_importable_kernel(kernel_cache):
    kernel_cache("gated_delta_rule", lambda *a, **k: None)
    assert resolve_backend("gated_delta_rule", "auto", CUDA) == "fla"


def test_explicit_kernel_on_cuda_without_package_raises(kernel_cache):
    kernel_cache("gated_delta_rule", ImportError("No module named 'fla'"))
    with pytest.raises(BackendUnavailableError, match="failed to import") as err:
        resolve_backend("gated_delta_rule", "fla", CUDA)
    assert "No module named 'fla'" in str(err.value) and 'pip install -e ".[cuda]"' in str(err.value)


def test_fla_adapter_passes_our_layout_through(kernel_cache, make_gdr):
    """The adapter's argument mapping, checked on CPU against a stand-in with fla's signature."""
    seen = {}

    def fake_fla(
        q,
        k,
        v,
        g,
        beta,
        scale=None,
        initial_state=None,
        output_final_state=False,
        use_qk_l2norm_in_kernel=False,
        **kwargs,
    ):
        seen.update(scale=scale, l2=use_qk_l2norm_in_kernel, kwargs=kwargs)
        return gated_delta_rule_chunked(q, k, v, g, beta, scale, initial_state, output_final_state)

    kernel_cache("gated_delta_rule", fake_fla)
    inputs = make_gdr(T=10, K=16)
    o, s = call(gated_delta_rule_fla, inputs, output_final_state=True)
    o_ref, s_ref = call(gated_delta_rule_chunked, inputs, output_final_state=True)
    # The adapter hands g and the state to the kernel in fp32, as fla expects.
    torch.testing.assert_close(o, o_ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(s, s_ref.float(), atol=1e-6, rtol=0)
    assert seen == {"scale": 0.25, "l2": False, "kwargs": {}}
    assert gated_delta_rule_fla(*list(inputs.values())[:5])[1] is None


def test_mamba_adapter_passes_our_layout_through(kernel_cache, make_ssd):
    seen = {}

    def fake_mamba(
        x,
        dt,
        A,
        B,
        C,
        chunk_size,
        D=None,
        z=None,
        dt_bias=None,
        initial_states=None,
        seq_idx=None,
        dt_softplus=False,
        dt_limit=(0.0, float("inf")),
        return_final_states=False,
    ):
        seen.update(chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias, softplus=dt_softplus)
        y, h = ssd_chunked(x, dt, A, B, C, initial_states, True, chunk_size=chunk_size)
        return (y, h) if return_final_states else y

    kernel_cache("ssd", fake_mamba)
    inputs = make_ssd(T=10)
    y, s = call(ssd_mamba, inputs, output_final_state=True, chunk_size=8)
    y_ref, s_ref = call(ssd_chunked, inputs, output_final_state=True)
    # The adapter hands A and the state to the kernel in fp32, as mamba-ssm expects.
    torch.testing.assert_close(y, y_ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(s, s_ref.float(), atol=1e-6, rtol=0)
    assert seen == {"chunk_size": 8, "D": None, "z": None, "dt_bias": None, "softplus": False}
    assert ssd_mamba(*list(inputs.values())[:5])[1] is None
