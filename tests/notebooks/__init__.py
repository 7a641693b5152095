"""Tests of the notebooks/."""
