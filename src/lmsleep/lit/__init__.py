"""LightningModules and what they need (optimisers, metrics)."""

from lmsleep.lit.metrics import AnswerMetrics, masked_cross_entropy
from lmsleep.lit.module import LitLM
from lmsleep.lit.optim import OptimConfig, build_optimizers

__all__ = ["AnswerMetrics", "LitLM", "OptimConfig", "build_optimizers", "masked_cross_entropy"]
