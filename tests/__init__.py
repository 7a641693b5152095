"""The test suite, laid out like ``src/lmsleep`` (see tests/support for the shared helpers)."""
