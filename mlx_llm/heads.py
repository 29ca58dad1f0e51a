"""Task heads shared by the model families, and one way to read any model's task logits.

Encoders (BERT family) carry their heads in `models/bert.py` as BERT does.
Decoders (GPT-2, Llama family) classify a sequence from its last real token
and tag every token with a linear layer, as ``transformers``'
``*ForSequenceClassification`` / ``*ForTokenClassification`` do.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .layers import Linear
from .model_output import ENCODER, ENCODER_DECODER

# The tasks a decoder family builds, and the Hugging Face architecture suffix of each.
DECODER_TASKS = {
    "causal_lm": "ForCausalLM",
    "sequence_classification": "ForSequenceClassification",
    "token_classification": "ForTokenClassification",
}


def decoder_task(architectures: list[str] | None, family: str) -> str:
    """The task a decoder ``config.json`` asks for from its ``architectures``.

    Raises:
        ValueError: naming an architecture whose task this family lacks.
    """
    if not architectures:
        return "causal_lm"
    architecture = architectures[0]
    for task, suffix in DECODER_TASKS.items():
        if architecture.endswith(suffix):
            return task
    if architecture.endswith(("LMHeadModel", "Model")):
        return "causal_lm"
    raise ValueError(
        f"unsupported {family} architecture {architecture!r} in config.json; "
        f"supported: *{', *'.join(DECODER_TASKS.values())}"
    )


def last_token_states(hidden_states: mx.array, attention_mask: mx.array | None) -> mx.array:
    """Each row's state at its last real token (either padding side).

    Args:
        hidden_states: ``(B, L, H)``.
        attention_mask: ``(B, L)``, 1 for tokens and 0 for padding; ``None``
            means every position is real.

    Returns:
        ``(B, H)``.
    """
    if attention_mask is None:
        return hidden_states[:, -1]
    length = hidden_states.shape[1]
    last = (mx.arange(length) * (attention_mask != 0)).argmax(axis=-1)  # (B,)
    return mx.take_along_axis(hidden_states, last[:, None, None], axis=1)[:, 0]


class DecoderTaskHead(nn.Module):
    """A decoder's classification head: ``score`` on the last real token
    (no bias, as transformers), or dropout + a linear layer on every token.

    Args:
        task: ``"sequence_classification"`` or ``"token_classification"``.
        hidden_size: Model width.
        num_labels: Outputs.
        dropout: Dropout before the token classifier.
    """

    def __init__(self, task: str, hidden_size: int, num_labels: int, dropout: float):
        super().__init__()
        self.task = task
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.linear = Linear(hidden_size, num_labels, bias=task == "token_classification")

    def __call__(self, hidden_states: mx.array, attention_mask: mx.array | None) -> mx.array:
        """``(B, L, H)`` states to ``(B, num_labels)`` or ``(B, L, num_labels)`` logits."""
        if self.task == "sequence_classification":
            return self.linear(last_token_states(hidden_states, attention_mask))
        if self.dropout is not None:
            hidden_states = self.dropout(hidden_states)
        return self.linear(hidden_states)


def task_of(model: nn.Module) -> str:
    """``"causal_lm"``, ``"sequence_classification"``, ``"token_classification"``,
    ``"masked_lm"``, ... for any model of the library; ``"seq2seq_lm"`` for an encoder-decoder (T5)."""
    if model.kind == ENCODER_DECODER:
        return "seq2seq_lm"
    return model.args.task


CLASSIFIER_TASKS = ("sequence_classification", "token_classification")


def task_logits(model: nn.Module, batch: dict) -> mx.array:
    """Run ``model`` on a batch (``input_ids``, ``attention_mask``, ``token_type_ids``
    for an encoder that has token types) and return its classification logits, whatever the family.

    Raises:
        ValueError: for a model without a classification head.
    """
    task = task_of(model)
    if task not in CLASSIFIER_TASKS:
        raise ValueError(f"this model has no classification head (its task is {task!r}); "
                         "fine-tune it with --task classify or --task tag first")
    attention_mask = batch.get("attention_mask")
    if model.kind == ENCODER and "token_type_ids" in batch:
        return model(batch["input_ids"], attention_mask, batch["token_type_ids"])
    return model(batch["input_ids"], attention_mask)
