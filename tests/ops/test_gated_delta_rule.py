"""Gated delta rule: chunked == recurrent == fla's naive references, state carry, gradients, dtypes."""

from __future__ import annotations

import pytest
import torch

from lmsleep.ops import gated_delta_rule
from lmsleep.ops.backend import kernel_available
from lmsleep.ops.gated_delta_rule import gated_delta_rule_chunked, gated_delta_rule_recurrent

ARGS = ("q", "k", "v", "g", "beta")


def run(inputs: dict, backend: str, **kw):
    return gated_delta_rule(
        *(inputs[n] for n in ARGS),
        initial_state=inputs["initial_state"],
        output_final_state=True,
        backend=backend,
        **kw,
    )


@pytest.mark.parametrize("T", [1, 7, 63, 64, 65, 257])
def test_chunked_matches_recurrent_outputs_states_and_grads(T, make_gdr, grads_of, close_dicts):
    inputs = make_gdr(B=2, T=T, H=2, K=8, V=6, grad=True)
    o_ref, s_ref = run(inputs, "recurrent")
    o, s = run(inputs, "chunked")
    torch.testing.assert_close(o, o_ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(s, s_ref, atol=1e-10, rtol=0)
    close_dicts(grads_of(o, s, inputs), grads_of(o_ref, s_ref, inputs), atol=1e-9)


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 128])
def test_chunk_size_does_not_change_the_result(chunk_size, make_gdr):
    inputs = make_gdr(T=37)
    o_ref, s_ref = run(inputs, "recurrent")
    o, s = run(inputs, "chunked", chunk_size=chunk_size)
    torch.testing.assert_close(o, o_ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(s, s_ref, atol=1e-10, rtol=0)


def test_strong_decay_stays_finite(make_gdr, grads_of):
    # In-chunk cumulative log decays near -1e3 would overflow exp(-gam) if it were ever formed.
    inputs = make_gdr(T=70, grad=True)
    inputs["g"] = (inputs["g"].detach() * 0 - 30.0).requires_grad_(True)
    o_ref, s_ref = run(inputs, "recurrent")
    o, s = run(inputs, "chunked")
    torch.testing.assert_close(o, o_ref, atol=1e-10, rtol=0)
    assert all(torch.isfinite(gr).all() for gr in grads_of(o, s, inputs).values())


@pytest.mark.parametrize("backend", ["recurrent", "chunked"])
@pytest.mark.parametrize("split", [1, 30, 64])
def test_split_and_carry_equals_one_pass(backend, split, make_gdr):
    inputs = make_gdr(T=100)
    o_full, s_full = run(inputs, backend)
    first = {n: (t[:, :split] if n != "initial_state" else t) for n, t in inputs.items()}
    o1, s1 = run(first, backend)
    second = {n: t[:, split:] for n, t in inputs.items() if n != "initial_state"}
    o2, s2 = run({**second, "initial_state": s1}, backend)
    torch.testing.assert_close(torch.cat([o1, o2], dim=1), o_full, atol=1e-10, rtol=0)
    torch.testing.assert_close(s2, s_full, atol=1e-10, rtol=0)


@pytest.mark.parametrize("backend", ["recurrent", "chunked"])
def test_gradcheck(backend, make_gdr):
    inputs = make_gdr(B=1, T=5, H=2, K=3, V=2, grad=True)

    def fn(q, k, v, g, beta, h0):
        return gated_delta_rule(
            q, k, v, g, beta, initial_state=h0, output_final_state=True, backend=backend, chunk_size=2
        )

    assert torch.autograd.gradcheck(fn, tuple(inputs[n] for n in (*ARGS, "initial_state")))


def test_defaults_no_state_and_default_scale(make_gdr):
    inputs = make_gdr(T=9, K=16, state=False)
    o, s = gated_delta_rule(*(inputs[n] for n in ARGS))
    assert s is None and o.shape == (2, 9, 2, 6)
    o2, _ = gated_delta_rule(*(inputs[n] for n in ARGS), scale=16**-0.5, backend="recurrent")
    torch.testing.assert_close(o, o2, atol=1e-10, rtol=0)
    o3, _ = gated_delta_rule(*(inputs[n] for n in ARGS), scale=1.0, backend="chunked")
    torch.testing.assert_close(o3, o * 4.0, atol=1e-10, rtol=0)


def test_matches_plain_formula_for_one_step(make_gdr):
    inputs = make_gdr(B=1, T=1, H=1, K=4, V=3)
    q, k, v, g, beta, S0 = (inputs[n][0, 0, 0] if n != "initial_state" else inputs[n][0, 0] for n in inputs)
    S1 = (torch.eye(4, dtype=q.dtype) - beta * torch.outer(k, k)) @ (g.exp() * S0) + beta * torch.outer(k, v)
    o, s = run(inputs, "chunked")
    torch.testing.assert_close(s[0, 0], S1, atol=1e-12, rtol=0)
    torch.testing.assert_close(o[0, 0, 0], 0.5 * S1.T @ q, atol=1e-12, rtol=0)


@pytest.mark.parametrize("T", [1, 65, 130])
def test_matches_fla_naive_references(T, make_gdr):
    naive = pytest.importorskip("fla.ops.gated_delta_rule.naive")
    inputs = make_gdr(T=T, H=2, K=16, V=8)
    o, s = run(inputs, "chunked")
    q, k, v, g, beta, h0 = (inputs[n].float() for n in (*ARGS, "initial_state"))
    # fla's naive functions compute in fp32 and differ in argument order: (q, k, v, beta, g) vs (..., g, beta).
    o_r, s_r = naive.naive_recurrent_gated_delta_rule(q, k, v, beta, g, None, h0, True)
    o_c, s_c = naive.naive_chunk_gated_delta_rule(q, k, v, g, beta, 64, None, h0, True)
    for o_f, s_f in ((o_r, s_r), (o_c, s_c)):
        torch.testing.assert_close(o.float(), o_f, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(s.float(), s_f, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["recurrent", "chunked"])
def test_bf16_runs_in_fp32_and_is_close(backend, make_gdr):
    inputs32 = make_gdr(T=80, K=16, V=16, dtype=torch.float32)
    inputs16 = {n: t.to(torch.bfloat16).requires_grad_(True) for n, t in inputs32.items()}
    o, s = run(inputs16, backend)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    # Reference: the same rounded inputs in fp32, so only the bf16 output rounding differs.
    o_ref, s_ref = run({n: t.detach().float() for n, t in inputs16.items()}, "recurrent")
    torch.testing.assert_close(o.float(), o_ref, atol=3e-2, rtol=1e-2)
    torch.testing.assert_close(s, s_ref, atol=1e-4, rtol=1e-4)
    o.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in inputs16.values())


def test_fp32_chunked_close_to_fp64(make_gdr):
    inputs = make_gdr(T=300, K=32, V=32)
    o_ref, s_ref = run(inputs, "recurrent")
    o, s = run({n: t.float() for n, t in inputs.items()}, "chunked")
    torch.testing.assert_close(o, o_ref.float(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s, s_ref.float(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.update(q=d["q"][0]), r"q must have shape \[B, T, H, K\]"),
        (lambda d: d.update(k=d["k"][:, :-1]), "k must have shape"),
        (lambda d: d.update(v=d["v"][:, :-1]), "v must have shape"),
        (lambda d: d.update(g=d["g"][..., None]), r"g must have shape \[B, T, H\]"),
        (lambda d: d.update(beta=d["beta"][:, :3]), "beta must have shape"),
        (lambda d: d.update(initial_state=d["initial_state"][..., :2]), "initial_state must have shape"),
        (
            lambda d: d.update(
                q=d["q"][:, :0], k=d["k"][:, :0], v=d["v"][:, :0], g=d["g"][:, :0], beta=d["beta"][:, :0]
            ),
            "at least one token",
        ),
    ],
)
def test_bad_shapes_raise_clear_errors(mutate, match, make_gdr):
    inputs = make_gdr(T=6)
    mutate(inputs)
    with pytest.raises(ValueError, match=match):
        run(inputs, "chunked")


def test_bad_chunk_size_and_dtype(make_gdr):
    inputs = make_gdr(T=6)
    with pytest.raises(ValueError, match="chunk_size"):
        run(inputs, "chunked", chunk_size=0)
    inputs["q"] = inputs["q"].long()
    with pytest.raises(TypeError, match="floating-point"):
        run(inputs, "chunked")


def test_torch_backends_are_exposed_directly(make_gdr):
    inputs = make_gdr(T=10)
    args = [inputs[n] for n in ARGS]
    o1, _ = gated_delta_rule_recurrent(*args)
    o2, _ = gated_delta_rule_chunked(*args, chunk_size=4)
    torch.testing.assert_close(o1, o2, atol=1e-10, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not kernel_available("gated_delta_rule"), reason="needs CUDA and flash-linear-attention")
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-3), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("T", [63, 256])
def test_fla_kernel_matches_chunked(dtype, tol, T, make_gdr, grads_of):
    inputs = make_gdr(B=2, T=T, H=4, K=64, V=64, dtype=torch.float32)
    inputs = {
        n: t.cuda().to(dtype if n != "initial_state" else torch.float32).requires_grad_(True)
        for n, t in inputs.items()
    }
    o, s = run(inputs, "fla")
    o_ref, s_ref = run(inputs, "chunked")
    assert o.dtype == dtype and s.dtype == torch.float32
    torch.testing.assert_close(o.float(), o_ref.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(s, s_ref, atol=tol, rtol=tol)
    g, g_ref = grads_of(o.float(), s, inputs), grads_of(o_ref.float(), s_ref, inputs)
    for name in g:
        torch.testing.assert_close(g[name].float(), g_ref[name].float(), atol=5 * tol, rtol=5 * tol)
    assert run(inputs, "auto")[0].dtype == dtype


@pytest.mark.parametrize("c", [1, 2, 5, 16, 17, 64, 100])
def test_unit_lower_inverse_matches_triangular_solve(c):
    from lmsleep.ops._common import unit_lower_inverse

    A = torch.randn(3, 2, c, c, dtype=torch.float64) * 0.3
    ref = torch.linalg.solve_triangular(A, torch.eye(c, dtype=A.dtype), upper=False, unitriangular=True)
    torch.testing.assert_close(unit_lower_inverse(A), ref, atol=1e-12, rtol=0)
