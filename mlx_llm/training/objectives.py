"""Training objectives: which loss terms a batch has and what each averages over.

See `training.Objective`. Each term's loss is a sum over predictions here;
the trainer divides by the term's count over the whole accumulation window.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..blocks.heads import task_logits
from .losses import IGNORE_INDEX, binary_cross_entropy_with_logits, cross_entropy, mean_squared_error


class CausalLMObjective:
    """Next-token prediction on ``{"input_ids", "targets"}`` batches (targets
    already shifted; ``-100`` where nothing is predicted)."""

    def counts(self, batch: dict) -> dict[str, mx.array]:
        return {"lm": (batch["targets"] != IGNORE_INDEX).sum()}

    def sums(self, model: nn.Module, batch: dict) -> dict[str, mx.array]:
        logits = model(batch["input_ids"], batch.get("attention_mask"))
        return {"lm": cross_entropy(logits, batch["targets"], reduction="sum")}

    def evaluate(self, model: nn.Module, batch: dict) -> dict[str, tuple[mx.array, mx.array]]:
        count = self.counts(batch)["lm"]
        return {"loss": (self.sums(model, batch)["lm"], count)}


class MaskedLMObjective:
    """Masked-LM alone on batches with ``input_ids``, ``attention_mask``, optional
    ``token_type_ids`` and ``mlm_labels`` (any extra keys are ignored); the loss is
    the mean over masked tokens, and validation adds their accuracy."""

    def counts(self, batch: dict) -> dict[str, mx.array]:
        return {"loss": (batch["mlm_labels"] != IGNORE_INDEX).sum()}

    def _logits(self, model: nn.Module, batch: dict) -> mx.array:
        segments = batch.get("token_type_ids") if model.args.type_vocab_size > 0 else None  # DistilBERT has none
        return model(batch["input_ids"], batch.get("attention_mask"), segments)  # a masked-LM model's logits

    def sums(self, model: nn.Module, batch: dict) -> dict[str, mx.array]:
        return {"loss": cross_entropy(self._logits(model, batch), batch["mlm_labels"], reduction="sum")}

    def evaluate(self, model: nn.Module, batch: dict) -> dict[str, tuple[mx.array, mx.array]]:
        logits, labels = self._logits(model, batch), batch["mlm_labels"]
        count = self.counts(batch)["loss"]
        correct = ((logits.argmax(-1) == labels) & (labels != IGNORE_INDEX)).sum()
        return {"loss": (cross_entropy(logits, labels, reduction="sum"), count), "accuracy": (correct, count)}


class BertPretrainingObjective:
    """Masked-LM + next-sentence prediction on batches with ``input_ids``,
    ``token_type_ids``, ``attention_mask``, ``mlm_labels`` and
    ``next_sentence_label``. The loss is the MLM mean over masked tokens plus
    the NSP mean over sequences, as in BERT."""

    def counts(self, batch: dict) -> dict[str, mx.array]:
        return {"mlm": (batch["mlm_labels"] != IGNORE_INDEX).sum(), "nsp": mx.array(batch["next_sentence_label"].shape[0])}

    def _outputs(self, model: nn.Module, batch: dict):
        return model.forward(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])

    def sums(self, model: nn.Module, batch: dict) -> dict[str, mx.array]:
        output = self._outputs(model, batch)
        return {
            "mlm": cross_entropy(output.mlm_logits, batch["mlm_labels"], reduction="sum"),
            "nsp": cross_entropy(output.nsp_logits, batch["next_sentence_label"], reduction="sum"),
        }

    def evaluate(self, model: nn.Module, batch: dict) -> dict[str, tuple[mx.array, mx.array]]:
        output = self._outputs(model, batch)
        labels, masked = batch["mlm_labels"], batch["mlm_labels"] != IGNORE_INDEX
        counts = self.counts(batch)
        mlm = cross_entropy(output.mlm_logits, labels, reduction="sum")
        nsp = cross_entropy(output.nsp_logits, batch["next_sentence_label"], reduction="sum")
        mlm_correct = ((output.mlm_logits.argmax(-1) == labels) & masked).sum()
        nsp_correct = (output.nsp_logits.argmax(-1) == batch["next_sentence_label"]).sum()
        return {
            "mlm_loss": (mlm, counts["mlm"]),
            "nsp_loss": (nsp, counts["nsp"]),
            "mlm_accuracy": (mlm_correct, counts["mlm"]),
            "nsp_accuracy": (nsp_correct, counts["nsp"]),
        }

    def summarize(self, metrics: dict[str, float]) -> dict[str, float]:
        """Add the total loss (MLM + NSP) and the masked-LM perplexity."""
        return {**metrics, "loss": metrics["mlm_loss"] + metrics["nsp_loss"],
                "perplexity": math.exp(min(metrics["mlm_loss"], 700.0))}


PROBLEMS = ("single_label", "multi_label", "regression")


class SequenceClassificationObjective:
    """Sequence classification on batches with ``input_ids``, ``attention_mask``,
    optional ``token_type_ids`` and ``labels``, with transformers' losses:
    cross-entropy (``single_label``, ``(B,)`` ids), binary cross-entropy per
    label (``multi_label``, ``(B, C)`` multi-hot), squared error (``regression``).
    """

    def __init__(self, problem: str = "single_label", threshold: float = 0.5):
        if problem not in PROBLEMS:
            raise ValueError(f"unknown problem type {problem!r}; choose one of {PROBLEMS}")
        self.problem = problem
        self.threshold = threshold

    def counts(self, batch: dict) -> dict[str, mx.array]:
        return {"loss": mx.array(batch["labels"].size)}  # B, or B * C outputs for multi-label

    def _loss_sum(self, logits: mx.array, labels: mx.array) -> mx.array:
        if self.problem == "single_label":
            return cross_entropy(logits, labels, reduction="sum")
        if self.problem == "multi_label":
            return binary_cross_entropy_with_logits(logits, labels, reduction="sum")
        return mean_squared_error(logits, labels, reduction="sum")

    def sums(self, model: nn.Module, batch: dict) -> dict[str, mx.array]:
        return {"loss": self._loss_sum(task_logits(model, batch), batch["labels"])}

    def predict(self, logits: mx.array) -> mx.array:
        """Class ids ``(B,)``, multi-hot ``(B, C)`` or values ``(B,)`` from logits."""
        if self.problem == "single_label":
            return logits.argmax(axis=-1)
        if self.problem == "multi_label":
            return (mx.sigmoid(logits) >= self.threshold).astype(mx.int32)
        return logits.squeeze(-1)

    def evaluate_dataset(self, model: nn.Module, batches) -> dict[str, float]:
        """Loss and the task's metrics over the whole validation set."""
        from .metrics import classification_metrics, multilabel_metrics, regression_metrics

        loss, count, predictions, labels = 0.0, 0, [], []
        for batch in batches:
            logits = task_logits(model, batch)
            batch_loss = self._loss_sum(logits, batch["labels"])
            mx.eval(batch_loss, logits)
            loss += float(batch_loss)
            count += batch["labels"].size
            predictions.append(np.array(self.predict(logits).astype(mx.float32)))
            labels.append(np.array(batch["labels"]))
        if not predictions:
            return {}
        predicted, expected = np.concatenate(predictions), np.concatenate(labels)
        if self.problem == "single_label":
            metrics = classification_metrics(predicted.astype(np.int64), expected.astype(np.int64))
        elif self.problem == "multi_label":
            metrics = multilabel_metrics(predicted, expected, threshold=0.5)
        else:
            metrics = regression_metrics(predicted, expected)
        return {"loss": loss / max(count, 1), **metrics}


