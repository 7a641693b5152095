"""Helpers for the entry points."""

from lmsleep.utils.config import ConfigError, check_checkpoint

__all__ = ["ConfigError", "check_checkpoint"]
