"""Tests of lmsleep.callbacks."""
