"""Callbacks decide *when* (schedules, stages) and observe (monitoring), never *how*."""

from lmsleep.callbacks.sleep_monitor import SleepMonitor
from lmsleep.callbacks.sleep_schedule import SleepSchedule

__all__ = ["SleepMonitor", "SleepSchedule"]
