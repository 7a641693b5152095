"""The real fla and mamba-ssm Triton kernels, run on CPU by the Triton interpreter, against lmsleep's
torch path (``make test-kernels``; see docs/gpu.md). Shapes and cases: ``kernel_cases.py``."""

from __future__ import annotations

import pytest
from kernel_cases import MODEL, NATIVE, OPS

pytestmark = pytest.mark.kernels

# fp32 throughout (bf16 is not meaningful in the interpreter). The kernels and the torch chunked form
# accumulate in different orders; both stay within ~1e-6 of the float64 reference on these sizes. Compiled
# on a GPU the kernels' dots run in TF32 (10-bit mantissa): looser bounds there, until a GPU run measures them.
OP_TOL, MODEL_TOL = (5e-3, 2e-2) if NATIVE else (1e-5, 1e-4)


@pytest.mark.parametrize("case", list(OPS))
def test_op_kernel_matches_torch(case, kernel_result):
    """Output, final state and the gradient of every input, initial state included."""
    result = kernel_result("ops", case)
    compared = {k: v for k, v in result.items() if k in ("out", "state") or k.startswith("grad:")}
    assert {"out", "state"} <= compared.keys() and any(k.startswith("grad:") for k in compared)
    bad = {k: v for k, v in compared.items() if not v <= OP_TOL}
    assert not bad, f"{case}: kernel differs from the torch chunked path: {bad}"
    assert result["worst_vs_fp64"] <= OP_TOL


@pytest.mark.parametrize("case", list(MODEL))
def test_hybrid_lm_with_kernels_matches_chunked(case, kernel_result):
    """Logits, loss and every parameter's gradient of a HybridLM run through windows, sleep and eviction."""
    result = kernel_result("model", case)
    assert result["params_with_grad"] > 0
    bad = {k: result[k] for k in ("logits", "loss", "grads") if not result[k] <= MODEL_TOL}
    assert not bad, (
        f"{case}: backend=kernel differs from backend=chunked: {bad} (worst: {result['worst_grad']})"
    )
