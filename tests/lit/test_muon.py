"""lmsleep.lit.muon.Muon: torch.optim.Muon's step with the orthogonalisation in a chosen dtype.

Checked against torch itself: the bf16 iteration equals torch's own bit for bit, the fp32 step equals
torch.optim.Muon's step with its iteration swapped for the fp32 one, and ``bfloat16`` is torch's step."""

from __future__ import annotations

import pytest
import torch
import torch.optim._muon as torch_muon

from lmsleep.lit.muon import Muon, orthogonalize
from lmsleep.lit.optim import OptimConfig

COEFFS = (3.4445, -4.7750, 2.0315)
SHAPES = [(24, 8), (8, 24), (16, 16), (4, 12)]  # tall, wide, square, a gate-like short one


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g) * 0.1) for s in SHAPES]


def _train(opt_factory, steps: int = 3) -> list[torch.Tensor]:
    params = _params()
    opt = opt_factory(params)
    for step in range(steps):
        g = torch.Generator().manual_seed(100 + step)
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return [p.detach().clone() for p in params]


@pytest.mark.skipif(
    not hasattr(torch_muon, "_zeropower_via_newtonschulz"), reason="torch's private iteration moved"
)
@pytest.mark.parametrize("shape", SHAPES)
def test_bf16_iteration_is_torchs(shape):
    update = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    ours = orthogonalize(update, COEFFS, 5, 1e-7, torch.bfloat16)
    theirs = torch_muon._zeropower_via_newtonschulz(update, COEFFS, 5, 1e-7)
    assert ours.dtype == theirs.dtype == torch.bfloat16
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


@pytest.mark.skipif(
    not hasattr(torch_muon, "_zeropower_via_newtonschulz"), reason="torch's private iteration moved"
)
@pytest.mark.parametrize(
    "settings",
    [
        dict(lr=0.02),
        dict(lr=0.02, nesterov=False, weight_decay=0.1),
        dict(lr=0.01, momentum=0.9, adjust_lr_fn="match_rms_adamw", ns_steps=3),
    ],
)
def test_fp32_step_is_torchs_step_with_an_fp32_iteration(monkeypatch, settings):
    """Everything around the iteration (momentum, Nesterov, decay, rate adjustment) is torch's arithmetic."""
    ours = _train(lambda ps: Muon(ps, ns_dtype="float32", **settings))
    monkeypatch.setattr(
        torch_muon,
        "_zeropower_via_newtonschulz",
        lambda g, coeffs, steps, eps: orthogonalize(g, coeffs, steps, eps, torch.float32),
    )
    theirs = _train(lambda ps: torch.optim.Muon(ps, **settings))
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bfloat16_is_torchs_step_and_auto_is_fp32_on_cpu():
    torch_step = _train(lambda ps: torch.optim.Muon(ps, lr=0.02))
    for a, b in zip(_train(lambda ps: Muon(ps, ns_dtype="bfloat16", lr=0.02)), torch_step, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    fp32 = _train(lambda ps: Muon(ps, ns_dtype="float32", lr=0.02))
    for a, b in zip(_train(lambda ps: Muon(ps, lr=0.02)), fp32, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # The two dtypes take the same steps up to bf16 rounding of the orthogonalised update, and differ.
    start = _params()
    for f, t, p0 in zip(fp32, torch_step, start, strict=True):
        assert not torch.equal(f, t)
        torch.testing.assert_close(f - p0, t - p0, rtol=0.05, atol=2e-3)


@pytest.mark.parametrize("shape", SHAPES)
def test_fp32_iteration_orthogonalises(shape):
    """Muon's iteration leaves singular values in about [0.5, 1.5] (not exactly 1, by design)."""
    update = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    s = torch.linalg.svdvals(orthogonalize(update, COEFFS, 5, 1e-7, torch.float32))
    assert s.min() > 0.3 and s.max() < 1.6


def test_bad_ns_dtype_is_refused():
    with pytest.raises(ValueError, match="ns_dtype='half'"):
        Muon(_params(), ns_dtype="half")
    with pytest.raises(ValueError, match="muon_ns_dtype='fp16'.*auto"):
        OptimConfig(muon_ns_dtype="fp16")
