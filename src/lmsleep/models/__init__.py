"""Models: HybridLM, per-sequence state, and Algorithm 1 (wake and sleep over windows)."""

from lmsleep.models.hybrid import HybridLM
from lmsleep.models.sleep import SleepConfig, SleepHooks, run_windows
from lmsleep.models.state import ModelState
from lmsleep.models.streaming import Stream

__all__ = ["HybridLM", "ModelState", "SleepConfig", "SleepHooks", "Stream", "run_windows"]
