"""Tests of the sleeping hybrid LM (models, streaming, Lightning module and callbacks)."""
