"""GPT-2 (and distilgpt2): learned positions, pre-LayerNorm decoder blocks, tied LM head.

Besides the language model, ``task`` builds the classifiers of
``GPT2ForSequenceClassification`` (last real token) and
``GPT2ForTokenClassification`` (every token) over the same backbone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ..blocks.cache import KVCache
from ..blocks.feed_forward import hf_activation
from ..blocks.heads import DECODER_TASKS, DecoderTaskModel, decoder_task
from ..blocks.layers import Embedding
from ..blocks.masks import decoder_mask
from ..blocks.positions import LearnedPositionalEmbedding
from ..blocks.transformer import layer_norm_layers, run_layers
from . import ModelType, check_required_keys

MODEL_TYPES = {"gpt2": ModelType("GPT-2", "GPT2", layers_key="n_layer", width_key="n_embd")}
# config.json keys without a default.
REQUIRED_KEYS = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")


def hf_architecture(model_type: str, task: str) -> str:
    """The transformers class of a GPT-2 model for ``task`` (``GPT2LMHeadModel`` for ``causal_lm``)."""
    if task not in DECODER_TASKS:
        raise ValueError(f"GPT-2 models have no {task!r} task; choose one of {tuple(DECODER_TASKS)}")
    return "GPT2LMHeadModel" if task == "causal_lm" else f"GPT2{DECODER_TASKS[task]}"


@dataclass
class ModelArgs:
    vocab_size: int
    max_positions: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    activation: str = "gelu_tanh"
    layer_norm_eps: float = 1e-5
    scale_attention: bool = True
    tie_word_embeddings: bool = True
    dropout: float = 0.0  # on embeddings and sublayer outputs, in training mode only
    attention_dropout: float = 0.0  # on attention probabilities, in training mode only
    task: str = "causal_lm"  # or "sequence_classification", "token_classification"
    num_labels: int = 2
    classifier_dropout: float = 0.1  # before the token classifier
    model_type: str = "gpt2"

    @property
    def context_length(self) -> int:
        """Longest sequence the model takes: its learned positions, ``n_positions``."""
        return self.max_positions

    @property
    def windows(self) -> list[None]:
        """Per layer, its sliding window: none, GPT-2 attends to every earlier position."""
        return [None] * self.num_layers

    def __post_init__(self) -> None:
        if self.task not in DECODER_TASKS:
            raise ValueError(f"unknown GPT-2 task {self.task!r}; choose one of {tuple(DECODER_TASKS)}")
        if self.num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {self.num_labels}")

    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        check_required_keys(config, REQUIRED_KEYS, "GPT-2")
        activation = hf_activation(config.get("activation_function", "gelu_new"), "activation_function")
        hidden_size = config["n_embd"]
        if config.get("scale_attn_by_inverse_layer_idx") or config.get("reorder_and_upcast_attn"):
            raise ValueError(
                "GPT-2 configs with scale_attn_by_inverse_layer_idx or reorder_and_upcast_attn are not supported"
            )
        return cls(
            vocab_size=config["vocab_size"],
            max_positions=config["n_positions"],
            hidden_size=hidden_size,
            num_layers=config["n_layer"],
            num_heads=config["n_head"],
            intermediate_size=config.get("n_inner") or 4 * hidden_size,
            activation=activation,
            layer_norm_eps=config.get("layer_norm_epsilon", 1e-5),
            scale_attention=config.get("scale_attn_weights", True),
            tie_word_embeddings=config.get("tie_word_embeddings", True),
            dropout=config.get("resid_pdrop", 0.0),
            attention_dropout=config.get("attn_pdrop", 0.0),
            task=decoder_task(config.get("architectures"), "GPT-2"),
            num_labels=len(config["id2label"]) if "id2label" in config else config.get("num_labels", 2),
            classifier_dropout=(
                config["classifier_dropout"] if config.get("classifier_dropout") is not None
                else config.get("hidden_dropout", 0.1)
            ),
        )


class GPT2Model(nn.Module):
    """Token + position embeddings, pre-LN blocks with causal self-attention, final LayerNorm."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.wte = Embedding(
            args.vocab_size, args.hidden_size, output_layer=args.task == "causal_lm" and args.tie_word_embeddings
        )
        self.wpe = LearnedPositionalEmbedding(args.max_positions, args.hidden_size)
        self.layers = layer_norm_layers(
            args,
            norm_first=True,
            attention_scale=None if args.scale_attention else 1.0,
            fused_qkv=True,  # GPT-2's c_attn: one product for queries, keys and values
        )
        self.dropout = nn.Dropout(args.dropout) if args.dropout > 0 else None
        self.ln_f = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)

    def __call__(
        self,
        input_ids: mx.array,
        attention_mask: mx.array | None = None,
        cache: list[KVCache] | None = None,
        position_ids: mx.array | None = None,
        all_hidden_states: list | None = None,
    ) -> mx.array:
        """Final hidden states ``(B, L, hidden_size)`` for ``(B, L)`` token ids; ``all_hidden_states``,
        when given, receives every layer's input and the final output (``num_layers + 1`` arrays)."""
        length = input_ids.shape[1]
        offset = 0 if cache is None else cache[0].offset
        if position_ids is None and cache is not None and cache[0].left_padding is not None:
            # Left-padded batch: each row counts positions from its first real token.
            position_ids = mx.maximum(cache[0].position_offset[:, None] + mx.arange(length), 0)
        positions = self.wpe(length, offset, position_ids=position_ids)
        hidden_states = self.wte(input_ids) + positions
        if self.dropout is not None:
            hidden_states = self.dropout(hidden_states)
        mask = decoder_mask(length, attention_mask, None if cache is None else cache[0])
        return run_layers(self.layers, hidden_states, [mask] * len(self.layers), cache, all_hidden_states, self.ln_f)


