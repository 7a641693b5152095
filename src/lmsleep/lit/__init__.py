"""LightningModules and what they need (optimisers, metrics)."""

from lmsleep.lit.metrics import AnswerMetrics, masked_cross_entropy
from lmsleep.lit.module import LitLM
from lmsleep.lit.optim import MuonAdamW, OptimConfig, build_optimizer

__all__ = ["AnswerMetrics", "LitLM", "MuonAdamW", "OptimConfig", "build_optimizer", "masked_cross_entropy"]
