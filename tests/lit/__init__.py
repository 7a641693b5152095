"""Tests of lmsleep.lit: the Lightning module, metrics and optimisers."""