class Model(DecoderTaskModel):
    """GPT-2 language model, ``logits = LMHead(GPT2Model(input_ids))``, or a
    classifier over the same backbone when ``args.task`` asks for one
    (`heads.DecoderTaskModel`: ``forward``, ``make_cache``, ``layers``)."""

    backbone = GPT2Model

    def tied_embedding(self) -> Embedding:
        """GPT-2's token embeddings, ``wte``."""
        return self.model.wte


# --- Hugging Face weights -----------------------------------------------------------------

_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers in older checkpoints
# transformers' head names -> this file's, per task.
HEAD_NAMES = {"sequence_classification": "score", "token_classification": "classifier"}


def _linear_weight(conv1d_weight: mx.array) -> mx.array:
    """``nn.Linear``'s ``(out, in)`` weight from a Conv1D ``(in, out)`` one, as a
    transposed view of the stored memory (`layers.relayout` then stores it in
    the order the BLAS reads fastest, copying only if that is the other one)."""
    return conv1d_weight.T


def convert_hf_weights(weights: dict[str, mx.array], args: ModelArgs) -> dict[str, mx.array]:
    """Map ``transformer.h.N.attn.c_attn`` & co. to this file's modules.

    GPT-2 stores its projections as ``Conv1D`` with ``(in, out)`` weights, which
    are transposed; the fused ``c_attn`` becomes ``qkv_proj`` as it is.
    mlx-lm's layout (names under ``model.``, ``nn.Linear`` ``(out, in)``
    weights, quantized ones with ``.scales`` and ``.biases``) is read as well.
    """
    mlx_lm = any(name.startswith(("model.h.", "model.wte.")) for name in weights)
    converted: dict[str, mx.array] = {}
    for name, tensor in weights.items():
        if name.endswith(_BUFFERS):
            continue
        if name == "lm_head.weight":
            if args.task == "causal_lm" and not args.tie_word_embeddings:
                converted["lm_head.weight"] = tensor
            continue
        head, _, kind = name.partition(".")
        if head in HEAD_NAMES.values():
            if HEAD_NAMES.get(args.task) == head:
                converted[f"head.linear.{kind}"] = tensor
            continue  # another task's head: dropped, as transformers does
        key = name.removeprefix("model." if mlx_lm else "transformer.")
        parts = key.split(".")
        if len(parts) == 2 and parts[0] in ("wte", "ln_f"):
            converted[f"model.{key}"] = tensor
        elif len(parts) == 2 and parts[0] == "wpe":
            converted[f"model.wpe.embedding.{parts[1]}"] = tensor
        elif parts[0] == "h" and len(parts) == 5:
            prefix = f"model.layers.{parts[1]}"
            module, kind = ".".join(parts[2:4]), parts[4]
            target = {
                "attn.c_attn": "self_attn.qkv_proj",
                "attn.c_proj": "self_attn.o_proj",
                "mlp.c_fc": "feed_forward.up_proj",
                "mlp.c_proj": "feed_forward.down_proj",
            }.get(module)
            if target is None:
                raise ValueError(f"unknown GPT-2 tensor {name!r} in checkpoint")
            converted[f"{prefix}.{target}.{kind}"] = (
                _linear_weight(tensor) if kind == "weight" and not mlx_lm else tensor
            )
        elif parts[0] == "h" and len(parts) == 4 and parts[2] in ("ln_1", "ln_2"):
            norm = "self_attn_norm" if parts[2] == "ln_1" else "feed_forward_norm"
            converted[f"model.layers.{parts[1]}.{norm}.{parts[3]}"] = tensor
        else:
            raise ValueError(f"unknown GPT-2 tensor {name!r} in checkpoint")
    return converted


