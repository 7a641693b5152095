"""Helpers for the entry points."""

from lmsleep.utils.checkpoint import check_checkpoint
from lmsleep.utils.config import ConfigError

__all__ = ["ConfigError", "check_checkpoint"]
