"""Task heads shared by the model families, and one way to read any model's task logits.

Encoders (BERT family) carry their heads in `models/bert.py` as BERT does.
Decoders (GPT-2, Llama family) classify a sequence from its last real token
and tag every token with a linear layer, as ``transformers``'
``*ForSequenceClassification`` / ``*ForTokenClassification`` do.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .cache import make_decoder_cache
from .layers import Embedding, Linear
from .model_output import DECODER, ENCODER, ENCODER_DECODER, ModelOutput

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


class DecoderTaskModel(nn.Module):
    """A decoder family's ``Model``: the family's ``backbone`` (final hidden states
    ``h`` ``(B, L, hidden_size)``) under its task's output, ``logits = h @ E.T`` with the
    tied token embeddings ``E`` (`tied_embedding`), ``lm_head(h)``, or a `DecoderTaskHead`.

    A family sets ``backbone`` (built from its ``ModelArgs``; called as
    ``backbone(input_ids, attention_mask, cache, all_hidden_states=...)``) and may
    override `tied_embedding` (GPT-2's ``wte``) and `lm_logits` (Gemma's soft-cap,
    Granite's scaling). ``args.windows`` gives each layer's sliding window for `make_cache`.
    """

    backbone: type[nn.Module]
    kind = DECODER

    def __init__(self, args):
        super().__init__()
        self.args = args
        self.model = self.backbone(args)
        if args.task != "causal_lm":
            self.head = DecoderTaskHead(args.task, args.hidden_size, args.num_labels, args.classifier_dropout)
        elif not args.tie_word_embeddings:
            self.lm_head = Linear(args.hidden_size, args.vocab_size, bias=False)

    def tied_embedding(self) -> Embedding:
        """The token embeddings the tied LM head multiplies by (the backbone's ``embed_tokens``)."""
        return self.model.embed_tokens

    def lm_logits(self, hidden_states: mx.array) -> mx.array:
        """Next-token logits ``(B, L, vocab_size)`` from final hidden states ``(B, L, hidden_size)``."""
        if self.args.tie_word_embeddings:
            return self.tied_embedding().as_linear(hidden_states)
        return self.lm_head(hidden_states)

    def forward(
        self,
        input_ids: mx.array,
        attention_mask: mx.array | None = None,
        cache: list | None = None,
        *,
        output_hidden_states: bool = False,
    ) -> ModelOutput:
        """``logits``: next-token logits ``(B, L, vocab_size)`` (`lm_logits`), or for a classifier
        ``(B, num_labels)`` (sequence) or ``(B, L, num_labels)`` (token) logits;
        ``last_hidden_state`` ``(B, L, hidden_size)``; with ``output_hidden_states``,
        ``hidden_states`` (``num_layers + 1`` arrays, as transformers)."""
        all_hidden_states = [] if output_hidden_states else None
        hidden_states = self.model(input_ids, attention_mask, cache, all_hidden_states=all_hidden_states)
        if "head" in self:
            logits = self.head(hidden_states, attention_mask)
        else:
            logits = self.lm_logits(hidden_states)
        return ModelOutput.of(logits=logits, last_hidden_state=hidden_states, hidden_states=all_hidden_states)

    def __call__(self, input_ids: mx.array, attention_mask: mx.array | None = None,
                 cache: list | None = None) -> mx.array:
        """``forward(...).logits``."""
        return self.forward(input_ids, attention_mask, cache).logits

    @property
    def layers(self) -> list[nn.Module]:
        return self.model.layers

    def make_cache(self, left_padding: mx.array | None = None, max_kv_size: int | None = None) -> list:
        """One cache per layer: a `KVCache` (``left_padding`` ``(B,)`` for a left-padded
        batch), or a `RotatingKVCache` bounded to ``max_kv_size``; a sliding-window
        layer's (``args.windows``) holds its last ``W`` positions (or ``max_kv_size``, when smaller)."""
        return make_decoder_cache(len(self.model.layers), left_padding, max_kv_size, windows=self.args.windows)


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
