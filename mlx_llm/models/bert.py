"""BERT, RoBERTa and DistilBERT: bidirectional post-LayerNorm encoders with task heads.

All three are the same network: token (+ segment) + learned position
embeddings, LayerNorm, then post-LN `TransformerEncoderLayer`s attending
under a padding mask. They differ in details that live in `ModelArgs`:

- BERT: positions ``0 .. L-1``, two token types, a tanh pooler over ``[CLS]``.
- RoBERTa: positions count non-padding tokens from ``pad_token_id + 1``,
  one token type, its own classification head on ``<s>``.
- DistilBERT: no token types, no pooler, LayerNorm eps fixed at 1e-12.

Which heads exist follows the checkpoint's ``architectures`` the way
`transformers` builds them (see `ARCHITECTURES` and `POOLER_TASKS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from ..blocks.feed_forward import ACTIVATIONS, get_activation, hf_activation
from ..blocks.layers import Embedding, Linear
from ..blocks.masks import create_attention_mask
from ..blocks.model_output import ENCODER, BertOutput, ModelOutput  # noqa: F401  (BertOutput: the former name)
from ..blocks.positions import LearnedPositionalEmbedding, sinusoidal_table
from ..blocks.transformer import layer_norm_layers
from . import ModelType

# The Hugging Face weight-name map: the family interface's convert/export functions, in their own file.
from .bert_weights import convert_hf_weights, export_hf_weights  # noqa: F401

MODEL_TYPES = {
    "bert": ModelType("BERT", "Bert"),
    "roberta": ModelType("RoBERTa", "Roberta"),
    "distilbert": ModelType("DistilBERT", "DistilBert", layers_key="n_layers", width_key="dim"),
}

# ModelArgs field -> (config.json key, default of the transformers config class).
BERT_KEYS: dict[str, tuple[str, object]] = {
    "vocab_size": ("vocab_size", 30522),
    "hidden_size": ("hidden_size", 768),
    "num_layers": ("num_hidden_layers", 12),
    "num_heads": ("num_attention_heads", 12),
    "intermediate_size": ("intermediate_size", 3072),
    "activation": ("hidden_act", "gelu"),
    "max_positions": ("max_position_embeddings", 512),
    "type_vocab_size": ("type_vocab_size", 2),
    "layer_norm_eps": ("layer_norm_eps", 1e-12),
    "pad_token_id": ("pad_token_id", 0),
    "dropout": ("hidden_dropout_prob", 0.1),
    "attention_dropout": ("attention_probs_dropout_prob", 0.1),
    "tie_word_embeddings": ("tie_word_embeddings", True),
}
ROBERTA_KEYS = {**BERT_KEYS, "vocab_size": ("vocab_size", 50265), "pad_token_id": ("pad_token_id", 1)}
DISTILBERT_KEYS: dict[str, tuple[str, object]] = {
    "vocab_size": ("vocab_size", 30522),
    "hidden_size": ("dim", 768),
    "num_layers": ("n_layers", 6),
    "num_heads": ("n_heads", 12),
    "intermediate_size": ("hidden_dim", 3072),
    "activation": ("activation", "gelu"),
    "max_positions": ("max_position_embeddings", 512),
    "pad_token_id": ("pad_token_id", 0),
    "dropout": ("dropout", 0.1),
    "attention_dropout": ("attention_dropout", 0.1),
    "sinusoidal_positions": ("sinusoidal_pos_embds", False),
    "tie_word_embeddings": ("tie_word_embeddings", True),
}
KEY_MAPS = {"bert": BERT_KEYS, "roberta": ROBERTA_KEYS, "distilbert": DISTILBERT_KEYS}

TASKS = (
    "base",
    "pretraining",
    "masked_lm",
    "next_sentence",
    "sequence_classification",
    "token_classification",
)

# Hugging Face architecture -> (model_type, task).
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "BertModel": ("bert", "base"),
    "BertForPreTraining": ("bert", "pretraining"),
    "BertForMaskedLM": ("bert", "masked_lm"),
    "BertForNextSentencePrediction": ("bert", "next_sentence"),
    "BertForSequenceClassification": ("bert", "sequence_classification"),
    "BertForTokenClassification": ("bert", "token_classification"),
    "RobertaModel": ("roberta", "base"),
    "RobertaForMaskedLM": ("roberta", "masked_lm"),
    "RobertaForSequenceClassification": ("roberta", "sequence_classification"),
    "RobertaForTokenClassification": ("roberta", "token_classification"),
    "DistilBertModel": ("distilbert", "base"),
    "DistilBertForMaskedLM": ("distilbert", "masked_lm"),
    "DistilBertForSequenceClassification": ("distilbert", "sequence_classification"),
    "DistilBertForTokenClassification": ("distilbert", "token_classification"),
}


def hf_architecture(model_type: str, task: str) -> str:
    """The transformers class of a ``model_type`` model for ``task`` (`ARCHITECTURES` read backwards)."""
    for architecture, (architecture_type, architecture_task) in ARCHITECTURES.items():
        if (architecture_type, architecture_task) == (model_type, task):
            return architecture
    raise ValueError(f"transformers has no {model_type} class for the task {task!r}")


# Tasks whose transformers model builds the pooler (``add_pooling_layer=True``).
POOLER_TASKS: dict[str, frozenset[str]] = {
    "bert": frozenset({"base", "pretraining", "next_sentence", "sequence_classification"}),
    "roberta": frozenset({"base"}),
    "distilbert": frozenset(),
}

DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class ModelArgs:
    """What a BERT-family model needs to know.

    ``task`` picks the heads: ``"base"`` (backbone only), ``"pretraining"``
    (MLM + next-sentence), ``"masked_lm"``, ``"next_sentence"``,
    ``"sequence_classification"`` or ``"token_classification"`` (``num_labels``
    outputs). ``activation`` and ``head_activation`` are mlx_llm activation
    names (see `feed_forward.ACTIVATIONS`); ``head_activation`` is the one in
    the MLM transform (RoBERTa always uses exact GELU there). ``dtype`` is the
    checkpoint's dtype as written in config.json, for the loader.
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    activation: str = "gelu"
    head_activation: str = "gelu"
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    sinusoidal_positions: bool = False
    task: str = "base"
    add_pooling_layer: bool = True
    num_labels: int = 2
    tie_word_embeddings: bool = True
    dropout: float = 0.0
    attention_dropout: float = 0.0
    classifier_dropout: float = 0.0
    dtype: str | None = None

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"unknown model_type {self.model_type!r}; this family implements {tuple(MODEL_TYPES)}")
        sizes = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_positions")
        for name in (*sizes, "num_labels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads != 0:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}"
            )
        for name in ("activation", "head_activation"):
            if getattr(self, name) not in ACTIVATIONS:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of {sorted(ACTIVATIONS)}")
        if self.model_type == "distilbert" and self.type_vocab_size != 0:
            raise ValueError(f"DistilBERT has no token types; type_vocab_size must be 0, got {self.type_vocab_size}")
        if self.model_type != "distilbert" and self.type_vocab_size < 1:
            raise ValueError(f"type_vocab_size must be >= 1 for {self.model_type}, got {self.type_vocab_size}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id={self.pad_token_id} is outside the vocabulary of {self.vocab_size}")
        if self.model_type == "roberta" and self.max_positions <= self.pad_token_id + 1:
            raise ValueError(
                f"RoBERTa positions start at pad_token_id + 1 = {self.pad_token_id + 1}, which leaves no "
                f"room in max_positions={self.max_positions}"
            )
        if self.layer_norm_eps <= 0:
            raise ValueError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps}")
        for name in ("dropout", "attention_dropout", "classifier_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {TASKS}")
        if self.task in ("pretraining", "next_sentence") and self.model_type != "bert":
            raise ValueError(f"task {self.task!r} exists for BERT only, not {self.model_type}")
        if self.needs_pooler and not self.add_pooling_layer:
            raise ValueError(f"task {self.task!r} of {self.model_type} reads the pooler; set add_pooling_layer=True")
        if self.model_type == "distilbert" and self.add_pooling_layer:
            raise ValueError("DistilBERT has no pooler; set add_pooling_layer=False")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose one of {DTYPES}")

    @property
    def context_length(self) -> int:
        """Longest sequence the model's learned positions cover, ``max_position_embeddings``."""
        return self.max_positions

    @property
    def has_mlm_head(self) -> bool:
        return self.task in ("pretraining", "masked_lm")

    @property
    def has_nsp_head(self) -> bool:
        return self.task in ("pretraining", "next_sentence")

    @property
    def has_classifier(self) -> bool:
        return self.task in ("sequence_classification", "token_classification")

    @property
    def needs_pooler(self) -> bool:
        """Whether a head reads the pooler output (NSP; BERT sequence classification)."""
        return self.has_nsp_head or (self.task == "sequence_classification" and self.model_type == "bert")

    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        """Read a Hugging Face ``config.json`` dict (``model_type`` bert, roberta or distilbert).

        Raises:
            ValueError: naming an unsupported model type, architecture,
                activation or option, or an invalid value.
        """
        model_type = config.get("model_type")
        if model_type not in KEY_MAPS:
            raise ValueError(
                f"model_type {model_type!r} is not a BERT-family model; expected one of {tuple(MODEL_TYPES)}"
            )
        values: dict[str, object] = {}
        for field, (key, default) in KEY_MAPS[model_type].items():
            value = config.get(key)
            values[field] = default if value is None else value

        values["activation"] = hf_activation(values["activation"], KEY_MAPS[model_type]["activation"][0])
        # RobertaLMHead hard-codes exact GELU; BERT and DistilBERT reuse the encoder's activation.
        values["head_activation"] = "gelu" if model_type == "roberta" else values["activation"]

        if model_type == "distilbert":
            values["type_vocab_size"] = 0
            values["layer_norm_eps"] = 1e-12  # hard-coded in transformers' DistilBERT
        else:
            position_type = config.get("position_embedding_type") or "absolute"
            if position_type != "absolute":
                raise ValueError(
                    f"position_embedding_type={position_type!r} in {model_type} config.json is not "
                    "supported; only 'absolute' positions are"
                )
            for flag in ("is_decoder", "add_cross_attention"):
                if config.get(flag):
                    raise ValueError(f"{flag}=true in {model_type} config.json is not supported: encoders only")

        architectures = config.get("architectures") or []
        if architectures:
            architecture = architectures[0]
            if architecture not in ARCHITECTURES:
                raise ValueError(
                    f"unsupported architecture {architecture!r} in config.json; supported: {sorted(ARCHITECTURES)}"
                )
            architecture_type, task = ARCHITECTURES[architecture]
            if architecture_type != model_type:
                raise ValueError(f"architecture {architecture!r} does not match model_type {model_type!r}")
        else:
            task = "base"
        values["task"] = task
        values["add_pooling_layer"] = task in POOLER_TASKS[model_type]

        if "id2label" in config:
            values["num_labels"] = len(config["id2label"])
        elif config.get("num_labels") is not None:
            values["num_labels"] = config["num_labels"]

        # Dropout on classifier inputs, as each transformers task class picks it.
        if model_type == "distilbert":
            key = "seq_classif_dropout" if task == "sequence_classification" else "dropout"
            values["classifier_dropout"] = config.get(key, 0.2 if key == "seq_classif_dropout" else 0.1)
        else:
            classifier_dropout = config.get("classifier_dropout")
            values["classifier_dropout"] = values["dropout"] if classifier_dropout is None else classifier_dropout

        dtype = config.get("dtype") or config.get("torch_dtype")
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"unsupported dtype {dtype!r} in config.json; supported: {DTYPES}")
        values["dtype"] = dtype
        return cls(model_type=model_type, **values)


