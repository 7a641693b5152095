"""The kernel comparisons, run in a subprocess under the Triton interpreter (see ``interpreter_patches.py``).

``python tests/kernels/kernel_cases.py ops|model [CASE ...]`` prints one JSON line per case: its name and its
errors, each ``max |kernel - torch| / max |torch|`` over a tensor (``out``,
``state``, ``logits``, ``loss``, ``grad:<name>``; for the model the worst parameter gradient and the
parameter it belongs to). The ops are also compared with the float64 token-loop reference (``*_vs_fp64``
entries, for the report). Shapes are small: the interpreter runs every program instance in Python.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import interpreter_patches  # noqa: E402

# LMSLEEP_KERNELS_NATIVE=1: on a CUDA machine, the compiled kernels on CUDA tensors (scripts/gpu_check.sh).
NATIVE = os.environ.get("LMSLEEP_KERNELS_NATIVE") == "1"
if __name__ == "__main__" and not NATIVE:  # the tests import this file for its case names only
    interpreter_patches.activate()

import importlib  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# The modules, not the functions of the same name that lmsleep.ops re-exports.
_backend = importlib.import_module("lmsleep.ops.backend")
gdr_mod = importlib.import_module("lmsleep.ops.gated_delta_rule")
ssd_mod = importlib.import_module("lmsleep.ops.ssd")


def allow_kernels_on_cpu() -> None:
    """lmsleep refuses an explicit kernel backend on CPU tensors (on a real machine that is a mistake);
    under the interpreter CPU tensors are what the kernels run on, so let the kernel name through."""
    real = _backend.resolve_backend

    def resolve(op: str, backend: str, device: torch.device) -> str:
        if backend == _backend.KERNELS[op].backend and device.type == "cpu":
            device = torch.device("cuda")
        return real(op, backend, device)

    gdr_mod.resolve_backend = ssd_mod.resolve_backend = resolve


DEVICE = torch.device("cuda" if NATIVE else "cpu")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# --- ops ------------------------------------------------------------------------------------------------
def gdr_inputs(T: int, state: bool, B: int = 2, H: int = 2, K: int = 16, V: int = 32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    return {
        "q": randn(B, T, H, K),
        "k": F.normalize(randn(B, T, H, K), dim=-1),
        "v": randn(B, T, H, V),
        "g": F.logsigmoid(randn(B, T, H) + 2.0),
        "beta": torch.rand(B, T, H, generator=gen, dtype=torch.float64),
        "initial_state": randn(B, H, K, V) if state else None,
    }


def ssd_inputs(T: int, state: bool, G: int, B: int = 2, H: int = 4, P: int = 16, N: int = 32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    return {
        "x": randn(B, T, H, P),
        "dt": F.softplus(randn(B, T, H) - 1.0),
        "A": -torch.linspace(0.2, 2.0, H, dtype=torch.float64),
        "B": randn(B, T, G, N),
        "C": randn(B, T, G, N),
        "initial_state": randn(B, H, P, N) if state else None,
    }


def run_op(fn, inputs: dict, dtype: torch.dtype, seed: int = 1, **kwargs):
    """``fn`` on copies of ``inputs`` in ``dtype``: output, final state and the gradients of a fixed random
    functional of both with respect to every input."""
    leaves = {n: t.to(DEVICE, dtype).requires_grad_() for n, t in inputs.items() if t is not None}
    args = {n: leaves.get(n) for n in inputs}
    out, state = fn(**args, output_final_state=True, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    loss = (out.double() * torch.randn(out.shape, generator=gen, dtype=torch.float64).to(DEVICE)).sum()
    loss = (
        loss
        + (state.double() * torch.randn(state.shape, generator=gen, dtype=torch.float64).to(DEVICE)).sum()
    )
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return {"out": out, "state": state, **{f"grad:{n}": g for n, g in zip(leaves, grads, strict=True)}}


def op_errors(kernel: dict, torch_path: dict, fp64: dict) -> dict:
    errors = {name: rel(kernel[name], torch_path[name]) for name in torch_path}
    errors["worst_vs_fp64"] = max(rel(kernel[n], fp64[n]) for n in fp64)
    errors["torch_worst_vs_fp64"] = max(rel(torch_path[n], fp64[n]) for n in fp64)
    return errors


def gdr_case(T: int, state: bool) -> dict:
    inputs = gdr_inputs(T, state)
    kernel = run_op(gdr_mod.gated_delta_rule_fla, inputs, torch.float32)
    chunked = run_op(gdr_mod.gated_delta_rule_chunked, inputs, torch.float32, chunk_size=64)
    fp64 = run_op(gdr_mod.gated_delta_rule_recurrent, inputs, torch.float64)
    return op_errors(kernel, chunked, fp64)


def ssd_case(T: int, state: bool, G: int) -> dict:
    inputs = ssd_inputs(T, state, G)
    kernel = run_op(ssd_mod.ssd_mamba, inputs, torch.float32, chunk_size=16)
    chunked = run_op(ssd_mod.ssd_chunked, inputs, torch.float32, chunk_size=16)
    fp64 = run_op(ssd_mod.ssd_recurrent, inputs, torch.float64)
    return op_errors(kernel, chunked, fp64)


# fla picks its own chunk (64): T = 37 is one partial chunk, T = 75 a full one and a partial one. SSD runs
# with chunk 16: T = 37 is three chunks, the last partial. G = 1 and 2 are grouped heads (4 heads share
# B and C), G = 4 one group per head (what the fast-weight layer uses).
OPS = {
    "gated_delta-T37-nostate": lambda: gdr_case(37, False),
    "gated_delta-T37-state": lambda: gdr_case(37, True),
    "gated_delta-T75-state": lambda: gdr_case(75, True),
    "ssd-T37-G4-nostate": lambda: ssd_case(37, False, 4),
    "ssd-T37-G4-state": lambda: ssd_case(37, True, 4),
    "ssd-T37-G2-state": lambda: ssd_case(37, True, 2),
    "ssd-T21-G1-state": lambda: ssd_case(21, True, 1),
}


# --- the whole model ------------------------------------------------------------------------------------
def model_case(rule: str, eviction: str, passes: int, loop: str = "all") -> dict:
    """A small HybridLM with strong gates, the kernel backend against ``chunked`` (same weights, fp32):
    logits, masked loss and every parameter's gradient, through windows, sleep passes and eviction."""
    import math

    from lmsleep.lit.metrics import masked_cross_entropy
    from lmsleep.models import HybridLM
    from lmsleep.models.sleep import SleepConfig

    vocab, window, length = 11, 8, 21  # three windows, the last one partial
    layout = "attn,ssm,attn,ssm" if loop == "all" else "ssm,attn,ssm,attn,ssm"

    def build(backend: str) -> HybridLM:
        torch.manual_seed(0)
        model = HybridLM(
            vocab,
            dim=32,
            layout=layout,
            heads=2,
            mlp_ratio=2,
            loop=loop,
            ssm={"rule": rule, "heads": 2, "head_dim": 16, "conv_size": 3, "backend": backend},
        )
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():  # strong gates (the default init leaves the fast weights nearly unused)
            for name, p in model.named_parameters():
                if name.endswith("A_log"):
                    p.copy_(torch.log(torch.empty(p.shape).uniform_(0.1, 0.5, generator=gen)))
                elif name.endswith("dt_bias"):
                    p.fill_(math.log(math.expm1(0.5)))
                elif p.dim() == 2:
                    fan_in = 1 if name == "embed.weight" else p.shape[1]
                    p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
        return model.to(DEVICE)

    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, vocab, (2, length), generator=gen)
    labels = torch.full_like(ids, -100)
    labels[:, -5:] = torch.randint(0, vocab, (2, 5), generator=gen)  # answers in the last window only
    ids, labels = ids.to(DEVICE), labels.to(DEVICE)
    cfg = SleepConfig(passes=passes, window=window, eviction=eviction)
    results = {}
    for backend in (kernel_of(rule), "chunked"):
        model = build(backend)
        logits, _ = model(ids, sleep=cfg)
        # The answer loss (last window), plus a small term on every logit: gradient through every window.
        loss = masked_cross_entropy(logits, labels) + 1e-2 * logits.square().mean()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[backend] = (logits, loss, grads)
    (k_logits, k_loss, k_grads), (c_logits, c_loss, c_grads) = results.values()
    assert k_grads.keys() == c_grads.keys()
    grad_errors = {n: rel(k_grads[n], c_grads[n]) for n in c_grads}
    worst = max(grad_errors, key=grad_errors.get)
    return {
        "logits": rel(k_logits, c_logits),
        "loss": rel(k_loss, c_loss),
        "grads": grad_errors[worst],
        "worst_grad": worst,
        "params_with_grad": len(c_grads),
    }


def kernel_of(rule: str) -> str:
    return "fla" if rule == "gated_delta" else "mamba_ssm"


MODEL = {
    f"{rule}-{eviction}-N{n}": (lambda rule=rule, eviction=eviction, n=n: model_case(rule, eviction, n))
    for rule in ("gated_delta", "mamba2")
    for eviction in ("hard", "sliding")
    for n in (1, 2)
}
MODEL.update(
    {
        f"{rule}-hard-N2-loop1:4": (lambda rule=rule: model_case(rule, "hard", 2, loop="1:4"))
        for rule in ("gated_delta", "mamba2")
    }
)
SUITES = {"ops": OPS, "model": MODEL}


def main(argv: list[str]) -> None:
    if not NATIVE:
        allow_kernels_on_cpu()
    torch.set_num_threads(1)
    suite = SUITES[argv[0]]
    for name in argv[1:] or list(suite):
        try:
            result = suite[name]()
        except Exception:  # report it as this case's failure and go on with the others
            result = {"error": traceback.format_exc()}
        print(json.dumps({"case": name, **result}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