def mlx_lm_config(config: dict) -> dict:
    """``config`` with ``n_ctx``, which mlx-lm's GPT-2 requires (``n_positions`` unless it is there)."""
    return config if "n_ctx" in config else {**config, "n_ctx": config.get("n_positions")}


def init_std(path: str, args: ModelArgs) -> float:
    """The standard deviation of the fresh weight ``path`` (`pretrain.build_model`): 0.02, and
    ``0.02 / sqrt(2 * num_layers)`` for the projections that write into the residual stream
    (``attn.c_proj`` and ``mlp.c_proj``: GPT-2's paper, transformers' ``_init_weights``)."""
    if path.endswith(("o_proj.weight", "down_proj.weight")):
        return 0.02 / math.sqrt(2 * args.num_layers)
    return 0.02


def upgrade_weights(weights: dict[str, mx.array], format_version: int) -> dict[str, mx.array]:
    """Weights saved by mlx_llm format 1, with separate ``q_proj``, ``k_proj`` and
    ``v_proj``, in today's layout: their rows stacked into ``qkv_proj`` (the same
    for quantized weights, whose scales and biases are per output row)."""
    if format_version >= 2:
        return weights
    upgraded: dict[str, mx.array] = {}
    for name, tensor in weights.items():
        module, _, kind = name.rpartition(".")
        attention, _, projection = module.rpartition(".")
        if not attention.endswith("self_attn") or projection not in ("q_proj", "k_proj", "v_proj"):
            upgraded[name] = tensor
        elif projection == "q_proj":  # k_proj and v_proj are stacked with it
            upgraded[f"{attention}.qkv_proj.{kind}"] = mx.concatenate(
                [weights[f"{attention}.{part}.{kind}"] for part in ("q_proj", "k_proj", "v_proj")]
            )
    return upgraded


def export_hf_weights(weights: dict[str, mx.array], args: ModelArgs,
                      layout: str = "transformers") -> dict[str, mx.array]:
    """The inverse of `convert_hf_weights`: Conv1D ``(in, out)`` weights,
    ``transformer.`` names and the task's head name; with ``layout="mlx-lm"``,
    mlx-lm's names (``model.`` in place of ``transformer.``) and ``(out, in)``
    weights, which may be quantized."""
    root = "model" if layout == "mlx-lm" else "transformer"
    transpose = layout != "mlx-lm"
    exported: dict[str, mx.array] = {}
    renames = {"self_attn.qkv_proj": "attn.c_attn", "self_attn.o_proj": "attn.c_proj", "feed_forward.up_proj": "mlp.c_fc",
               "feed_forward.down_proj": "mlp.c_proj", "self_attn_norm": "ln_1", "feed_forward_norm": "ln_2"}
    for name, tensor in weights.items():
        module, _, kind = name.rpartition(".")
        if module == "head.linear":
            exported[f"{HEAD_NAMES[args.task]}.{kind}"] = tensor
        elif module == "lm_head":
            exported[name] = tensor
        elif module == "model.wpe.embedding":
            exported[f"{root}.wpe.{kind}"] = tensor
        elif module in ("model.wte", "model.ln_f"):
            exported[f"{root}.{name.removeprefix('model.')}"] = tensor
        elif module.startswith("model.layers."):
            index, _, rest = module.removeprefix("model.layers.").partition(".")
            if rest not in renames:
                raise ValueError(f"no transformers name for GPT-2 tensor {name!r}")
            exported[f"{root}.h.{index}.{renames[rest]}.{kind}"] = (
                tensor.T if transpose and kind == "weight" and "norm" not in rest else tensor
            )
        else:
            raise ValueError(f"no transformers name for GPT-2 tensor {name!r}")
    return {name: mx.contiguous(tensor) for name, tensor in exported.items()}


def export_mlx_lm_weights(weights: dict[str, mx.array], args: ModelArgs) -> dict[str, mx.array]:
    """This file's names to mlx-lm's (`export_hf_weights` with ``layout="mlx-lm"``)."""
    return export_hf_weights(weights, args, layout="mlx-lm")
