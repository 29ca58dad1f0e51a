"""Training objectives: which loss terms a batch has and what each averages over.

See `training.Objective`. Each term's loss is a sum over predictions here;
the trainer divides by the term's count over the whole accumulation window.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from .losses import cross_entropy

IGNORE = -100


class CausalLMObjective:
    """Next-token prediction on ``{"input_ids", "targets"}`` batches (targets
    already shifted; ``-100`` where nothing is predicted)."""

    def counts(self, batch: dict) -> dict[str, mx.array]:
        return {"lm": (batch["targets"] != IGNORE).sum()}

    def sums(self, model: nn.Module, batch: dict) -> dict[str, mx.array]:
        logits = model(batch["input_ids"], batch.get("attention_mask"))
        return {"lm": cross_entropy(logits, batch["targets"], reduction="sum")}

    def evaluate(self, model: nn.Module, batch: dict) -> dict[str, tuple[mx.array, mx.array]]:
        count = self.counts(batch)["lm"]
        return {"loss": (self.sums(model, batch)["lm"], count)}


class BertPretrainingObjective:
    """Masked-LM + next-sentence prediction on batches with ``input_ids``,
    ``token_type_ids``, ``attention_mask``, ``mlm_labels`` and
    ``next_sentence_label``. The loss is the MLM mean over masked tokens plus
    the NSP mean over sequences, as in BERT."""

    def counts(self, batch: dict) -> dict[str, mx.array]:
        return {"mlm": (batch["mlm_labels"] != IGNORE).sum(), "nsp": mx.array(batch["next_sentence_label"].shape[0])}

    def _outputs(self, model: nn.Module, batch: dict):
        return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])

    def sums(self, model: nn.Module, batch: dict) -> dict[str, mx.array]:
        output = self._outputs(model, batch)
        return {
            "mlm": cross_entropy(output.mlm_logits, batch["mlm_labels"], reduction="sum"),
            "nsp": cross_entropy(output.nsp_logits, batch["next_sentence_label"], reduction="sum"),
        }

    def evaluate(self, model: nn.Module, batch: dict) -> dict[str, tuple[mx.array, mx.array]]:
        output = self._outputs(model, batch)
        labels, masked = batch["mlm_labels"], batch["mlm_labels"] != IGNORE
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
