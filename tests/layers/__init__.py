"""Tests of lmsleep.layers."""
