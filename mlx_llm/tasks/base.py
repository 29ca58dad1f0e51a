"""The task interface: what `finetune`, `distill`, `predict`, `evaluate` and `export` ask a task.

A task owns everything that depends on it: reading its files, encoding
examples, padding them into batches, the objective (loss and validation
metrics), the default metric that picks the kept weights, predictions, and
the task model's ``config.json`` (its head and transformers architecture).
The workflows hold no task logic: they call these methods on the object
`mlx_llm.tasks.get_task` returns.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Iterator

import mlx.nn as nn

from ..blocks.model_output import DECODER, ENCODER
from ..models import get_family
from ..tokenization import Tokenizer
from .settings import RunSettings

# Keys of a base config.json that describe another task's head; a task model sets its own.
_HEAD_KEYS = ("id2label", "label2id", "num_labels", "problem_type")


def model_kind(model_type: str | None) -> str:
    """``"decoder"``, ``"encoder"`` or ``"encoder-decoder"``: what the family's ``Model.kind`` says."""
    return get_family(model_type).Model.kind


def pad_token_id(tokenizer: Tokenizer) -> int:
    """The padding id (GPT-2 and Llama tokenizers often have none: then end of sequence;
    masks keep padding out of every result either way)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return candidate
    return 0


class Task(ABC):
    """One fine-tuning task.

    Attributes:
        name: Registry name (``--task``).
        help: One line for ``--help``.
        model_kinds: The model kinds it tunes (``Model.kind``).
        models_help: Those kinds in words, for error messages.
        model_task: The task model the families build (``"sequence_classification"``, ...).
        columns: The column settings its reader takes (`RunSettings.with_columns`).
        options: Other run settings it reads (``"problem"``, ``"scheme"``); left out of its
            `RunSettings` otherwise.
        trains_head: Its head starts fresh and trains in full under LoRA.
    """

    name: str
    help: str
    model_kinds: tuple[str, ...]
    models_help: str
    model_task: str
    columns: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    trains_head: bool = True

    # --- settings and data ---------------------------------------------------------------------

    def resolve(self, settings: RunSettings, examples: list, base_config: dict) -> RunSettings:
        """The run's settings completed from its training examples (labels, scheme, ...)."""
        return settings

    @abstractmethod
    def read(self, path: str, settings: RunSettings, labelled: bool = True) -> list:
        """Examples of a data file; ``labelled=False`` accepts input without targets (prediction)."""

    @abstractmethod
    def encode(self, examples: list, tokenizer: Tokenizer, settings: RunSettings) -> list[dict]:
        """The examples as token ids (and targets), cut to ``settings.max_length``."""

    @abstractmethod
    def batches(self, encoded: list[dict], batch_size: int, pad_id: int, settings: RunSettings,
                shuffle: bool, seed: int = 0):
        """A resumable batch source (`mlx_llm.data.ResumableEpochs`) with ``iterate_once``."""

    def unlabelled(self, examples: list) -> list:
        """The examples without their targets (predictions never depend on them)."""
        return examples

    # --- training and use ----------------------------------------------------------------------

    @abstractmethod
    def objective(self, settings: RunSettings):
        """The `mlx_llm.training.trainer.Objective`: loss terms and validation metrics."""

    def default_metric(self, settings: RunSettings) -> str:
        """The validation metric that picks the kept weights when none is named (here the loss)."""
        return "loss"

    @abstractmethod
    def predict(self, model: nn.Module, tokenizer: Tokenizer, examples: list, settings: RunSettings,
                batch_size: int, max_tokens: int, temperature: float) -> Iterator[dict[str, Any]]:
        """One JSON-ready record per example, in order."""

    # --- the task model ------------------------------------------------------------------------

    def check_model(self, model_type: str | None, source: str) -> None:
        """Refuse a base model this task cannot tune (``ValueError`` naming what it is)."""
        kind = model_kind(model_type)
        if kind not in self.model_kinds:
            raise ValueError(f"--task {self.name} tunes {self.models_help}; {source} is a {model_type!r} "
                             f"model ({kind})")

    def architecture(self, config: dict) -> str:
        """The transformers class name of the task model built from ``config``."""
        from ..model_files.export import hf_architecture

        return hf_architecture(config["model_type"], self.model_task)

    def head_config(self, settings: RunSettings) -> dict:
        """``config.json`` keys of the task's head (labels, problem type)."""
        return {}

    def task_config(self, base_config: dict, settings: RunSettings, pad_id: int | None) -> dict:
        """The base's ``config.json`` turned into the task model's."""
        config = {key: value for key, value in base_config.items() if key not in ("quantization", *_HEAD_KEYS)}
        config["architectures"] = [self.architecture(base_config)]
        config.update(self.head_config(settings))
        if self.trains_head and model_kind(config.get("model_type")) == DECODER and config.get("pad_token_id") is None:
            config["pad_token_id"] = pad_id  # a decoder's head finds each row's last real token with it
        return config

    def lora_trainable(self, model: nn.Module) -> tuple[str, ...]:
        """Modules that train in full beside LoRA adapters: a fresh head (or the pooler)."""
        if not self.trains_head:
            return ()
        names = {name for name, _ in model.named_modules()}
        return tuple(name for name in ("classifier", "head", "model.pooler") if name in names)


class LabelTask(Task):
    """A task that trains a label head on an encoder or a decoder (``classify``, ``tag``)."""

    model_kinds = (ENCODER, DECODER)
    models_help = "an encoder (BERT family) or a decoder (GPT-2, the Llama family)"


class TextTask(Task):
    """A task that trains the model's own language-model head to write text (``lm``, ``seq2seq``):
    no fresh head, so LoRA trains adapters only."""

    trains_head = False
