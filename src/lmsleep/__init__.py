"""lmsleep: sleep consolidation for hybrid attention/SSM language models (arXiv 2605.26099)."""

__version__ = "0.1.0"
