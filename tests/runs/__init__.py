"""Whole runs through train / evaluate / the command: round trips, resuming, preemption, DDP, multi-node, text."""
