"""The distillation tasks (``mlx-llm distill --task``): what each brings to the workflow.

A `DistillationTask` owns the head its teacher must have, the student's head,
its data (training and validation batches, the validation objective and, for
a fine-tuned teacher, the run settings the student is saved with) and its
`mlx_llm.distillation.targets.LogitTargets` (which logits the soft and hard terms
compare, where). `distill` and `distill_objective` ask these objects and never
compare task names. ``classify`` and ``tag`` distill a fine-tuned teacher and
read their data through the fine-tuning task of the same name
(`mlx_llm.tasks`); ``mlm`` (task-agnostic masked-LM distillation of an
encoder, as DistilBERT) and ``lm`` (causal-LM distillation of a decoder on a
text corpus) read text files. A new distillation task is a subclass here and
an entry in `DISTILL_TASKS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import mlx.nn as nn

from .. import data
from ..blocks.heads import task_of
from ..tasks import RUN_FILE as FINETUNE_RUN_FILE
from ..tasks import RunSettings, Task, get_task, pad_token_id
from ..tasks.tag import infer_scheme
from ..tokenization import Tokenizer
from ..training.objectives import CausalLMObjective, MaskedLMObjective
from ..utils import registered
from .targets import (
    ClassTargets,
    LogitTargets,
    MultiLabelTargets,
    NextTokenTargets,
    RegressionTargets,
    TagTargets,
    TokenTargets,
)

if TYPE_CHECKING:
    from ..model_files.run_folders import RunFolder
    from .distill import DistillConfig


@dataclass
class DistillationData:
    """What a task's `DistillationTask.data` returns.

    Attributes:
        train: The training batch source (resumable; ``batches_per_epoch``).
        evaluation: A callable that yields the validation batches, or ``None``.
        batches_per_epoch: Training batches in one epoch.
        objective: The task's validation objective (metrics of teacher and student).
        settings: The run settings the student is saved with (``finetune.json``), so that
            it predicts and evaluates like a fine-tuned run; ``None`` for text tasks.
    """

    train: Any
    evaluation: Callable[[], Iterator[dict]] | None
    batches_per_epoch: int
    objective: Any
    settings: RunSettings | None = None


class DistillationTask(ABC):
    """One distillation task.

    Attributes:
        name: Registry name (``--task``).
        teacher_tasks: The task models (`heads.task_of`) a teacher may be.
        caches_teacher: ``--cache-teacher`` applies: one teacher output per training example,
            computed once.
    """

    name: str
    teacher_tasks: tuple[str, ...]
    caches_teacher: bool = False

    def check_teacher(self, teacher: nn.Module, source: str) -> None:
        """Refuse a teacher without the head this task distills (``ValueError`` naming what it is)."""
        if task_of(teacher) not in self.teacher_tasks:
            raise ValueError(f"--task {self.name} needs a teacher with a {' or '.join(self.teacher_tasks)} head; "
                             f"{source} is a {teacher.args.model_type} {task_of(teacher)} model")

    def student(self, student: nn.Module, config: dict) -> tuple[nn.Module, dict]:
        """The student with the head this task trains (by default the teacher's, as copied)."""
        return student, config

    @abstractmethod
    def data(self, config: DistillConfig, tokenizer: Tokenizer, teacher_config: dict, teacher_folder: Path,
             run_folder: RunFolder, progress: bool) -> DistillationData:
        """The run's batches and validation objective, read as ``config`` says. Text tasks
        prepare ``run_folder`` first (``lm`` keeps its token cache there); labelled data
        is read before anything is written."""

    @abstractmethod
    def targets(self, problem: str | None = None, divergence: str = "forward", beta: float = 0.5) -> LogitTargets:
        """What the soft and hard terms compare.

        Args:
            problem: Classification kind of the teacher's head (`RunSettings.problem`).
            divergence, beta: The causal-LM soft term (`distill_targets.NextTokenTargets`).
        """


class LabelledDistillation(DistillationTask):
    """Task-specific distillation of a fine-tuned teacher: the data are read, encoded and
    batched by the fine-tuning task of the same name, with the teacher run's settings."""

    caches_teacher = True

    @property
    def finetuning(self) -> Task:
        return get_task(self.name)

    @property
    def teacher_tasks(self) -> tuple[str, ...]:
        return (self.finetuning.model_task,)

    def settings(self, config: DistillConfig, teacher_config: dict, teacher_folder: Path) -> RunSettings:
        """How the data is read: the teacher run's settings, or its config's labels (then with
        the columns ``config`` names), cut to ``config.max_length``."""
        if (teacher_folder / FINETUNE_RUN_FILE).is_file():
            return replace(RunSettings.from_json(teacher_folder), max_length=config.max_length)
        if "id2label" not in teacher_config:
            raise ValueError(f"--task {self.name} distills a fine-tuned model; {config.teacher} has no labels "
                             "(fine-tune it first with `mlx-llm finetune`)")
        labels = [teacher_config["id2label"][str(i)] for i in range(len(teacher_config["id2label"]))]
        problem = {"multi_label_classification": "multi_label", "regression": "regression"}.get(
            teacher_config.get("problem_type"), "single_label")
        return RunSettings(task=self.name, problem=problem if "problem" in self.finetuning.options else None,
                           labels=labels, max_length=config.max_length, text_column=config.text_column,
                           text_pair_column=config.text_pair_column, label_column=config.label_column)

    def data(self, config: DistillConfig, tokenizer: Tokenizer, teacher_config: dict, teacher_folder: Path,
             run_folder: RunFolder, progress: bool) -> DistillationData:
        settings = self.settings(config, teacher_config, teacher_folder)
        task = self.finetuning
        pad_id = pad_token_id(tokenizer)

        def batches(path: str, shuffle: bool):
            encoded = task.encode(task.read(path, settings), tokenizer, settings)
            return task.batches(encoded, config.batch_size, pad_id, settings, shuffle=shuffle, seed=config.seed)

        evaluation = None if not config.valid else batches(config.valid, shuffle=False).evaluation_batches
        train = batches(config.data[0], shuffle=True)
        return DistillationData(train, evaluation, train.batches_per_epoch, task.objective(settings), settings)


class ClassifyDistillation(LabelledDistillation):
    """``classify``: a fine-tuned sequence classifier (or regressor)."""

    name = "classify"
    # The problem kinds of `RunSettings.problem` (transformers' problem_type).
    PROBLEM_TARGETS = {"single_label": ClassTargets, "multi_label": MultiLabelTargets,
                       "regression": RegressionTargets}

    def targets(self, problem: str | None = None, divergence: str = "forward", beta: float = 0.5) -> LogitTargets:
        return self.PROBLEM_TARGETS[problem or "single_label"]()


class TagDistillation(LabelledDistillation):
    """``tag``: a fine-tuned token classifier (validated with the scheme of its run, or of
    its head's tags when it has no run record)."""

    name = "tag"

    def settings(self, config: DistillConfig, teacher_config: dict, teacher_folder: Path) -> RunSettings:
        settings = super().settings(config, teacher_config, teacher_folder)
        return replace(settings, scheme=settings.scheme or infer_scheme(settings.labels))

    def targets(self, problem: str | None = None, divergence: str = "forward", beta: float = 0.5) -> LogitTargets:
        return TagTargets()


class MaskedLMDistillation(DistillationTask):
    """``mlm``: task-agnostic distillation of an encoder on masked positions of a text corpus.

    The student keeps only the masked-LM head (DistilBERT drops NSP and the pooler).
    Documents are separated by blank lines; masked-LM distillation needs no random next
    sentences, so every pair is a true continuation (``next_sentence_probability=1``).
    """

    name = "mlm"
    teacher_tasks = ("masked_lm", "pretraining")

    def student(self, student: nn.Module, config: dict) -> tuple[nn.Module, dict]:
        from .students import masked_lm_student  # (builds models: imported when used)

        return masked_lm_student(student, config)

    def data(self, config: DistillConfig, tokenizer: Tokenizer, teacher_config: dict, teacher_folder: Path,
             run_folder: RunFolder, progress: bool) -> DistillationData:
        run_folder.prepare()
        documents = data.tokenize_documents_for_bert(config.data, tokenizer, split_on_blank_lines=True,
                                                     show_progress=progress)
        if config.valid:
            valid_documents = data.tokenize_documents_for_bert([config.valid], tokenizer, split_on_blank_lines=True,
                                                               show_progress=progress)
        else:
            documents, valid_documents = data.split_documents(documents, 0.1)
        train = data.BertPretrainingBatches(documents, tokenizer, config.max_length, config.batch_size,
                                            seed=config.seed, next_sentence_probability=1.0)
        valid = data.BertPretrainingBatches(valid_documents, tokenizer, config.max_length, config.batch_size,
                                            seed=config.seed + 1, next_sentence_probability=1.0)
        return DistillationData(train, valid.evaluation_batches, train.batches_per_epoch, MaskedLMObjective())

    def targets(self, problem: str | None = None, divergence: str = "forward", beta: float = 0.5) -> LogitTargets:
        return TokenTargets("mlm_labels")


class CausalLMDistillation(DistillationTask):
    """``lm``: causal-LM distillation of a decoder on a text corpus (tokenized once into the
    run folder's ``data/``), every next token compared."""

    name = "lm"
    teacher_tasks = ("causal_lm",)

    def data(self, config: DistillConfig, tokenizer: Tokenizer, teacher_config: dict, teacher_folder: Path,
             run_folder: RunFolder, progress: bool) -> DistillationData:
        cache = run_folder.prepare() / "data"
        token_file = data.tokenize_corpus(config.data, tokenizer, cache, show_progress=progress)
        if config.valid:
            train_tokens = token_file.tokens
            valid_tokens = data.tokenize_corpus([config.valid], tokenizer, cache, show_progress=progress).tokens
        else:
            train_tokens, valid_tokens = data.split_tokens(token_file, 0.1)
        train = data.CausalLMBatches(train_tokens, config.max_length, config.batch_size, seed=config.seed)
        valid = data.CausalLMDictBatches(data.CausalLMBatches(valid_tokens, config.max_length, config.batch_size,
                                                              seed=config.seed))
        return DistillationData(data.CausalLMDictBatches(train), valid.evaluation_batches, train.batches_per_epoch,
                                CausalLMObjective())

    def targets(self, problem: str | None = None, divergence: str = "forward", beta: float = 0.5) -> LogitTargets:
        return NextTokenTargets(divergence, beta)


DISTILL_TASKS: dict[str, DistillationTask] = {
    distillation.name: distillation
    for distillation in (MaskedLMDistillation(), ClassifyDistillation(), TagDistillation(), CausalLMDistillation())
}


def get_distillation_task(name: str) -> DistillationTask:
    """The distillation task registered as ``name`` (a ``ValueError`` naming the known ones otherwise)."""
    return registered(DISTILL_TASKS, name, "task")
