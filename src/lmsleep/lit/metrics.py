"""Masked cross-entropy and answer accuracy, overall and by depth, as torchmetrics (DDP-synchronised)."""

from __future__ import annotations

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

    ``update(logits [B, T, V], labels [B, T], depth [B])``. Per-answer accuracy counts every labelled
    position; a sample is an exact match when all its labelled positions are right (samples without labels are
    skipped). ``compute()`` returns ``{"loss", "acc", "acc_exact"}`` and, for every depth seen,
    ``{"loss@<name>=<d>", "acc@<name>=<d>", "acc_exact@<name>=<d>"}``.
    """

    full_state_update = False

    def __init__(self, depth_name: str = "depth", max_depth: int = 256, **kwargs):
        super().__init__(**kwargs)
        self.depth_name, self.max_depth = depth_name, max_depth
        for name in ("loss_sum", "tokens", "correct", "exact", "samples"):
            self.add_state(
                name, default=torch.zeros(max_depth + 1, dtype=torch.float64), dist_reduce_fx="sum"
            )

    def update(self, logits: torch.Tensor, labels: torch.Tensor, depth: torch.Tensor | None = None) -> None:
        mask = labels != IGNORE_INDEX
        B = labels.shape[0]
        depth = torch.zeros(B, dtype=torch.long, device=labels.device) if depth is None else depth.long()
        if (depth < 0).any() or (depth > self.max_depth).any():
            raise ValueError(f"sample depth must lie in [0, {self.max_depth}], got {depth.tolist()}")
        safe = labels.masked_fill(~mask, 0)
        token_loss = F.cross_entropy(logits.float().flatten(0, 1), safe.flatten(), reduction="none").view_as(
            labels
        )
        right = (logits.argmax(-1) == labels) & mask
        has_answer = mask.any(1)
        per_sample = {
            "loss_sum": (token_loss * mask).sum(1),
            "tokens": mask.sum(1),
            "correct": right.sum(1),
            "exact": ((right | ~mask).all(1) & has_answer),
            "samples": has_answer,
        }
        for name, value in per_sample.items():
            getattr(self, name).index_add_(0, depth, value.to(torch.float64))

    def compute(self) -> dict[str, torch.Tensor]:
        def summary(idx) -> dict[str, torch.Tensor]:
            tokens, samples = self.tokens[idx].sum(), self.samples[idx].sum()
            return {
                "loss": self.loss_sum[idx].sum() / tokens.clamp(min=1),
                "acc": self.correct[idx].sum() / tokens.clamp(min=1),
                "acc_exact": self.exact[idx].sum() / samples.clamp(min=1),
            }

        out = summary(slice(None))
        for d in torch.nonzero(self.samples).flatten().tolist():
            out.update({f"{k}@{self.depth_name}={d}": v for k, v in summary(slice(d, d + 1)).items()})
        return {k: v.float() for k, v in out.items()}
