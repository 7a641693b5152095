"""SSD (Mamba-2): chunked == recurrent == an independent quadratic form, state carry, grads, dtypes."""

from __future__ import annotations

import pytest
import torch

from lmsleep.ops import ssd
from lmsleep.ops.backend import kernel_available
from lmsleep.ops.ssd import ssd_chunked, ssd_recurrent

ARGS = ("x", "dt", "A", "B", "C")


def run(inputs: dict, backend: str, **kw):
    return ssd(
        *(inputs[n] for n in ARGS),
        initial_state=inputs["initial_state"],
        output_final_state=True,
        backend=backend,
        **kw,
    )


def quadratic_ssd(x, dt, A, B, C, h0):
    """The whole sequence as one masked 'attention' (SSD's dual form), written independently.

    ``segsum[t, s] = sum_{r=s+1..t} dt_r A`` for ``s <= t``; ``y_t = sum_s exp(segsum) (C_t.B_s) dt_s x_s
    + exp(cumsum_t) h0 C_t`` and ``h_T = sum_s exp(segsum[T, s]) dt_s x_s B_s^T + exp(cumsum_T) h0``.
    """
    H, G = x.shape[2], B.shape[2]
    Bh = B.repeat_interleave(H // G, dim=2)  # [b, T, H, N]
    Ch = C.repeat_interleave(H // G, dim=2)
    cum = torch.cumsum(dt * A, dim=1)  # [b, T, H]
    seg = cum[:, :, None, :] - cum[:, None, :, :]  # [b, t, s, H]
    T = x.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()[None, :, :, None]
    Lmask = torch.where(causal, seg, torch.full_like(seg, float("-inf"))).exp()
    scores = torch.einsum("bthn,bshn->btsh", Ch, Bh) * Lmask
    y = torch.einsum("btsh,bsh,bshp->bthp", scores, dt, x)
    y = y + torch.einsum("bth,bhpn,bthn->bthp", cum.exp(), h0, Ch)
    w_last = (cum[:, -1:] - cum).exp() * dt  # [b, T, H]
    hT = torch.einsum("bsh,bshp,bshn->bhpn", w_last, x, Bh) + cum[:, -1].exp()[..., None, None] * h0
    return y, hT


@pytest.mark.parametrize("T", [1, 7, 63, 64, 65, 257])
def test_chunked_matches_recurrent_outputs_states_and_grads(T, make_ssd, grads_of, close_dicts):
    inputs = make_ssd(B=2, T=T, H=4, G=2, grad=True)
    y_ref, s_ref = run(inputs, "recurrent")
    y, s = run(inputs, "chunked")
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(s, s_ref, atol=1e-10, rtol=0)
    close_dicts(grads_of(y, s, inputs), grads_of(y_ref, s_ref, inputs), atol=1e-9)


@pytest.mark.parametrize("T", [1, 40, 130])
@pytest.mark.parametrize("G", [1, 2, 4])
def test_matches_quadratic_form(T, G, make_ssd):
    inputs = make_ssd(T=T, H=4, G=G)
    y_q, s_q = quadratic_ssd(*(inputs[n] for n in (*ARGS, "initial_state")))
    for backend in ("recurrent", "chunked"):
        y, s = run(inputs, backend)
        torch.testing.assert_close(y, y_q, atol=1e-10, rtol=0)
        torch.testing.assert_close(s, s_q, atol=1e-10, rtol=0)


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 128])
def test_chunk_size_does_not_change_the_result(chunk_size, make_ssd):
    inputs = make_ssd(T=37)
    y_ref, s_ref = run(inputs, "recurrent")
    y, s = run(inputs, "chunked", chunk_size=chunk_size)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(s, s_ref, atol=1e-10, rtol=0)


def test_strong_decay_stays_finite(make_ssd, grads_of):
    inputs = make_ssd(T=70, grad=True)
    inputs["dt"] = (inputs["dt"].detach() + 20.0).requires_grad_(True)
    y_ref, s_ref = run(inputs, "recurrent")
    y, s = run(inputs, "chunked")
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=0)
    assert all(torch.isfinite(gr).all() for gr in grads_of(y, s, inputs).values())


@pytest.mark.parametrize("backend", ["recurrent", "chunked"])
@pytest.mark.parametrize("split", [1, 30, 64])
def test_split_and_carry_equals_one_pass(backend, split, make_ssd):
    inputs = make_ssd(T=100)
    y_full, s_full = run(inputs, backend)
    first = {n: (t[:, :split] if n not in ("A", "initial_state") else t) for n, t in inputs.items()}
    y1, s1 = run(first, backend)
    second = {n: (t[:, split:] if n != "A" else t) for n, t in inputs.items() if n != "initial_state"}
    y2, s2 = run({**second, "initial_state": s1}, backend)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), y_full, atol=1e-10, rtol=0)
    torch.testing.assert_close(s2, s_full, atol=1e-10, rtol=0)


