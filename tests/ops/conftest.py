"""Input factories shared by the op tests (seeded, small, float64 unless asked otherwise)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gdr_inputs(B=2, T=16, H=2, K=8, V=6, dtype=torch.float64, seed=0, state=True, grad=False):
    """Gated delta rule inputs in fla's layout, with the caller-side conventions of the layer:
    L2-normalised keys, beta in (0, 1), log decay g < 0 (some strong, some weak)."""
    gen = _gen(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    out = {
        "q": randn(B, T, H, K),
        "k": F.normalize(randn(B, T, H, K), dim=-1),
        "v": randn(B, T, H, V),
        "g": F.logsigmoid(randn(B, T, H) + 2.0),
        "beta": torch.rand(B, T, H, generator=gen, dtype=torch.float64),
        "initial_state": randn(B, H, K, V) if state else None,
    }
    return {name: (t.to(dtype).requires_grad_(grad) if t is not None else None) for name, t in out.items()}


def ssd_inputs(B=2, T=16, H=4, G=2, P=6, N=5, dtype=torch.float64, seed=0, state=True, grad=False):
    """SSD inputs in mamba-ssm's layout: positive dt (softplus), negative A."""
    gen = _gen(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    out = {
        "x": randn(B, T, H, P),
        "dt": F.softplus(randn(B, T, H) - 1.0),
        "A": -torch.linspace(0.2, 2.0, H, dtype=torch.float64),
        "B": randn(B, T, G, N),
        "C": randn(B, T, G, N),
        "initial_state": randn(B, H, P, N) if state else None,
    }
    return {name: (t.to(dtype).requires_grad_(grad) if t is not None else None) for name, t in out.items()}


def grads(out: torch.Tensor, state: torch.Tensor | None, inputs: dict, seed: int = 1) -> dict:
    """Gradients of a random linear functional of (out, final state) w.r.t. every leaf input."""
    gen = _gen(seed)
    loss = (out * torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device)).sum()
    if state is not None:
        loss = (
            loss + (state * torch.randn(state.shape, generator=gen, dtype=state.dtype).to(state.device)).sum()
        )
    leaves = {n: t for n, t in inputs.items() if isinstance(t, torch.Tensor) and t.requires_grad}
    got = torch.autograd.grad(loss, list(leaves.values()))
    return dict(zip(leaves, got, strict=True))


def assert_close_dicts(a: dict, b: dict, atol: float, rtol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# Helpers are handed out as fixtures so test modules need no import path tricks.
@pytest.fixture
def make_gdr():
    return gdr_inputs


@pytest.fixture
def make_ssd():
    return ssd_inputs


@pytest.fixture
def grads_of():
    return grads


@pytest.fixture
def close_dicts():
    return assert_close_dicts
