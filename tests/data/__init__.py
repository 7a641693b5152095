"""Tests of lmsleep.data: tasks, the task and text DataModules, tokenizers."""
