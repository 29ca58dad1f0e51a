"""The task registry: one object per fine-tuning task, which the workflows ask instead of
comparing task names.

Each task (`base.Task`) owns its reader, encoding, batches, objective,
default metric, predictions and task model (head and transformers
architecture); a run's settings are a `RunSettings`, written to the run
folder as ``finetune.json`` and read back as itself. A new task is a module
here with a `Task` subclass and a line in `TASKS`; `finetune`, `distill`,
``predict``, ``evaluate``, ``export`` and the command line pick it up.
"""

from __future__ import annotations

from ..utils import registered
from .base import Task, model_kind, pad_token_id
from .classify import ClassifyTask
from .lm import LanguageModelTask
from .seq2seq import Seq2SeqTask
from .settings import COLUMN_SETTINGS, RUN_FILE, RunSettings
from .tag import TagTask

TASKS: dict[str, Task] = {task.name: task for task in (ClassifyTask(), TagTask(), LanguageModelTask(), Seq2SeqTask())}


def get_task(name: str) -> Task:
    """The task registered as ``name`` (a ``ValueError`` naming the known tasks otherwise)."""
    return registered(TASKS, name, "task")


__all__ = [
    "COLUMN_SETTINGS",
    "RUN_FILE",
    "TASKS",
    "ClassifyTask",
    "LanguageModelTask",
    "RunSettings",
    "Seq2SeqTask",
    "TagTask",
    "Task",
    "get_task",
    "model_kind",
    "pad_token_id",
]
