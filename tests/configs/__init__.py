"""Tests of the shipped Hydra configs: every one composes and runs; run folders."""
