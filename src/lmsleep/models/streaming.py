"""Streaming inference: tokens arrive one at a time (or in chunks); sleep runs whenever a window fills.

Attention sees the KV of the current window (plus the previous window's last L-1 entries under sliding
eviction); fast-weight layers advance their state per token. When the window is full, passes 2..N run over it
from the wake pass's features, the KV is evicted and decoding continues
(docs/design.md#decisions-where-the-paper-is-open). KV memory is bounded by L (2L - 1 under sliding eviction),
so the per-token cost does not grow with the stream. The logits equal those of the training forward
(:func:`lmsleep.models.sleep.run_windows`) on the same tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from lmsleep.models.sleep import NO_HOOKS, SleepConfig, SleepHooks, sleep, wake
from lmsleep.models.state import ModelState


class Stream:
    """A stateful decoder around a model (e.g. :class:`~lmsleep.models.HybridLM`).

    Args:
        model: the model; put it in eval mode first.
        sleep_config: passes N, window L, eviction (as in training).
        batch_size: number of parallel streams.
        hooks: observers of the wake and sleep phases.
    """

    def __init__(
        self, model: Any, sleep_config: SleepConfig, batch_size: int = 1, hooks: SleepHooks = NO_HOOKS
    ):
        self.model, self.cfg, self.hooks = model, sleep_config, hooks
        self.batch_size = batch_size
        self.reset()

    def reset(self) -> None:
        """Forget everything: empty fast weights and KV."""
        self.state: ModelState = self.model.init_state(self.batch_size)
        self._window_start: ModelState = self.state
        self._loop_features: list[torch.Tensor] = []
        self.tokens_seen = 0

    @property
    def window(self) -> int | None:
        return None if self.cfg.eviction == "none" else self.cfg.window

    @property
    def kv_length(self) -> int:
        return self.state.kv_length()

    @torch.no_grad()
    def feed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Consume ``tokens [B, T]`` (or ``[T]`` when B = 1) and return their wake logits ``[B, T, V]``."""
        tokens = torch.as_tensor(tokens)
        if tokens.dim() == 1:
            tokens = tokens[None]
        if tokens.dim() != 2 or tokens.shape[0] != self.batch_size:
            raise ValueError(
                f"feed expects tokens [batch={self.batch_size}, T], got shape {tuple(tokens.shape)}"
            )
        device = next(self.model.parameters()).device
        tokens = tokens.to(device)
        if tokens.shape[1] == 0:  # an empty chunk (e.g. from a tokenizer): nothing happens
            return self.model.output(self.model.embed(tokens))
        outputs, i = [], 0
        while i < tokens.shape[1]:
            room = tokens.shape[1] - i if self.window is None else self.window - self.state.pos
            piece = tokens[:, i : i + room]
            if self.state.pos == 0:
                self._window_start = self.state
                self.hooks.on_wake_start(self.state.window_index)
            logits, loop_out, self.state = wake(self.model, piece, self.state, self.cfg)
            outputs.append(logits)
            self._loop_features.append(loop_out)
            i += piece.shape[1]
            self.tokens_seen += piece.shape[1]
            if self.window is not None and self.state.pos == self.window:
                self.hooks.on_wake_end(self.state.window_index, self.state)
                self._consolidate()
        return torch.cat(outputs, dim=1)

    def _consolidate(self) -> None:
        features = torch.cat(self._loop_features, dim=1)
        self.state = sleep(self.model, features, self._window_start, self.state, self.cfg, self.hooks)
        self._window_start, self._loop_features = self.state, []

    @torch.no_grad()
    def generate(
        self,
        prompt: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Feed ``prompt [B, T]`` then decode ``max_new_tokens``: greedy at ``temperature=0``, else sampled
        (optionally from the ``top_k`` most likely tokens). Returns the new tokens ``[B, max_new_tokens]``."""
        out = list(self.decode(prompt, max_new_tokens, temperature, top_k, generator))
        return torch.stack(out, dim=1) if out else torch.empty(self.batch_size, 0, dtype=torch.long)

    def decode(
        self,
        prompt: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Iterator[torch.Tensor]:
        """:meth:`generate` one new token ``[B]`` at a time: each is fed back before the next is picked, so
        the caller may time every step or stop early (then the last token it received has not been fed)."""
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if torch.as_tensor(prompt).shape[-1] == 0:
            raise ValueError(
                "generate needs a prompt of at least one token (its last logits pick the first new one)"
            )
        logits = self.feed(prompt)[:, -1]
        for _ in range(max_new_tokens):
            token = self._pick(logits, temperature, top_k, generator)
            yield token
            logits = self.feed(token[:, None])[:, -1]

    @staticmethod
    def _pick(logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None):
        if temperature <= 0:
            return logits.argmax(-1)
        logits = logits.float() / temperature
        if top_k is not None:
            kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)

    # --- persistence: pause a stream here, resume it in another process ----------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.to_dict(),
            "window_start": self._window_start.to_dict(),
            "loop_features": [f.detach().cpu() for f in self._loop_features],
            "tokens_seen": self.tokens_seen,
            "batch_size": self.batch_size,
            "sleep_config": self.cfg.to_dict(),
            "model": self.model_signature(),
        }

    def model_signature(self) -> dict[str, Any]:
        """What a saved state depends on: the block layout, the width and each fast-weight layer's rule and
        state shape (a state saved with one rule has the other's shape when K = V, so shapes alone miss it)."""
        layers = []
        for kind, block in zip(self.model.kinds, self.model.blocks, strict=True):
            mixer = block.mixer
            if hasattr(mixer, "rule"):
                layers.append(
                    [kind, mixer.rule, mixer.heads, mixer.key_dim, mixer.value_dim, mixer.conv_size]
                )
            else:
                layers.append([kind])
        return {"dim": int(self.model.dim), "layers": layers}

    def load_state_dict(self, data: dict[str, Any]) -> None:
        if data["batch_size"] != self.batch_size:
            raise ValueError(f"saved stream has batch size {data['batch_size']}, this one {self.batch_size}")
        saved, mine = data.get("model"), self.model_signature()
        if saved is not None and saved != mine:
            raise ValueError(
                f"saved stream belongs to another model (width {saved['dim']}, blocks {saved['layers']}), "
                f"not this one (width {mine['dim']}, blocks {mine['layers']}; [kind, rule, heads, K, V, conv]); "
                "load it into the model it was saved with"
            )
        if data["sleep_config"] != self.cfg.to_dict():
            raise ValueError(
                f"saved stream used sleep settings {data['sleep_config']}, this one {self.cfg.to_dict()}; "
                "resume with the same settings"
            )
        device = next(self.model.parameters()).device
        # A wrapped model re-attaches what a saved state cannot hold (its rotary embedding for the KV).
        adopt = getattr(self.model, "adopt_state", lambda state: state)
        self.state = adopt(ModelState.from_dict(data["state"], device))
        self._window_start = adopt(ModelState.from_dict(data["window_start"], device))
        self._loop_features = [f.to(device) for f in data["loop_features"]]
        self.tokens_seen = int(data["tokens_seen"])

    def save(self, path: str | Path) -> None:
        torch.save(self.state_dict(), Path(path))

    @classmethod
    def load(cls, path: str | Path, model: Any, hooks: SleepHooks = NO_HOOKS) -> Stream:
        data = torch.load(Path(path), map_location="cpu", weights_only=True)
        stream = cls(model, SleepConfig(**data["sleep_config"]), data["batch_size"], hooks)
        stream.load_state_dict(data)
        return stream