class Embeddings(nn.Module):
    """Token + position (+ token type) embeddings, then LayerNorm and dropout."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.model_type = args.model_type
        self.pad_token_id = args.pad_token_id
        self.word_embeddings = Embedding(
            args.vocab_size, args.hidden_size, output_layer=args.has_mlm_head and args.tie_word_embeddings
        )
        self.position_embeddings = LearnedPositionalEmbedding(args.max_positions, args.hidden_size)
        if args.sinusoidal_positions:
            # DistilBERT's option: start from the fixed table (the checkpoint stores it anyway).
            self.position_embeddings.embedding.weight = sinusoidal_table(args.max_positions, args.hidden_size)
        if args.type_vocab_size > 0:
            self.token_type_embeddings = Embedding(args.type_vocab_size, args.hidden_size)
        self.norm = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)
        self.dropout = nn.Dropout(args.dropout)
        # RoBERTa's positions run pad_token_id + 1 .. pad_token_id + L.
        first_position = args.pad_token_id + 1 if args.model_type == "roberta" else 0
        self.max_length = args.max_positions - first_position

    def __call__(self, input_ids: mx.array, token_type_ids: mx.array | None = None) -> mx.array:
        """``(B, L)`` ids to ``(B, L, hidden_size)`` embeddings."""
        length = input_ids.shape[1]
        if length > self.max_length:
            raise ValueError(
                f"input of {length} tokens is longer than this {self.model_type} model's "
                f"{self.max_length} positions; truncate it"
            )
        hidden_states = self.word_embeddings(input_ids)
        if "token_type_embeddings" in self:
            if token_type_ids is None:
                token_type_ids = mx.zeros_like(input_ids)
            hidden_states = hidden_states + self.token_type_embeddings(token_type_ids)
        if self.model_type == "roberta":
            # transformers' create_position_ids_from_input_ids: count real tokens; padding keeps pad_token_id.
            is_token = (input_ids != self.pad_token_id).astype(mx.int32)
            position_ids = mx.cumsum(is_token, axis=1) * is_token + self.pad_token_id  # (B, L)
            positions = self.position_embeddings(length, position_ids=position_ids)  # (B, L, H)
        else:
            positions = self.position_embeddings(length)  # (L, H)
        return self.dropout(self.norm(hidden_states + positions))


class Pooler(nn.Module):
    """``tanh(dense(h_0))``: the first token's state as a sequence summary."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.dense = Linear(hidden_size, hidden_size)

    def __call__(self, hidden_states: mx.array) -> mx.array:
        return mx.tanh(self.dense(hidden_states[:, 0]))  # (B, H)


