"""``tag``: sequence labelling (named entities, parts of speech).

Data: CoNLL column files (token ... tag, ``-DOCSTART-`` skipped) or JSONL
``tokens``/``tags`` (`mlx_llm.data.read_conll`). Each word's tag goes on its
first sub-token; validation reports entity-level precision, recall and F1 as
seqeval computes them (IOB2 or IOBES).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterator

import mlx.nn as nn
import numpy as np

from .. import data
from ..blocks.heads import task_logits
from ..tokenization import Tokenizer
from ..training.objectives import TokenClassificationObjective
from .base import LabelTask, pad_token_id
from .classify import training_labels
from .settings import RunSettings


def infer_scheme(tags: list[str]) -> str:
    """``"IOBES"`` when the tags have ``S-`` or ``E-`` prefixes, else ``"IOB2"``."""
    return "IOBES" if {tag.split("-", 1)[0] for tag in tags} & {"S", "E"} else "IOB2"


class TagTask(LabelTask):
    name = "tag"
    help = "Sequence labelling (CoNLL columns or JSONL tokens/tags)."
    model_task = "token_classification"
    options = ("scheme",)

    def resolve(self, settings: RunSettings, examples: list, base_config: dict) -> RunSettings:
        tags = [tag for example in examples for tag in example.tags]
        scheme = settings.scheme or infer_scheme(tags)
        return replace(settings, scheme=scheme, labels=training_labels(tags, base_config).names)

    def read(self, path: str, settings: RunSettings, labelled: bool = True) -> list:
        return data.read_conll(path, require_tags=labelled)

    def encode(self, examples: list, tokenizer: Tokenizer, settings: RunSettings) -> list[dict]:
        return data.encode_tagging(examples, tokenizer, settings.label_set(), settings.max_length)

    def batches(self, encoded: list[dict], batch_size: int, pad_id: int, settings: RunSettings,
                shuffle: bool, seed: int = 0):
        return data.TaggingBatches(encoded, batch_size, pad_id, shuffle=shuffle, seed=seed)

    def unlabelled(self, examples: list) -> list:
        return [replace(example, tags=None) for example in examples]

    def objective(self, settings: RunSettings):
        return TokenClassificationObjective(settings.labels, scheme=settings.scheme)

    def default_metric(self, settings: RunSettings) -> str:
        return "f1"

    def head_config(self, settings: RunSettings) -> dict:
        return settings.label_set().to_config()


    def predict(self, model: nn.Module, tokenizer: Tokenizer, examples: list, settings: RunSettings,
                batch_size: int, max_tokens: int, temperature: float) -> Iterator[dict[str, Any]]:
        """``{"words", "tags"}``: each word's tag from its first sub-token; words cut by
        truncation (or with no tokens) get ``"O"``."""
        examples = self.unlabelled(examples)
        encoded = self.encode(examples, tokenizer, settings)
        batches = self.batches(encoded, batch_size, pad_token_id(tokenizer), settings, shuffle=False)
        names = settings.labels
        for indices, batch in batches.iterate_once():
            predictions = np.array(task_logits(model, batch).argmax(axis=-1))
            for row, index in enumerate(indices):
                example, word_ids = examples[int(index)], encoded[int(index)]["word_ids"]
                tags: list[str | None] = [None] * len(example.words)
                for position, word in enumerate(word_ids[: predictions.shape[1]]):
                    if word >= 0 and tags[word] is None:
                        tags[word] = names[int(predictions[row, position])]
                yield {"words": example.words, "tags": [tag or "O" for tag in tags]}
