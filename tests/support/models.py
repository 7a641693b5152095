"""Shared helpers of the model-level tests (models, layers, lit, callbacks, runs): tiny float64 models, an
independent Algorithm 1, recording hooks and Lightning callbacks, the tiny sleeping-hybrid overrides.

Importable as ``tests.support.models`` from the repository root: the DDP and multi-node tests' subprocesses get
the root on ``PYTHONPATH`` so Hydra can instantiate :class:`DumpParams`, and the streaming test's second process
builds its model with :func:`make_model`.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from lmsleep.layers.attention import KVCache
from lmsleep.layers.fast_weight_mixer import FastWeightMixer, FastWeights
from lmsleep.models import HybridLM, ModelState, SleepHooks

VOCAB = 13


# --- models and inputs ------------------------------------------------------------------------------------
def make_model(
    rule: str = "gated_delta",
    layout: str = "attn,ssm,attn,ssm",
    dim: int = 16,
    loop: Any = "all",
    seed: int = 0,
    vocab: int = VOCAB,
    dtype: torch.dtype = torch.float64,
    strong: bool = True,
    **ssm: Any,
) -> HybridLM:
    """A tiny HybridLM in eval mode. ``strong`` re-initialises it so that every mechanism visibly matters
    (the default init, std 0.02 and Mamba-2's tiny dt, leaves logits nearly constant): unit-variance
    projections, write strengths around 0.5 and decays around 0.85 per token."""
    torch.manual_seed(seed)
    model = HybridLM(
        vocab,
        dim=dim,
        layout=layout,
        heads=2,
        mlp_ratio=2,
        loop=loop,
        ssm={"rule": rule, "heads": 2, "head_dim": dim // 2, "conv_size": 3, **ssm},
    )
    if strong:
        gen = torch.Generator().manual_seed(seed + 1000)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("A_log"):
                    p.copy_(torch.log(torch.empty(p.shape).uniform_(0.1, 0.5, generator=gen)))
                elif name.endswith("dt_bias"):
                    p.fill_(math.log(math.expm1(0.5)))  # softplus(dt_bias) = 0.5
                elif p.dim() == 2:
                    fan_in = 1 if name == "embed.weight" else p.shape[1]
                    p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
    return model.to(dtype).eval()


def random_ids(batch: int, length: int, seed: int = 0, vocab: int = VOCAB, low: int = 0) -> torch.Tensor:
    return torch.randint(low, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def fast_weights_of(state: ModelState) -> dict[int, torch.Tensor]:
    """Block index -> S of every fast-weight layer that has a state."""
    return {i: s.S for i, s in enumerate(state.layers) if isinstance(s, FastWeights)}


def only_fast_weights(state: ModelState) -> ModelState:
    """What a hard boundary lets through, built by hand: S of the fast-weight layers, nothing else."""
    return ModelState([FastWeights(s.S) if isinstance(s, FastWeights) else None for s in state.layers])


def param_grads(model: nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    """d loss / d every parameter (zeros where it does not depend on one)."""
    names, params = zip(*model.named_parameters(), strict=True)
    got = torch.autograd.grad(loss, params, allow_unused=True)
    return {n: torch.zeros_like(p) if g is None else g for n, p, g in zip(names, params, got, strict=True)}


def assert_grads_close(a: dict, b: dict, atol: float = 1e-11, rtol: float = 1e-9) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")


def weighted_sum(logits: torch.Tensor, seed: int = 7) -> torch.Tensor:
    """A generic scalar of the logits (a random linear functional), so every logit's gradient counts."""
    w = torch.randn(logits.shape, generator=torch.Generator().manual_seed(seed), dtype=logits.dtype)
    return (logits * w).sum()


# --- an independent Algorithm 1 (hard eviction), written from the spec with block calls only ----------------
def reference_run(
    model: HybridLM,
    ids: torch.Tensor,
    passes: int,
    window: int,
    state_mode: str = "accumulate",
    grad_passes: int | None = None,
    eviction: str = "hard",
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """Wake logits of every window and the fast weights after the last window's wake pass.

    Per window: pass 1 = every block over ``embed(window)`` from the incoming state; if another window
    follows, passes 2..N re-run the looped blocks on the previous pass's looped-block output, each
    fast-weight layer starting from the previous pass's S (accumulate) or the pre-window S (restart), and
    every window-local part (KV prefix, conv tail) as it was before the window. Only the last ``grad_passes``
    passes are backpropagated into the state handed on (features and S detached before the first of them,
    earlier passes without a graph). Blocks before the loop (the prelude) hand on their wake-pass S; blocks
    after it (the coda) run once more on the last pass's output from the pre-window state (Eq. 6).

    Crossing a boundary: ``hard`` lets only S through. ``sliding`` also keeps the wake pass's conv tails and
    its last L-1 keys and values (moved to the new window origin with the layer's own ``shift_cache``,
    checked separately against a single pass), and every pass masks attention to the last L tokens.
    """
    B, T = ids.shape
    n_blocks = len(model.blocks)
    loop = list(model.loop_range)
    sliding = window if eviction == "sliding" else None
    is_attn = [block.kind == "attn" for block in model.blocks]
    in_S: list[torch.Tensor | None] = [None] * n_blocks
    in_conv: list[torch.Tensor | None] = [None] * n_blocks
    in_kv: list[KVCache | None] = [None] * n_blocks

    def fast(S, conv):
        return None if S is None and conv is None else FastWeights(S, conv)

    outputs = []
    for start in range(0, T, window):
        pre_S, pre_conv, pre_kv = list(in_S), list(in_conv), list(in_kv)
        h = model.embed(ids[:, start : start + window])
        woke: list[Any] = [None] * n_blocks
        loop_out = None
        for i, block in enumerate(model.blocks):
            h, woke[i] = block(
                h, pre_kv[i] if is_attn[i] else fast(pre_S[i], pre_conv[i]), pos=0, sliding=sliding
            )
            if i == loop[-1]:
                loop_out = h
        outputs.append(model.output(h))
        woke_S = [None if is_attn[i] else woke[i].S for i in range(n_blocks)]
        if start + window >= T:
            return torch.cat(outputs, dim=1), woke_S
        current, h = list(woke_S), loop_out
        first_grad_pass = passes - (grad_passes or passes) + 1
        for p in range(2, passes + 1):
            if p == first_grad_pass:
                h = h.detach()
                current = [None if s is None else s.detach() for s in current]
            with torch.no_grad() if p < first_grad_pass else contextlib.nullcontext():
                for i in loop:
                    if is_attn[i]:
                        h, _ = model.blocks[i](h, pre_kv[i], pos=0, sliding=sliding)
                    else:
                        S = pre_S[i] if state_mode == "restart" else current[i]
                        h, out = model.blocks[i](h, fast(S, pre_conv[i]), pos=0, sliding=sliding)
                        current[i] = out.S
        # Eq. 6's coda: the blocks after the loop run once on the last pass's output, from the pre-window state.
        for i in range(loop[-1] + 1, n_blocks):
            h, out = model.blocks[i](
                h, pre_kv[i] if is_attn[i] else fast(pre_S[i], pre_conv[i]), pos=0, sliding=sliding
            )
            current[i] = None if is_attn[i] else out.S
        in_S = [current[i] if i in loop or i > loop[-1] else woke_S[i] for i in range(n_blocks)]
        if sliding:
            in_conv = [None if is_attn[i] else woke[i].conv for i in range(n_blocks)]
            in_kv = [
                model.blocks[i].mixer.shift_cache(woke[i], keep=window - 1, shift=window)
                if is_attn[i]
                else None
                for i in range(n_blocks)
            ]
    raise AssertionError("unreachable")


# --- hooks ------------------------------------------------------------------------------------------------
class Recorder(SleepHooks):
    """Records every hook call as a tuple, and the states handed to on_wake_end / on_sleep_end."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.wake_states: list[ModelState] = []
        self.sleep_states: list[ModelState] = []

    def on_wake_start(self, window: int) -> None:
        self.events.append(("wake_start", window))

    def on_wake_end(self, window: int, state: ModelState) -> None:
        self.events.append(("wake_end", window))
        self.wake_states.append(state.detach())

    def on_sleep_start(self, window: int, passes: int) -> None:
        self.events.append(("sleep_start", window, passes))

    def on_sleep_pass(self, window: int, pass_index: int, before: ModelState, after: ModelState) -> None:
        self.events.append(("sleep_pass", window, pass_index))

    def on_sleep_end(self, window: int, passes: int, state: ModelState) -> None:
        self.events.append(("sleep_end", window, passes))
        self.sleep_states.append(state.detach())


def expected_events(n_windows: int, passes: int, sleeps_last: bool = False) -> list[tuple]:
    """The hook calls of Algorithm 1 over ``n_windows`` windows (the last one sleeps only in a stream that
    filled it)."""
    events: list[tuple] = []
    for w in range(n_windows):
        events += [("wake_start", w), ("wake_end", w)]
        if passes > 1 and (w < n_windows - 1 or sleeps_last):
            events.append(("sleep_start", w, passes))
            events += [("sleep_pass", w, p) for p in range(2, passes + 1)]
            events.append(("sleep_end", w, passes))
    return events


def force_zero_writes(monkeypatch) -> None:
    """Make every fast-weight layer's write strength b_t zero, so S stays at its initial zero."""
    original = FastWeightMixer.gates_from_projections

    def gates(self, a_proj, b_proj):
        log_a, b = original(self, a_proj, b_proj)
        return log_a, torch.zeros_like(b)

    monkeypatch.setattr(FastWeightMixer, "gates_from_projections", gates)


def state_tensors_equal(a: ModelState, b: ModelState) -> bool:
    return state_tensors_close(a, b, atol=0.0, rtol=0.0)


def state_tensors_close(a: ModelState, b: ModelState, atol: float, rtol: float) -> bool:
    """Same positions, layer types and tensor shapes, and every tensor equal within the tolerances."""
    if len(a.layers) != len(b.layers) or a.pos != b.pos or a.window_index != b.window_index:
        return False
    for x, y in zip(a.layers, b.layers, strict=True):
        if type(x) is not type(y):
            return False
        if x is None:
            continue
        for name in vars(x):
            u, v = getattr(x, name), getattr(y, name)
            if (u is None) != (v is None):
                return False
            if not isinstance(u, torch.Tensor):
                if u != v:
                    return False
            elif u.shape != v.shape or not torch.allclose(u, v, atol=atol, rtol=rtol):
                return False
    return True


def group_of(name: str, kinds: Sequence[str]) -> str:
    """``embed``, ``head``, ``norm`` or ``<kind>.<part>`` (``ssm.mixer``, ``attn.mlp``, ``ssm.mixer_norm``)."""
    parts = name.split(".")
    return f"{kinds[int(parts[1])]}.{parts[2]}" if parts[0] == "blocks" else parts[0]


# --- Lightning callbacks used by the fit tests ---------------------------------------------------------------
class StepRecorder(L.Callback):
    """Per training step: the sleep passes in force, the sleep passes actually run, requires_grad per
    parameter group, a copy of the attention weights; and every LitLM wake/sleep hook call (train and eval)."""

    def __init__(self) -> None:
        self.steps: dict[int, dict[str, Any]] = {}
        self.calls: list[tuple] = []
        self._current: dict[str, Any] | None = None

    def _snapshot(self, pl_module) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in pl_module.net.named_parameters()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        groups: dict[str, set[bool]] = {}
        for name, p in pl_module.net.named_parameters():
            groups.setdefault(group_of(name, pl_module.net.kinds), set()).add(p.requires_grad)
        self._current = {
            "passes_run": 0,
            "sleeps": 0,
            "groups": groups,
            "params_before": self._snapshot(pl_module),
            "batch": batch["input_ids"].clone(),
        }
        self.steps[trainer.global_step] = self._current

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # read here: the schedule callback may run after this one at batch start
        self._current["passes"] = pl_module.sleep.passes
        self._current["params_after"] = self._snapshot(pl_module)
        self._current = None

    # LitLM's hooks: (trainer, pl_module, *args)
    def on_wake_start(self, trainer, pl_module, window):
        self.calls.append(("wake_start", window, pl_module.training))

    def on_wake_end(self, trainer, pl_module, window, state):
        self.calls.append(("wake_end", window, pl_module.training))

    def on_sleep_start(self, trainer, pl_module, window, passes):
        self.calls.append(("sleep_start", window, passes, pl_module.training))
        if self._current is not None and pl_module.training:
            self._current["sleeps"] += 1
            self._current.setdefault("sleep_passes", set()).add(passes)

    def on_sleep_pass(self, trainer, pl_module, window, pass_index, before, after):
        self.calls.append(("sleep_pass", window, pass_index, pl_module.training))
        if self._current is not None and pl_module.training:
            self._current["passes_run"] += 1

    def on_sleep_end(self, trainer, pl_module, window, passes, state):
        self.calls.append(("sleep_end", window, passes, pl_module.training))


class DumpParams(L.Callback):
    """Writes, per rank, the parameters after training, a hash of the batches it trained on (and of each
    sample), and the initial parameters to ``<dirpath>/rank<r>.pt`` (for the DDP agreement test)."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)
        self.batches = hashlib.sha256()
        self.samples: list[str] = []  # a hash of every training sample (row of input_ids and labels) seen
        self.initial: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.initial = {n: p.detach().cpu().clone() for n, p in pl_module.net.named_parameters()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.update(batch["input_ids"].cpu().numpy().tobytes())
        for ids, labels in zip(batch["input_ids"].cpu(), batch["labels"].cpu(), strict=True):
            self.samples.append(hashlib.sha256(ids.numpy().tobytes() + labels.numpy().tobytes()).hexdigest())

    def on_train_end(self, trainer, pl_module) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "rank": trainer.global_rank,
                "world_size": trainer.world_size,
                "global_step": trainer.global_step,
                "params": {n: p.detach().cpu().clone() for n, p in pl_module.net.named_parameters()},
                "initial": self.initial,
                "batches": self.batches.hexdigest(),
                "samples": self.samples,
            },
            self.dirpath / f"rank{trainer.global_rank}.pt",
        )


# --- configs ------------------------------------------------------------------------------------------------
# Rule 110 with 2 states of 4 bits and L = 4: samples of 11 tokens = 3 windows (2 context, 1 answer).
TINY_HYBRID = [
    "experiment=rule110_sleep",
    "data.task.width=4",
    "data.task.num_states=2",
    "data.batch_size=4",
    "data.train_size=64",
    "data.val_size=4",
    "data.test_size=4",
    "data.num_workers=0",
    "model.net.dim=16",
    "model.net.heads=2",
    "model.net.ssm.heads=2",
    "model.net.ssm.head_dim=8",
    "model.optim.warmup_steps=0",
    "trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=1",
    "++trainer.enable_progress_bar=false",
    "++trainer.enable_model_summary=false",
]

__all__ = [
    "KVCache",
    "DumpParams",
    "Recorder",
    "StepRecorder",
    "make_model",
    "random_ids",
    "reference_run",
]
