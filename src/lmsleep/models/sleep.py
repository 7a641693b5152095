"""Generalised Algorithm 1: wake and sleep over windows (docs/design.md#sleep and
#decisions-where-the-paper-is-open).

For every window of L tokens: pass 1 is the wake pass (its logits are the model's outputs there); if another
window follows, passes 2..N re-run the looped blocks over the same tokens, carrying the features ``h`` from pass
to pass and the fast weights ``S`` from the previous pass (``accumulate``, the paper) or from the pre-window
state (``restart``). Then the KV cache is evicted (``hard``: emptied; ``sliding``: the wake pass's last L-1
entries stay) and only the fast weights cross the boundary. With ``N = 1`` this is the plain hybrid.

The same functions serve training (:func:`run_windows`), evaluation and streaming
(:class:`lmsleep.models.streaming.Stream` calls :func:`wake` and :func:`sleep` directly).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.checkpoint import checkpoint

from lmsleep.models.state import ModelState

if TYPE_CHECKING:
    from lmsleep.models.hybrid import HybridLM

EVICTIONS = ("none", "hard", "sliding")
STATE_MODES = ("accumulate", "restart")


@dataclass
class SleepConfig:
    """How a sequence is split into windows and consolidated.

    Args:
        passes: N >= 1, passes per window (1 = no sleep).
        window: L >= 1, tokens per window (ignored when ``eviction="none"``).
        eviction: ``none`` (full context, one window), ``hard`` (KV emptied at every boundary) or
            ``sliding`` (the last L-1 wake-pass KV entries stay, attention masked to width L).
        grad_passes: backpropagate through only the last k of the N passes of each window (None = all, the
            paper). The features and fast weights are detached before the first kept pass, so the state
            handed to the next window carries gradient into the parameters of the kept passes only: no
            gradient from later windows reaches a consolidated window's tokens (its wake pass) or any earlier
            window. A run warns once when it is set below N.
        tbptt_windows: detach the state every k windows (None = never, full BPTT as in the paper).
        checkpoint_windows: recompute each window's activations in the backward pass (saves memory).
        state_mode: ``accumulate`` (each pass continues from the previous pass's fast weights, the paper) or
            ``restart`` (each pass starts from the pre-window fast weights).
    """

    passes: int = 1
    window: int = 16
    eviction: str = "hard"
    grad_passes: int | None = None
    tbptt_windows: int | None = None
    checkpoint_windows: bool = False
    state_mode: str = "accumulate"

    def __post_init__(self) -> None:
        if int(self.passes) < 1:
            raise ValueError(f"sleep.passes must be >= 1 (1 = no sleep), got {self.passes}")
        if int(self.window) < 1:
            raise ValueError(f"sleep.window must be >= 1 token, got {self.window}")
        if self.eviction not in EVICTIONS:
            raise ValueError(f"sleep.eviction={self.eviction!r} is not one of {EVICTIONS}")
        if self.state_mode not in STATE_MODES:
            raise ValueError(f"sleep.state_mode={self.state_mode!r} is not one of {STATE_MODES}")
        if self.grad_passes is not None and int(self.grad_passes) < 1:
            raise ValueError(f"sleep.grad_passes must be >= 1 or null (all passes), got {self.grad_passes}")
        if self.tbptt_windows is not None and int(self.tbptt_windows) < 1:
            raise ValueError(
                f"sleep.tbptt_windows must be >= 1 or null (never detach), got {self.tbptt_windows}"
            )
        self.passes, self.window = int(self.passes), int(self.window)
        if self.grad_passes is not None and int(self.grad_passes) < self.passes:
            _warn_once(
                f"sleep.grad_passes={self.grad_passes} < passes={self.passes}: features and fast weights are "
                "detached before the kept passes, so no gradient from later windows reaches a consolidated "
                "window's tokens or any earlier window (grad_passes=null backpropagates all, as the paper)"
            )
        if self.grad_passes is not None and int(self.grad_passes) > self.passes:
            _warn_once(
                f"sleep.grad_passes={self.grad_passes} is more than sleep.passes={self.passes}: every pass is "
                "backpropagated, as with grad_passes=null"
            )

    @property
    def sliding(self) -> int | None:
        """Attention span in tokens under sliding eviction, else None (all of the window)."""
        return self.window if self.eviction == "sliding" else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """A UserWarning the first time this process meets ``message`` (configs are rebuilt every step by
    schedules: one line, not one per step)."""
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, UserWarning, stacklevel=4)  # the line that built the SleepConfig


class SleepHooks:
    """Observers of the wake and sleep phases. Every method is optional; the default does nothing.

    ``window`` is the index of the window within the sequence (or stream); ``state`` arguments are the model
    state at that moment (read them, don't keep them: they hold the autograd graph in training). Where no
    window sleeps (N = 1, or no fast weights), :func:`run_windows` wakes all windows in one span, so the wake
    hooks fire once: ``on_wake_start(first window)`` and ``on_wake_end(last window, state after it)``.
    """

    def on_wake_start(self, window: int) -> None: ...

    def on_wake_end(self, window: int, state: ModelState) -> None: ...

    def on_sleep_start(self, window: int, passes: int) -> None: ...

    def on_sleep_pass(self, window: int, pass_index: int, before: ModelState, after: ModelState) -> None: ...

    def on_sleep_end(self, window: int, passes: int, state: ModelState) -> None: ...


NO_HOOKS = SleepHooks()


def wake(
    model: HybridLM,
    input_ids: torch.Tensor,
    state: ModelState,
    cfg: SleepConfig,
    evict_every: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, ModelState]:
    """The wake pass over ``input_ids [B, T]`` at window position ``state.pos``.

    Returns logits ``[B, T, V]``, the features at the output of the looped blocks ``[B, T, D]`` (what sleep
    passes start from) and the state advanced by T tokens. ``evict_every = L`` runs hard-evicted windows of
    L tokens laid end to end in one pass (see :func:`_one_pass_windows`).
    """
    h = model.embed(input_ids)
    h, loop_out, state = model.run_blocks(
        h, state, range(len(model.blocks)), pos=state.pos, sliding=cfg.sliding, evict_every=evict_every
    )
    state = ModelState(state.layers, state.pos + input_ids.shape[1], state.window_index)
    return model.output(h), loop_out, state


def _sleep_pass_start(pre: ModelState, prev: ModelState, cfg: SleepConfig, looped: range) -> ModelState:
    """State at the start of a sleep pass: each looped layer's state decides from its previous pass and its
    pre-window state (window-local parts as before the window, fast weights per ``state_mode``)."""
    layers = list(prev.layers)
    for i in looped:
        if prev.layers[i] is not None:  # None: a block without per-sequence state (a wrapped model's MLP)
            layers[i] = prev.layers[i].start_sleep_pass(pre.layers[i], cfg.state_mode)
    return ModelState(layers, 0, prev.window_index)


def sleep(
    model: HybridLM,
    loop_features: torch.Tensor,
    pre: ModelState,
    woke: ModelState,
    cfg: SleepConfig,
    hooks: SleepHooks = NO_HOOKS,
) -> ModelState:
    """Passes 2..N over a finished window, then eviction; returns the state for the next window.

    Args:
        loop_features: ``[B, L, D]`` features at the looped blocks' output from the wake pass.
        pre: the state before the window's wake pass (KV prefix, conv tails, pre-window fast weights).
        woke: the state after the wake pass.
    """
    w, n = woke.window_index, cfg.passes
    looped = model.loop_range
    state, h = woke, loop_features
    if n > 1 and model.has_fast_weights:
        hooks.on_sleep_start(w, n)
        first_grad_pass = n - (cfg.grad_passes or n) + 1  # passes before it are not backpropagated
        for p in range(2, n + 1):
            if p == first_grad_pass:
                h, state = h.detach(), state.detach()
            start = _sleep_pass_start(pre, state, cfg, looped)
            with torch.no_grad() if p < first_grad_pass else contextlib.nullcontext():
                h, _, after = model.run_blocks(h, start, looped, pos=0, sliding=cfg.sliding)
            # Blocks outside the loop keep their wake-pass state (the coda is rewritten below).
            state = ModelState(
                [after.layers[i] if i in looped else woke.layers[i] for i in range(len(model.blocks))], 0, w
            )
            hooks.on_sleep_pass(w, p, start, state)
        state = _coda(model, h, pre, state, cfg)
        hooks.on_sleep_end(w, n, state)
    return evict(model, state, woke, cfg)


def _coda(
    model: HybridLM, h: torch.Tensor, pre: ModelState, state: ModelState, cfg: SleepConfig
) -> ModelState:
    """Eq. 6 with a looped slice: the blocks after the slice run once more, on the last pass's output, from
    their pre-window state, so their fast weights are written from the consolidated features (the prelude,
    the blocks before the slice, keeps its wake pass: it runs once on the same tokens either way)."""
    coda = range(model.loop_range[-1] + 1, len(model.blocks))
    if not coda:
        return state
    start = ModelState(list(pre.layers), 0, state.window_index)
    _, _, after = model.run_blocks(h, start, coda, pos=0, sliding=cfg.sliding)
    return ModelState(
        [after.layers[i] if i in coda else s for i, s in enumerate(state.layers)], 0, state.window_index
    )


def evict(model: HybridLM, state: ModelState, woke: ModelState, cfg: SleepConfig) -> ModelState:
    """End a window: each layer's state decides what crosses the boundary (hard: only fast weights;
    sliding: also the wake pass's last L-1 KV entries and conv context)."""
    layers = [
        None if s is None else s.evict(woke.layers[i], cfg.eviction, cfg.window, woke.pos)
        for i, s in enumerate(state.layers)
    ]
    return ModelState(layers, 0, state.window_index + 1)


def window_step(
    model: HybridLM,
    input_ids: torch.Tensor,
    state: ModelState,
    cfg: SleepConfig,
    consolidate: bool,
    hooks: SleepHooks,
) -> tuple[torch.Tensor, ModelState]:
    """Wake over one whole window, then (if another window follows) sleep and evict."""
    w = state.window_index
    hooks.on_wake_start(w)
    logits, loop_out, woke = wake(model, input_ids, state, cfg)
    hooks.on_wake_end(w, woke)
    if consolidate:
        return logits, sleep(model, loop_out, state, woke, cfg, hooks)
    return logits, woke


def run_windows(
    model: HybridLM,
    input_ids: torch.Tensor,
    cfg: SleepConfig,
    state: ModelState | None = None,
    hooks: SleepHooks = NO_HOOKS,
) -> tuple[torch.Tensor, ModelState]:
    """Generalised Algorithm 1 over ``input_ids [B, T]``; returns wake logits ``[B, T, V]`` and the final state."""
    B, T = input_ids.shape
    if T == 0:
        raise ValueError(
            f"run_windows needs at least one token, got input_ids of shape {tuple(input_ids.shape)}"
        )
    state = model.init_state(B) if state is None else state
    if state.pos != 0:
        raise ValueError(
            f"run_windows must start at a window boundary, but the state is {state.pos} tokens into a window; "
            "continue a partial window with lmsleep.models.Stream"
        )
    L = T if cfg.eviction == "none" else cfg.window
    if T > L and wakes_in_one_span(model, cfg, state):
        return _one_pass_windows(model, input_ids, cfg, state, hooks)
    outputs = []
    for start in range(0, T, L):
        if cfg.tbptt_windows and state.window_index and state.window_index % cfg.tbptt_windows == 0:
            state = state.detach()
        ids = input_ids[:, start : start + L]
        consolidate = start + L < T
        if cfg.checkpoint_windows and torch.is_grad_enabled():
            once = _OnceHooks(hooks)  # the recomputation in backward must not fire the hooks again
            logits, state = checkpoint(
                window_step, model, ids, state, cfg, consolidate, once, use_reentrant=False
            )
            once.mute = True
        else:
            logits, state = window_step(model, ids, state, cfg, consolidate, hooks)
        outputs.append(logits)
    return torch.cat(outputs, dim=1), state


def wakes_in_one_span(model: HybridLM, cfg: SleepConfig, state: ModelState) -> bool:
    """Whether the window loop can run layer by layer over the whole sequence instead.

    Without sleep passes (N = 1, or no fast weights to consolidate) nothing a window computes feeds the
    next window except the fast weights, which each fast-weight layer carries through the sequence by
    itself, and the KV prefix of sliding eviction, which a sliding attention mask reproduces. So each layer
    can process all windows in one call: far fewer, larger operations than L-token windows one at a time.
    The window loop stays where it is needed: truncated BPTT of the fast weights, per-window activation
    checkpointing, and a hard-eviction start that holds KV (only a user-made state can).
    """
    if cfg.passes > 1 and model.has_fast_weights:
        return False
    if cfg.tbptt_windows and model.has_fast_weights:
        return False
    if cfg.checkpoint_windows and torch.is_grad_enabled():
        return False
    return cfg.eviction == "sliding" or state.kv_length() == 0


def _one_pass_windows(
    model: HybridLM, input_ids: torch.Tensor, cfg: SleepConfig, state: ModelState, hooks: SleepHooks
) -> tuple[torch.Tensor, ModelState]:
    """All windows of a sequence without sleep passes, each layer over the whole sequence at once.

    Hard eviction: attention runs the windows as one batch and the convolutions restart per window
    (``evict_every``); sliding eviction is one pass with attention masked to the last L tokens. Logits
    equal the window loop's up to float round-off, and the returned state is the last window's, as the
    loop would leave it. Wake hooks fire once, for the whole span.
    """
    T, L = input_ids.shape[1], cfg.window
    n = -(-T // L)
    last = T - (n - 1) * L
    hooks.on_wake_start(state.window_index)
    hard = cfg.eviction == "hard"
    logits, _, woke = wake(model, input_ids, state, cfg, evict_every=L if hard else None)
    if not hard:  # e.g. the last window's KV: its own keys and the L - 1 before it, from its start
        woke = ModelState([None if s is None else s.last_window_of_span(L, last, T) for s in woke.layers])
    final = ModelState(woke.layers, last, state.window_index + n - 1)
    hooks.on_wake_end(final.window_index, final)
    return logits, final


class _OnceHooks(SleepHooks):
    def __init__(self, inner: SleepHooks):
        self.inner, self.mute = inner, False

    def __getattribute__(self, name: str):
        if name.startswith("on_") and not object.__getattribute__(self, "mute"):
            return getattr(object.__getattribute__(self, "inner"), name)
        if name.startswith("on_"):
            return lambda *a, **k: None
        return object.__getattribute__(self, name)
