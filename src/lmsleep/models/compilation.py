"""Opt-in ``torch.compile`` of the parts of a :class:`HybridLM` that gain from it (``model.compile``).

A target names a kind of submodule, compiled in place (``nn.Module.compile``): the module's forward runs
through TorchDynamo and Inductor while its parameters, and so the ``state_dict`` keys of checkpoints, stay
those of the eager model (no ``_orig_mod.`` prefix), so compiled and eager runs load each other's
checkpoints. ``true`` compiles :data:`DEFAULT_TARGETS`, the targets that paid back on this project's CPUs;
the others can still be named (measurements: docs/performance.md, benchmarks/RESULTS.md).

Compilation is lazy: it happens in the first call of each compiled module at each new input shape, so the
first training step of a run pays it; :func:`compile_seconds` reads how long from torch's own compile-time
totals (``LitLM`` logs it once).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from torch import nn

from lmsleep.layers.attention import Attention
from lmsleep.layers.fast_weight_mixer import FastWeightMixer
from lmsleep.layers.mlp import SwiGLU


def _mlps(net: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for i, block in enumerate(getattr(net, "blocks", ())):
        if isinstance(getattr(block, "mlp", None), SwiGLU):
            yield f"blocks.{i}.mlp", block.mlp


def _mixers(kind: type) -> Callable[[nn.Module], Iterator[tuple[str, nn.Module]]]:
    def found(net: nn.Module) -> Iterator[tuple[str, nn.Module]]:
        for i, block in enumerate(getattr(net, "blocks", ())):
            if isinstance(getattr(block, "mixer", None), kind):
                yield f"blocks.{i}.mixer", block.mixer

    return found


# target -> the (name, module) pairs of a HybridLM it compiles
TARGETS: dict[str, Callable[[nn.Module], Iterator[tuple[str, nn.Module]]]] = {
    "mlp": _mlps,  # each block's SwiGLU
    "attn": _mixers(Attention),  # each softmax-attention mixer (projections, rotary, SDPA)
    "ssm": _mixers(FastWeightMixer),  # each fast-weight mixer (its chunked update rule included)
}
# What `true` compiles: the parts that paid at experiment=rule110_sleep on a 2-core CPU (the MLPs at N = 1, the
# fast-weight mixers at N >= 2: 1.13x and 1.16x together); attention did not (benchmarks/RESULTS.md)
DEFAULT_TARGETS: tuple[str, ...] = ("mlp", "ssm")


def parse_targets(value: Any) -> tuple[str, ...]:
    """``model.compile``'s value as the targets to compile: ``false``/``null`` -> none, ``true`` ->
    :data:`DEFAULT_TARGETS`, a target name or a list of them -> those. Anything else raises a one-line
    ValueError that lists the choices."""
    if value is None or value is False:
        return ()
    if value is True:
        return DEFAULT_TARGETS
    names = [value] if isinstance(value, str) else value
    try:
        names = [str(n) for n in names] if not isinstance(names, (bytes, dict)) else None
    except TypeError:  # a number, ...
        names = None
    if not names or any(n not in TARGETS for n in names):
        raise ValueError(
            f"model.compile={value!r} is not a choice: use false (the default), true (= {list(DEFAULT_TARGETS)}), "
            f"or a list of targets from {list(TARGETS)}, e.g. model.compile=[mlp,attn]"
        )
    return tuple(dict.fromkeys(names))  # in the given order, each once


def modules_to_compile(net: nn.Module, targets: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every submodule of ``net`` that ``targets`` name; a target that finds none (``ssm``
    in a transformer, any target in a wrapped transformers model) raises a one-line ValueError, so a run
    never believes it compiled what it did not."""
    found = []
    for target in targets:
        modules = list(TARGETS[target](net))
        if not modules:
            raise ValueError(
                f"model.compile: target {target!r} finds no module in this {type(net).__name__} "
                f"(layout: {','.join(getattr(net, 'kinds', [])) or 'not a HybridLM'}); leave it out"
            )
        found += modules
    return found


def compile_modules(net: nn.Module, targets: tuple[str, ...], **options: Any) -> list[str]:
    """Compile in place the submodules of ``net`` that ``targets`` name (``torch.compile`` ``options`` such
    as ``dynamic``); returns their names. A module already compiled is left as it is, so calling this again
    (Lightning calls ``configure_model`` for every fit and test) compiles nothing twice."""
    names = []
    for name, module in modules_to_compile(net, targets):
        if not is_compiled(module):
            module.compile(**options)
        names.append(name)
    return names


def is_compiled(module: nn.Module) -> bool:
    """Whether ``module`` was compiled in place (``nn.Module.compile``)."""
    return getattr(module, "_compiled_call_impl", None) is not None


def compiled_names(net: nn.Module) -> list[str]:
    """The names of ``net``'s submodules compiled in place."""
    return [name for name, module in net.named_modules() if is_compiled(module)]


def compile_seconds() -> float:
    """Seconds this process has spent in ``torch.compile`` so far: TorchDynamo's own totals of compiling
    frames (tracing, AOTAutograd, Inductor's code generation and C++ builds) and of the backward graphs,
    which AOTAutograd compiles lazily in the first backward. A wall-clock difference of steps would also
    count the machine's load; these totals count only compilation. (``cumulative_time_spent_ns`` is
    torch's internal record, which torch has no public total of; tests/models/test_compilation.py fails if
    it stops counting.)"""
    from torch._dynamo.utils import cumulative_time_spent_ns

    return (
        sum(cumulative_time_spent_ns.get(k, 0) for k in ("entire_frame_compile", "entire_backward_compile"))
        / 1e9
    )


def graphs_compiled() -> int:
    """Graphs TorchDynamo has compiled in this process (a recompile for a new shape adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
