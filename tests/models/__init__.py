"""Tests of lmsleep.models: the sleeping hybrid LM, Algorithm 1, streaming, FLOPs."""
