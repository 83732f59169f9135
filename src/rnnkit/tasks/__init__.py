"""The task registry: every recipe by name (`rnnkit train NAME`)."""
from __future__ import annotations

from .adding import AddingTask
from .base import Task, load_checkpoint
from .charlm import CharLMTask
from .copy import CopyTask
from .digits import DigitsTask
from .forecast import ForecastTask
from .mnist import MNISTTask
from .pos import POSTask
from .sentiment import SentimentTask
from .translate import TranslateTask

TASKS: dict[str, Task] = {task.name: task for task in (
    MNISTTask(), CharLMTask(), TranslateTask(), POSTask(), SentimentTask(), ForecastTask(), DigitsTask(), AddingTask(),
    CopyTask())}


def load(path):
    """A checkpoint of any task, read without executing code: `.model` (eval mode), `.cfg`, `.task`, `.extra`."""
    return load_checkpoint(path, TASKS)


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from: {', '.join(TASKS)}")
    return TASKS[name]
