"""Tests of the lmsleep command: errors, usage, checkpoint overrides, the installed package."""
