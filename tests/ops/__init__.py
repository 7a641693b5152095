"""Tests of lmsleep.ops: the pure tensor functions and their backends."""