class TokenClassificationObjective:
    """Sequence labelling on batches with ``input_ids``, ``attention_mask`` and
    ``labels`` ``(B, L)`` (``-100`` on special tokens, padding and word
    continuations). Validation reports token accuracy and, given the tag
    names, entity-level precision, recall and F1 as seqeval computes them.

    Args:
        tag_names: Tag of each label id (``["O", "B-PER", ...]``); ``None``
            reports loss and token accuracy only.
        scheme: ``"IOB2"`` or ``"IOBES"``.
    """

    def __init__(self, tag_names: list[str] | None = None, scheme: str = "IOB2"):
        self.tag_names = tag_names
        self.scheme = scheme

    def counts(self, batch: dict) -> dict[str, mx.array]:
        return {"loss": (batch["labels"] != IGNORE_INDEX).sum()}

    def sums(self, model: nn.Module, batch: dict) -> dict[str, mx.array]:
        return {"loss": cross_entropy(task_logits(model, batch), batch["labels"], reduction="sum")}

    def evaluate_dataset(self, model: nn.Module, batches) -> dict[str, float]:
        """Loss, token accuracy and entity scores over the whole validation set."""
        from .metrics import entity_scores

        loss, count, correct = 0.0, 0, 0
        predicted_tags, true_tags = [], []
        for batch in batches:
            logits = task_logits(model, batch)
            labels = batch["labels"]
            batch_loss = cross_entropy(logits, labels, reduction="sum")
            predictions = logits.argmax(axis=-1)
            mx.eval(batch_loss, predictions)
            loss += float(batch_loss)
            predictions, labels = np.array(predictions), np.array(labels)
            scored = labels != IGNORE_INDEX  # each word's first sub-token
            count += int(scored.sum())
            correct += int((predictions[scored] == labels[scored]).sum())
            if self.tag_names is not None:
                for row in range(labels.shape[0]):
                    keep = scored[row]
                    predicted_tags.append([self.tag_names[i] for i in predictions[row][keep]])
                    true_tags.append([self.tag_names[i] for i in labels[row][keep]])
        if count == 0:
            return {}
        metrics = {"loss": loss / count, "accuracy": correct / count}
        if self.tag_names is not None:
            scores = entity_scores(predicted_tags, true_tags, scheme=self.scheme)
            metrics.update({name: scores[name] for name in ("precision", "recall", "f1")})
        return metrics


