"""What the soft and hard distillation terms compare, for each kind of task output.

A task's logits are one distribution per sequence (single-label
classification), independent sigmoids per sequence (multi-label), values
(regression), or one distribution per token (tagging, masked and causal LM).
Each `LogitTargets` answers, for a batch: at which positions teacher and
student are compared, the soft term (the teacher's outputs as targets), the
hard term (the data's labels) and how many terms the hard sum holds.
`mlx_llm.distillation.objective.DistillationObjective` weights and averages them;
`mlx_llm.distillation.tasks` picks the targets of each ``--task``. Every term is a
sum (``reduction="sum"``) of the pure functions in `mlx_llm.training.losses`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import partial

import mlx.core as mx

from ..training.losses import (
    IGNORE_INDEX,
    binary_cross_entropy_with_logits,
    cross_entropy,
    jensen_shannon,
    mean_squared_error,
    reverse_kl,
    soft_target_loss,
)

DIVERGENCES = ("forward", "reverse", "jsd")


class LogitTargets(ABC):
    """Logits that are distributions over classes (or tokens).

    Soft term: ``T^2 KL(softmax(t / T) || softmax(s / T))`` summed over the
    compared positions (`losses.soft_target_loss`). Subclasses name the positions
    and the hard term.

    Attributes:
        serves_pkd: The BERT-PKD term (matched [CLS] states) applies to this output.
        agreement: The top-1 agreement of student and teacher means something here
            (the argmax of a distribution, not of sigmoids or values).
    """

    serves_pkd = False
    agreement = True

    def positions(self, batch: dict) -> mx.array | None:
        """``(B, L)`` booleans of the compared token positions; ``None``: one output per sequence."""
        return None

    def soft(self, student_logits: mx.array, teacher_logits: mx.array, positions: mx.array | None,
             temperature: float) -> mx.array:
        """The soft term's sum: the student's outputs against the teacher's."""
        return soft_target_loss(student_logits, teacher_logits, temperature=temperature, mask=positions,
                                reduction="sum")

    @abstractmethod
    def hard(self, logits: mx.array, batch: dict) -> mx.array:
        """The hard term's sum: the student's outputs against the batch's labels."""

    @abstractmethod
    def hard_count(self, batch: dict) -> mx.array:
        """How many terms `hard` sums (the trainer divides by it)."""


class ClassTargets(LogitTargets):
    """Single-label classification: logits ``(B, C)``, labels ``(B,)``; hard term cross-entropy."""

    serves_pkd = True

    def hard(self, logits: mx.array, batch: dict) -> mx.array:
        return cross_entropy(logits, batch["labels"], reduction="sum")

    def hard_count(self, batch: dict) -> mx.array:
        return mx.array(batch["labels"].size)


class MultiLabelTargets(ClassTargets):
    """Multi-label classification: logits and multi-hot labels ``(B, C)``, one sigmoid per label.

    Soft term: ``T^2 / C * sum BCE(s / T, sigmoid(t / T))``; hard term: BCE with the labels.
    """

    agreement = False

    def soft(self, student_logits: mx.array, teacher_logits: mx.array, positions: mx.array | None,
             temperature: float) -> mx.array:
        targets = mx.sigmoid(teacher_logits / temperature)
        return (temperature ** 2) * binary_cross_entropy_with_logits(
            student_logits / temperature, targets, reduction="sum") / student_logits.shape[-1]

    def hard(self, logits: mx.array, batch: dict) -> mx.array:
        return binary_cross_entropy_with_logits(logits, batch["labels"], reduction="sum")


class RegressionTargets(ClassTargets):
    """Regression: one value per sequence, ``(B, 1)`` outputs and ``(B,)`` targets.

    Soft term: ``sum (s - t)^2`` (no temperature); hard term: squared error with the labels.
    """

    agreement = False

    def soft(self, student_logits: mx.array, teacher_logits: mx.array, positions: mx.array | None,
             temperature: float) -> mx.array:
        return mean_squared_error(student_logits, teacher_logits.squeeze(-1), reduction="sum")

    def hard(self, logits: mx.array, batch: dict) -> mx.array:
        return mean_squared_error(logits, batch["labels"], reduction="sum")


class TagTargets(LogitTargets):
    """Token classification: logits ``(B, L, C)``, compared on every real token; labels
    ``(B, L)`` on each word's first sub-token (``IGNORE_INDEX`` elsewhere)."""

    def positions(self, batch: dict) -> mx.array:
        return batch["attention_mask"] != 0

    def hard(self, logits: mx.array, batch: dict) -> mx.array:
        return cross_entropy(logits, batch["labels"], reduction="sum")

    def hard_count(self, batch: dict) -> mx.array:
        return (batch["labels"] != IGNORE_INDEX).sum()


class TokenTargets(LogitTargets):
    """Language-model logits ``(B, L, V)``, compared where ``batch[labels_key]`` has a label.

    Args:
        labels_key: ``"mlm_labels"`` (masked positions) or ``"targets"`` (next tokens).
    """

    def __init__(self, labels_key: str):
        self.labels_key = labels_key

    def positions(self, batch: dict) -> mx.array:
        return batch[self.labels_key] != IGNORE_INDEX

    def hard(self, logits: mx.array, batch: dict) -> mx.array:
        return cross_entropy(logits, batch[self.labels_key], reduction="sum")

    def hard_count(self, batch: dict) -> mx.array:
        return self.positions(batch).sum()


class NextTokenTargets(TokenTargets):
    """Causal-LM logits against ``batch["targets"]``, with a choice of soft divergence.

    Args:
        divergence: ``"forward"`` KL (`losses.soft_target_loss`), ``"reverse"`` KL
            (`losses.reverse_kl`) or ``"jsd"``, the generalized Jensen-Shannon
            divergence (`losses.jensen_shannon`) with mix ``beta``.
        beta: The Jensen-Shannon mix.

    Raises:
        ValueError: an unknown divergence.
    """

    def __init__(self, divergence: str = "forward", beta: float = 0.5):
        super().__init__("targets")
        losses = {"forward": soft_target_loss, "reverse": reverse_kl, "jsd": partial(jensen_shannon, beta=beta)}
        if divergence not in losses:
            raise ValueError(f"unknown divergence {divergence!r}; choose one of {DIVERGENCES}")
        self.divergence = losses[divergence]

    def soft(self, student_logits: mx.array, teacher_logits: mx.array, positions: mx.array | None,
             temperature: float) -> mx.array:
        return self.divergence(student_logits, teacher_logits, mask=positions, temperature=temperature,
                               reduction="sum")
