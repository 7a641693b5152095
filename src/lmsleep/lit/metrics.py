"""Masked cross-entropy; answer accuracy by depth (tasks) and loss and bits per byte by window (text), as
torchmetrics (DDP-synchronised)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from lmsleep.data.task import IGNORE_INDEX


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over labelled positions; ``logits [B, T, V]``, ``labels [B, T]`` (-100 = no loss).

    Returns 0 (with a gradient path) when the batch holds no labelled position.
    """
    mask = labels != IGNORE_INDEX
    if not mask.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[mask].float(), labels[mask])


class AnswerMetrics(Metric):
    """Loss, per-answer accuracy and exact-match accuracy, overall and per depth bucket.

    ``update(logits [B, T, V], labels [B, T], depth)`` with ``depth [B]`` (one depth per sample) or
    ``[B, T]`` (the depth of the answer each labelled position belongs to, e.g. Depo queries that each draw
    their own hop count). Per-answer accuracy and loss count every labelled position; overall, a sample is
    an exact match when all its labelled positions are right (samples without labels are skipped); per
    depth, the unit is a sample's answers of that depth (all right = exact). ``compute()`` returns
    ``{"loss", "acc", "acc_exact"}`` and, for every depth seen,
    ``{"loss@<name>=<d>", "acc@<name>=<d>", "acc_exact@<name>=<d>"}``.
    """

    full_state_update = False

    def __init__(self, depth_name: str = "depth", max_depth: int = 256, **kwargs):
        super().__init__(**kwargs)
        self.depth_name, self.max_depth = depth_name, max_depth
        for name in ("loss_sum", "tokens", "correct", "exact", "groups"):
            self.add_state(
                name, default=torch.zeros(max_depth + 1, dtype=torch.float64), dist_reduce_fx="sum"
            )
        for name in ("exact_samples", "samples"):
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, labels: torch.Tensor, depth: torch.Tensor | None = None) -> None:
        mask = labels != IGNORE_INDEX
        B, D = labels.shape[0], self.max_depth + 1
        depth = torch.zeros(B, dtype=torch.long, device=labels.device) if depth is None else depth.long()
        checked = depth if depth.dim() == 1 else depth[mask]  # a per-sample depth must be valid anyway
        if ((checked < 0) | (checked > self.max_depth)).any():
            raise ValueError(
                f"answer depths must lie in [0, {self.max_depth}], got {checked.unique().tolist()}"
            )
        if depth.dim() == 1:
            depth = depth[:, None].expand_as(labels)
        safe = labels.masked_fill(~mask, 0)
        token_loss = F.cross_entropy(logits.float().flatten(0, 1), safe.flatten(), reduction="none").view_as(
            labels
        )
        right = (logits.argmax(-1) == labels) & mask
        d = depth[mask]
        self.loss_sum.index_add_(0, d, token_loss[mask].to(torch.float64))
        self.tokens.index_add_(0, d, torch.ones_like(d, dtype=torch.float64))
        self.correct.index_add_(0, d, right[mask].to(torch.float64))
        # (sample, depth) groups: present if any labelled position has that depth, exact if none is wrong
        key = torch.arange(B, device=labels.device)[:, None].expand_as(labels)[mask] * D + d
        count = torch.zeros(B * D, dtype=torch.float64, device=labels.device).index_add_(
            0, key, torch.ones_like(key, dtype=torch.float64)
        )
        wrong = torch.zeros_like(count).index_add_(0, key, (~right[mask]).to(torch.float64))
        present = (count > 0).view(B, D)
        self.groups += present.sum(0)
        self.exact += (present & (wrong == 0).view(B, D)).sum(0)
        has_answer = mask.any(1)
        self.samples += has_answer.sum()
        self.exact_samples += ((right | ~mask).all(1) & has_answer).sum()

    def compute(self) -> dict[str, torch.Tensor]:
        def summary(idx) -> dict[str, torch.Tensor]:
            tokens = self.tokens[idx].sum()
            return {
                "loss": self.loss_sum[idx].sum() / tokens.clamp(min=1),
                "acc": self.correct[idx].sum() / tokens.clamp(min=1),
            }

        out = {**summary(slice(None)), "acc_exact": self.exact_samples / self.samples.clamp(min=1)}
        for d in torch.nonzero(self.groups).flatten().tolist():
            out.update({f"{k}@{self.depth_name}={d}": v for k, v in summary(slice(d, d + 1)).items()})
            out[f"acc_exact@{self.depth_name}={d}"] = self.exact[d] / self.groups[d]
        return {k: v.float() for k, v in out.items()}


class WindowLMMetrics(Metric):
    """Language-model loss and bits per byte, overall and by window index within the sequence.

    ``update(logits [B, T, V], labels [B, T], window L, token_bytes [B, T] or None)``: position t (whose label
    is the next token) is in window ``t // L``. Window 0 is predicted with nothing consolidated before it; later
    windows have fast weights written (and slept on) over more evicted context. ``token_bytes`` is how many
    bytes of text each label stands for; None means one each (the byte tokenizer), and then bits per byte are
    bits per token. ``compute()`` returns ``{"loss", "bpb"}`` (nats per token, bits per byte), ``"bpt"`` (bits
    per token) once tokens that are not bytes were seen, and the same per window: ``"loss@window=<w>"``,
    ``"bpb@window=<w>"`` (``"bpt@window=<w>"``) for every window holding a labelled position.
    """

    full_state_update = False

    def __init__(self, max_windows: int = 4096, **kwargs):
        super().__init__(**kwargs)
        self.max_windows = max_windows
        self.tokens_are_bytes = True
        for name in ("loss_sum", "tokens", "nbytes"):
            self.add_state(name, default=torch.zeros(max_windows, dtype=torch.float64), dist_reduce_fx="sum")

    def update(
        self, logits: torch.Tensor, labels: torch.Tensor, window: int, token_bytes: torch.Tensor | None = None
    ) -> None:
        mask = labels != IGNORE_INDEX
        T = labels.shape[1]
        if (T - 1) // window >= self.max_windows:
            raise ValueError(f"sequences of {T} tokens hold more than {self.max_windows} windows of {window}")
        index = (torch.arange(T, device=labels.device) // window)[None].expand_as(labels)[mask]
        safe = labels.masked_fill(~mask, 0)
        token_loss = F.cross_entropy(logits.float().flatten(0, 1), safe.flatten(), reduction="none").view_as(
            labels
        )
        self.loss_sum.index_add_(0, index, token_loss[mask].to(torch.float64))
        self.tokens.index_add_(0, index, torch.ones_like(index, dtype=torch.float64))
        if token_bytes is None:
            self.nbytes.index_add_(0, index, torch.ones_like(index, dtype=torch.float64))
        else:
            self.tokens_are_bytes = False
            self.nbytes.index_add_(0, index, token_bytes[mask].to(torch.float64))

    def compute(self) -> dict[str, torch.Tensor]:
        def summary(idx) -> dict[str, torch.Tensor]:
            nats, tokens = self.loss_sum[idx].sum(), self.tokens[idx].sum().clamp(min=1)
            out = {"loss": nats / tokens, "bpb": nats / math.log(2) / self.nbytes[idx].sum().clamp(min=1)}
            if not self.tokens_are_bytes:
                out["bpt"] = nats / math.log(2) / tokens
            return out

        out = summary(slice(None))
        for w in torch.nonzero(self.tokens).flatten().tolist():
            out.update({f"{k}@window={w}": v for k, v in summary(slice(w, w + 1)).items()})
        return {k: v.float() for k, v in out.items()}