def shift_right(labels: mx.array, start_token_id: int, pad_token_id: int) -> mx.array:
    """Decoder inputs for teacher forcing, as transformers' ``_shift_right``:
    ``[start, labels[:, :-1]]`` with ``-100`` replaced by ``pad_token_id``.

    Args:
        labels: ``(B, T)`` target ids, ``-100`` on padding.

    Returns:
        ``(B, T)`` int ids.
    """
    start = mx.full((labels.shape[0], 1), start_token_id, dtype=labels.dtype)
    shifted = mx.concatenate([start, labels[:, :-1]], axis=1)
    return mx.where(shifted == IGNORE_INDEX, pad_token_id, shifted)


class Seq2SeqObjective:
    """An encoder-decoder's teacher-forced loss on ``{"input_ids", "attention_mask",
    "labels"}`` batches (`mlx_llm.data.Seq2SeqBatches`): cross-entropy over the
    target tokens (``labels != -100``), as ``T5ForConditionalGeneration(labels=...)``.

    Validation adds ``exact_match``: the share of examples whose greedy decoding
    reproduces the target token for token, end of sequence included. It needs no
    decoding: greedy decoding emits the target exactly when, fed the target's own
    prefix, the model's argmax is the next target token at every position, which
    is what the teacher-forced pass computes.
    """

    def counts(self, batch: dict) -> dict[str, mx.array]:
        return {"loss": (batch["labels"] != IGNORE_INDEX).sum()}

    def logits(self, model: nn.Module, batch: dict) -> mx.array:
        """``(B, T, vocab_size)`` logits of the targets, their decoder inputs shifted right."""
        decoder_input_ids = shift_right(batch["labels"], model.args.decoder_start_token_id, model.args.pad_token_id)
        output = model(batch["input_ids"], decoder_input_ids, attention_mask=batch.get("attention_mask"))
        return getattr(output, "logits", output)

    def sums(self, model: nn.Module, batch: dict) -> dict[str, mx.array]:
        return {"loss": cross_entropy(self.logits(model, batch), batch["labels"], reduction="sum")}

    def evaluate(self, model: nn.Module, batch: dict) -> dict[str, tuple[mx.array, mx.array]]:
        logits, labels = self.logits(model, batch), batch["labels"]
        targets = labels != IGNORE_INDEX  # (B, T)
        correct = (logits.argmax(-1) == labels) | ~targets
        rows = mx.array(labels.shape[0])
        return {"loss": (cross_entropy(logits, labels, reduction="sum"), targets.sum()),
                "exact_match": (correct.all(axis=-1).sum(), rows)}