class MaskedLMHead(nn.Module):
    """dense -> activation -> LayerNorm -> decoder (tied to the word embeddings) + bias."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.dense = Linear(args.hidden_size, args.hidden_size)
        self.activation = get_activation(args.head_activation)
        self.norm = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)
        if not args.tie_word_embeddings:
            self.decoder = Linear(args.hidden_size, args.vocab_size, bias=False)
        self.bias = mx.zeros((args.vocab_size,))

    def __call__(self, hidden_states: mx.array, word_embeddings: nn.Embedding) -> mx.array:
        """``(B, L, H)`` states to ``(B, L, vocab_size)`` logits."""
        hidden_states = self.norm(self.activation(self.dense(hidden_states)))
        if "decoder" in self:
            return self.decoder(hidden_states) + self.bias
        return word_embeddings.as_linear(hidden_states) + self.bias


class ClassificationHead(nn.Module):
    """RoBERTa's and DistilBERT's sentence classifier on the first token's state:
    ``out_proj(dropout(activation(dense(dropout_in(h_0)))))``.

    Args:
        hidden_size: Model width.
        num_labels: Number of outputs.
        activation: tanh (RoBERTa) or ReLU (DistilBERT).
        dropout: Dropout before ``out_proj``.
        input_dropout: Dropout on ``h_0`` (RoBERTa applies it, DistilBERT does not).
    """

    def __init__(
        self,
        hidden_size: int,
        num_labels: int,
        activation: Callable[[mx.array], mx.array],
        dropout: float,
        input_dropout: float,
    ):
        super().__init__()
        self.activation = activation
        self.input_dropout = nn.Dropout(input_dropout)
        self.dense = Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = Linear(hidden_size, num_labels)

    def __call__(self, hidden_states: mx.array) -> mx.array:
        """``(B, L, H)`` states to ``(B, num_labels)`` logits."""
        features = self.activation(self.dense(self.input_dropout(hidden_states[:, 0])))
        return self.out_proj(self.dropout(features))


class BertModel(nn.Module):
    """The backbone: embeddings, post-LN encoder layers and (optionally) the pooler."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.embeddings = Embeddings(args)
        self.layers = layer_norm_layers(args, norm_first=False)
        if args.add_pooling_layer:
            self.pooler = Pooler(args.hidden_size)

    def __call__(
        self,
        input_ids: mx.array,
        attention_mask: mx.array | None = None,
        token_type_ids: mx.array | None = None,
        all_hidden_states: list | None = None,
    ) -> tuple[mx.array, mx.array | None]:
        """Hidden states ``(B, L, H)`` and the pooler output ``(B, H)`` (``None`` without
        a pooler); ``all_hidden_states``, when given, receives every layer's input and the output."""
        hidden_states = self.embeddings(input_ids, token_type_ids)
        mask = create_attention_mask(input_ids.shape[1], attention_mask)  # (B, 1, 1, L) or None
        for layer in self.layers:
            if all_hidden_states is not None:
                all_hidden_states.append(hidden_states)
            hidden_states = layer(hidden_states, mask=mask)
        if all_hidden_states is not None:
            all_hidden_states.append(hidden_states)
        pooler_output = self.pooler(hidden_states) if "pooler" in self else None
        return hidden_states, pooler_output


