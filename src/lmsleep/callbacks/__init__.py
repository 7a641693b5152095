"""Callbacks decide *when* (schedules, stages) and observe (monitoring), never *how*."""

from lmsleep.callbacks.final_validation import FinalValidation
from lmsleep.callbacks.preemption import Preempted, Preemption
from lmsleep.callbacks.sleep_monitor import SleepMonitor
from lmsleep.callbacks.sleep_schedule import SleepSchedule
from lmsleep.callbacks.validation_pictures import ValidationPictures

__all__ = [
    "FinalValidation",
    "Preempted",
    "Preemption",
    "SleepMonitor",
    "SleepSchedule",
    "ValidationPictures",
]
