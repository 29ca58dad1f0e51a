"""``classify``: text (or text-pair) classification and regression.

Data: CSV, TSV or JSONL with a text column (and optionally a second one) and
a label column (`mlx_llm.data.read_classification`). Encoders classify the
pooled ``[CLS]``, decoders the last real token. Losses as transformers':
cross-entropy (``single_label``), binary cross-entropy per label
(``multi_label``), squared error (``regression``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterator

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .. import data
from ..blocks.heads import task_logits
from ..tokenization import Tokenizer
from ..training.objectives import SequenceClassificationObjective
from .base import LabelTask, pad_token_id
from .settings import RunSettings

# transformers' problem_type names.
HF_PROBLEMS = {"single_label": "single_label_classification", "multi_label": "multi_label_classification",
               "regression": "regression"}
DEFAULT_METRICS = {"single_label": "accuracy", "multi_label": "micro_f1", "regression": "loss"}


def training_labels(values: list, base_config: dict) -> data.LabelSet:
    """The label set of the training ``values``, in the order of the base's own head when it has these labels."""
    labels = data.LabelSet.from_labels(values)
    if "label2id" in base_config and set(base_config["label2id"]) == set(labels.names):
        labels = data.LabelSet.from_config(base_config)  # keep a trained head's label order
    return labels


class ClassifyTask(LabelTask):
    name = "classify"
    help = "Text classification or regression (CSV/TSV/JSONL: a text column, a label column)."
    model_task = "sequence_classification"
    options = ("problem",)
    columns = ("text_column", "text_pair_column", "label_column")

    def resolve(self, settings: RunSettings, examples: list, base_config: dict) -> RunSettings:
        if settings.problem == "regression":
            return replace(settings, labels=None)
        if settings.problem == "multi_label":
            values = [label for example in examples for label in example.label]
        else:
            values = [example.label for example in examples]
        return replace(settings, labels=training_labels(values, base_config).names)

    def read(self, path: str, settings: RunSettings, labelled: bool = True) -> list:
        return data.read_classification(path, settings.text_column, settings.text_pair_column,
                                        settings.label_column or "label", require_labels=labelled)

    def encode(self, examples: list, tokenizer: Tokenizer, settings: RunSettings) -> list[dict]:
        return data.encode_classification(examples, tokenizer, settings.label_set(), settings.max_length,
                                          problem=settings.problem)

    def batches(self, encoded: list[dict], batch_size: int, pad_id: int, settings: RunSettings,
                shuffle: bool, seed: int = 0):
        return data.ClassificationBatches(encoded, batch_size, pad_id, shuffle=shuffle, seed=seed,
                                          problem=settings.problem)

    def unlabelled(self, examples: list) -> list:
        return [replace(example, label=None) for example in examples]

    def objective(self, settings: RunSettings):
        return SequenceClassificationObjective(settings.problem)

    def default_metric(self, settings: RunSettings) -> str:
        return DEFAULT_METRICS[settings.problem]

    def head_config(self, settings: RunSettings) -> dict:
        if settings.problem == "regression":
            labels = {"num_labels": 1, "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}
        else:
            labels = settings.label_set().to_config()
        return {"problem_type": HF_PROBLEMS[settings.problem], **labels}


    def predict(self, model: nn.Module, tokenizer: Tokenizer, examples: list, settings: RunSettings,
                batch_size: int, max_tokens: int, temperature: float) -> Iterator[dict[str, Any]]:
        """``{"label", "probabilities": {label: p}}``; multi-label ``{"labels", "probabilities"}``
        (labels at p >= 0.5); regression ``{"value"}``."""
        encoded = self.encode(self.unlabelled(examples), tokenizer, settings)
        batches = self.batches(encoded, batch_size, pad_token_id(tokenizer), settings, shuffle=False)
        names = settings.labels
        for _, batch in batches.iterate_once():
            logits = task_logits(model, batch).astype(mx.float32)
            if settings.problem == "regression":
                for value in np.array(logits[:, 0]):
                    yield {"value": float(value)}
                continue
            multi_label = settings.problem == "multi_label"
            probabilities = np.array(mx.sigmoid(logits) if multi_label else mx.softmax(logits, axis=-1))
            for row in probabilities:
                scores = {names[i]: round(float(p), 6) for i, p in enumerate(row)}
                if multi_label:
                    yield {"labels": [names[i] for i in np.flatnonzero(row >= 0.5)], "probabilities": scores}
                else:
                    yield {"label": names[int(row.argmax())], "probabilities": scores}