@pytest.mark.parametrize("backend", ["recurrent", "chunked"])
def test_gradcheck(backend, make_ssd):
    inputs = make_ssd(B=1, T=5, H=2, G=1, P=2, N=3, grad=True)

    def fn(x, dt, A, B, C, h0):
        return ssd(x, dt, A, B, C, initial_state=h0, output_final_state=True, backend=backend, chunk_size=2)

    assert torch.autograd.gradcheck(fn, tuple(inputs[n] for n in (*ARGS, "initial_state")))


def test_defaults_without_state(make_ssd):
    inputs = make_ssd(T=9, state=False)
    y, s = ssd(*(inputs[n] for n in ARGS))
    assert s is None and y.shape == (2, 9, 4, 6)
    y2, _ = ssd_recurrent(*(inputs[n] for n in ARGS))
    y3, _ = ssd_chunked(*(inputs[n] for n in ARGS), chunk_size=4)
    torch.testing.assert_close(y, y2, atol=1e-10, rtol=0)
    torch.testing.assert_close(y3, y2, atol=1e-10, rtol=0)


@pytest.mark.parametrize("backend", ["recurrent", "chunked"])
def test_bf16_runs_in_fp32_and_is_close(backend, make_ssd):
    inputs32 = make_ssd(T=80, H=4, G=2, P=16, N=16, dtype=torch.float32)
    inputs16 = {n: t.to(torch.bfloat16).requires_grad_(True) for n, t in inputs32.items()}
    y, s = run(inputs16, backend)
    assert y.dtype == torch.bfloat16 and s.dtype == torch.float32
    y_ref, s_ref = run({n: t.detach().float() for n, t in inputs16.items()}, "recurrent")
    torch.testing.assert_close(y.float(), y_ref, atol=5e-2, rtol=1e-2)
    torch.testing.assert_close(s, s_ref, atol=1e-4, rtol=1e-4)
    y.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in inputs16.values())


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.update(x=d["x"][0]), r"x must have shape \[B, T, H, P\]"),
        (lambda d: d.update(dt=d["dt"][:, :-1]), "dt must have shape"),
        (lambda d: d.update(A=d["A"][:-1]), r"A must have shape \[H\]"),
        (lambda d: d.update(B=d["B"][:, :-1]), "B must have shape"),
        (lambda d: d.update(C=d["C"][..., :-1]), "C must have shape"),
        (
            lambda d: d.update(
                B=d["B"][:, :, :1].expand(-1, -1, 3, -1), C=d["C"][:, :, :1].expand(-1, -1, 3, -1)
            ),
            "divisible by the number of groups",
        ),
        (
            lambda d: d.update(initial_state=d["initial_state"].transpose(-1, -2)),
            "initial_state must have shape",
        ),
    ],
)
def test_bad_shapes_raise_clear_errors(mutate, match, make_ssd):
    inputs = make_ssd(T=6, H=4, G=2)
    mutate(inputs)
    with pytest.raises(ValueError, match=match):
        run(inputs, "chunked")


@pytest.mark.gpu
@pytest.mark.skipif(not kernel_available("ssd"), reason="needs CUDA and mamba-ssm")
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-3), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("T", [63, 256])
def test_mamba_kernel_matches_chunked(dtype, tol, T, make_ssd, grads_of):
    inputs = make_ssd(B=2, T=T, H=8, G=2, P=64, N=64, dtype=torch.float32)
    inputs = {
        n: t.cuda().to(dtype if n not in ("A", "dt", "initial_state") else torch.float32).requires_grad_(True)
        for n, t in inputs.items()
    }
    y, s = run(inputs, "mamba_ssm")
    y_ref, s_ref = run(inputs, "chunked")
    assert y.dtype == dtype and s.dtype == torch.float32
    torch.testing.assert_close(y.float(), y_ref.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(s, s_ref, atol=tol, rtol=tol)
    g, g_ref = grads_of(y.float(), s, inputs), grads_of(y_ref.float(), s_ref, inputs)
    for name in g:
        torch.testing.assert_close(g[name].float(), g_ref[name].float(), atol=5 * tol, rtol=5 * tol)
    assert run(inputs, "auto")[0].dtype == dtype
