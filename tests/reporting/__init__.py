"""Tests of reporting: lmsleep report, its tables and figures, the results notebook."""
