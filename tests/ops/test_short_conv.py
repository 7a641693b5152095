"""short_conv: the shifted backend against F.conv1d (outputs, states and every gradient, float64, odd T),
and one pass == chunks with the carried state."""

from __future__ import annotations

import pytest
import torch

from lmsleep.ops import short_conv

CLOSE = dict(atol=1e-12, rtol=1e-10)


def inputs(B=2, T=7, C=5, W=4, seed=0, with_state=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, C, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(C, W, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(C, generator=g, dtype=torch.float64, requires_grad=True)
    s = torch.randn(B, C, W - 1, generator=g, dtype=torch.float64, requires_grad=True) if with_state else None
    return x, w, b, s


@pytest.mark.parametrize("T", [1, 2, 3, 7, 64, 65])
@pytest.mark.parametrize("W", [2, 4])
@pytest.mark.parametrize("with_state", [True, False])
def test_shifted_equals_conv1d_with_gradients(T, W, with_state):
    x, w, b, s = inputs(T=T, W=W, with_state=with_state)
    leaves = [t for t in (x, w, b, s) if t is not None]
    results = []
    for backend in ("shifted", "reference"):
        y, final = short_conv(x, w, b, s, output_final_state=True, backend=backend)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
        gf = torch.randn(final.shape, generator=torch.Generator().manual_seed(2), dtype=y.dtype)
        grads = torch.autograd.grad((y * gy).sum() + (final * gf).sum(), leaves)
        results.append((y, final, grads))
    (y, f, g), (y_ref, f_ref, g_ref) = results
    torch.testing.assert_close(y, y_ref, **CLOSE)
    torch.testing.assert_close(f, f_ref, **CLOSE)
    for a, r in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, r, **CLOSE)


def test_final_state_is_the_last_inputs_and_chunks_carry_it():
    x, w, b, s = inputs(T=11)
    whole, final = short_conv(x, w, b, s, output_final_state=True)
    torch.testing.assert_close(final, x[:, -3:].transpose(1, 2), atol=0, rtol=0)
    state, parts = s, []
    for lo, hi in [(0, 2), (2, 3), (3, 9), (9, 11)]:  # pieces shorter and longer than the kernel
        y, state = short_conv(x[:, lo:hi], w, b, state, output_final_state=True)
        parts.append(y)
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, **CLOSE)
    torch.testing.assert_close(state, final, **CLOSE)


def test_gradcheck_and_bias_free():
    x, w, b, s = inputs(B=1, T=5, C=3, W=3)
    assert torch.autograd.gradcheck(lambda *a: short_conv(*a, output_final_state=True)[0], (x, w, b, s))
    y, _ = short_conv(x, w, None, s)
    y_ref, _ = short_conv(x, w, None, s, backend="reference")
    torch.testing.assert_close(y, y_ref, **CLOSE)


def test_bad_shapes_and_backend_are_named():
    x, w, b, s = inputs()
    with pytest.raises(ValueError, match=r"short_conv: weight must have shape \[C, W\] = \(5, 4\)"):
        short_conv(x, w[:4], b)
    with pytest.raises(ValueError, match=r"initial_state must have shape \[B, C, W - 1\]"):
        short_conv(x, w, b, s[:, :, :2])
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        short_conv(x, w, b, backend="fast")