class Model(nn.Module):
    """A BERT-family backbone with the heads ``args.task`` asks for.

    Padding is ignored: a padded row gives the same outputs on its real tokens
    as the row alone. Like every MLX module it starts in training mode, where
    dropout is active; call ``model.eval()`` for inference.

    ``model(...)`` returns the head's logits, an ``mx.array``: the classifier's,
    the masked-LM head's (masked-LM and pretraining models), the next-sentence
    head's (next-sentence models), or, for a bare encoder without a head (feature
    extraction, e.g. all-MiniLM), the last hidden states ``(B, L, hidden_size)``.
    ``model.forward(...)`` returns all of them in a `ModelOutput`.
    """

    kind = ENCODER

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model = BertModel(args)
        if args.has_mlm_head:
            self.mlm_head = MaskedLMHead(args)
        if args.has_nsp_head:
            self.nsp_head = Linear(args.hidden_size, 2)
        if args.task == "sequence_classification" and args.model_type != "bert":
            roberta = args.model_type == "roberta"
            self.classifier = ClassificationHead(
                args.hidden_size,
                args.num_labels,
                activation=mx.tanh if roberta else nn.relu,
                dropout=args.classifier_dropout,
                input_dropout=args.classifier_dropout if roberta else 0.0,
            )
        elif args.has_classifier:
            # BERT sequence classification (on the pooler output) and every token classifier.
            self.classifier = Linear(args.hidden_size, args.num_labels)
        self.classifier_dropout = nn.Dropout(args.classifier_dropout)

    @property
    def layers(self) -> list[nn.Module]:
        return self.model.layers

    def make_cache(self, *args, **kwargs):
        """Encoders attend to the whole input at once and keep no cache: always a ``ValueError``."""
        raise ValueError(f"a {MODEL_TYPES[self.args.model_type].display_name} encoder keeps no KV cache; "
                         "check model.kind before asking for one")

    def forward(
        self,
        input_ids: mx.array,
        attention_mask: mx.array | None = None,
        token_type_ids: mx.array | None = None,
        *,
        output_hidden_states: bool = False,
    ) -> ModelOutput:
        """Run the backbone and every head.

        Args:
            input_ids: ``(B, L)`` token ids.
            attention_mask: ``(B, L)``, 1 for tokens and 0 for padding.
            token_type_ids: ``(B, L)`` segment ids (BERT, RoBERTa); zeros if ``None``.
            output_hidden_states: Also return every layer's hidden states.

        Returns:
            `ModelOutput` with ``logits`` (see the class docstring),
            ``last_hidden_state`` ``(B, L, hidden_size)``, and what the model has of
            ``pooler_output`` ``(B, hidden_size)``, ``mlm_logits`` ``(B, L, vocab_size)``,
            ``nsp_logits`` ``(B, 2)``, ``hidden_states`` (``num_layers + 1`` arrays ``(B, L,
            hidden_size)``, entry ``i`` the input of layer ``i``, as transformers).
        """
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
        for name, array in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if array is not None and array.shape != input_ids.shape:
                raise ValueError(
                    f"{name} of shape {tuple(array.shape)} does not match input_ids of shape {tuple(input_ids.shape)}"
                )
        if token_type_ids is not None and self.args.type_vocab_size == 0:
            raise ValueError(f"{self.args.model_type} has no token type embeddings; do not pass token_type_ids")

        all_hidden_states = [] if output_hidden_states else None
        hidden_states, pooler_output = self.model(input_ids, attention_mask, token_type_ids, all_hidden_states)
        output = ModelOutput.of(logits=hidden_states, last_hidden_state=hidden_states, pooler_output=pooler_output,
                                hidden_states=all_hidden_states)
        if self.args.has_nsp_head:
            output.logits = output.nsp_logits = self.nsp_head(pooler_output)
        if self.args.has_mlm_head:  # pretraining: the MLM logits are the logits, NSP's stay in nsp_logits
            output.logits = output.mlm_logits = self.mlm_head(hidden_states, self.model.embeddings.word_embeddings)
        if self.args.task == "sequence_classification":
            if isinstance(self.classifier, ClassificationHead):
                output.logits = self.classifier(hidden_states)
            else:
                output.logits = self.classifier(self.classifier_dropout(pooler_output))
        elif self.args.task == "token_classification":
            output.logits = self.classifier(self.classifier_dropout(hidden_states))
        return output

    def __call__(
        self,
        input_ids: mx.array,
        attention_mask: mx.array | None = None,
        token_type_ids: mx.array | None = None,
    ) -> mx.array:
        """``forward(...).logits``: the head's logits, or a bare encoder's last hidden states."""
        return self.forward(input_ids, attention_mask, token_type_ids).logits
