"""The Llama family: Llama 1-3, Mistral, Qwen2/Qwen2.5, SmolLM/SmolLM2, TinyLlama.

Pre-RMSNorm decoder blocks with rotary positions, grouped-query attention and
a SwiGLU feed-forward. The variants differ only in configuration: key/value
heads, attention biases (Qwen2), tied embeddings, RMSNorm epsilon, rope
theta and rope scaling, and sliding windows (`SLIDING_LAYER_READERS`: Mistral's
``sliding_window`` in every layer, Qwen2's with ``use_sliding_window`` in layers
``i >= max_window_layers``), each windowed layer with its own mask and a
rotating cache of ``W`` positions. ``task`` builds the classifiers of
``LlamaForSequenceClassification`` (last real token) and
``LlamaForTokenClassification`` (every token) over the same backbone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ..blocks.cache import KVCache
from ..blocks.heads import DECODER_TASKS, DecoderTaskModel, decoder_task
from ..blocks.layers import Embedding
from ..blocks.masks import decoder_masks
from ..blocks.positions import RotaryEmbedding
from ..blocks.transformer import TransformerEncoderLayer, run_layers
from . import ModelType, check_required_keys, model_type_info

MODEL_TYPES = {"llama": ModelType("Llama", "Llama"), "mistral": ModelType("Mistral", "Mistral"),
               "qwen2": ModelType("Qwen2", "Qwen2")}

ROPE_TYPES = ("default", "linear", "llama3")
LAYER_TYPES = ("sliding_attention", "full_attention")
# transformers' default max_position_embeddings per model_type (configuration_<type>.py).
DEFAULT_MAX_POSITIONS = {"llama": 2048, "mistral": 4096 * 32, "qwen2": 32768}
# config.json keys without a default.
REQUIRED_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


@dataclass
class ModelArgs:
    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_positions: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    attention_bias: bool = False  # biases on q, k, v
    attention_output_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    task: str = "causal_lm"  # or "sequence_classification", "token_classification"
    num_labels: int = 2
    classifier_dropout: float = 0.1  # before the token classifier
    sliding_window: int | None = None  # W: a windowed layer's query at p sees keys p - W < k <= p
    sliding_layers: tuple[bool, ...] = ()  # one flag per layer, True = windowed; () = none

    def __post_init__(self) -> None:
        if self.task not in DECODER_TASKS:
            raise ValueError(f"unknown {self.model_type} task {self.task!r}; choose one of {tuple(DECODER_TASKS)}")
        if self.num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {self.num_labels}")
        if self.sliding_layers and len(self.sliding_layers) != self.num_layers:
            raise ValueError(
                f"{self.model_type} has {len(self.sliding_layers)} layer types for {self.num_layers} layers"
            )
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"{self.model_type} sliding_window must be >= 1, got {self.sliding_window}")

    @property
    def context_length(self) -> int:
        """Longest sequence the model serves: ``max_position_embeddings`` (rotary positions
        go further, but the checkpoint was not trained for it)."""
        return self.max_positions

    @property
    def windows(self) -> list[int | None]:
        """Per layer, its sliding window ``W``, or ``None`` for a layer that sees every earlier position."""
        if not self.sliding_layers:
            return [None] * self.num_layers
        return [self.sliding_window if sliding else None for sliding in self.sliding_layers]

    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        model_type = config.get("model_type", "llama")
        check_required_keys(config, REQUIRED_KEYS, model_type)
        if config.get("hidden_act", "silu") != "silu":
            raise ValueError(f"{model_type} config has hidden_act={config['hidden_act']!r}; only 'silu' is supported")
        num_heads = config["num_attention_heads"]
        hidden_size = config["hidden_size"]
        # transformers 5 writes rope_parameters; 4.x writes rope_theta and rope_scaling.
        rope = dict(config.get("rope_parameters") or {})
        rope_theta = rope.pop("rope_theta", None) or config.get("rope_theta", 10000.0)
        scaling = rope or config.get("rope_scaling") or None
        if scaling is not None:
            scaling = dict(scaling)
            rope_type = scaling.get("rope_type", scaling.get("type", "default"))
            if rope_type not in ROPE_TYPES:
                raise ValueError(
                    f"{model_type} config has rope type {rope_type!r}; supported rope types: {ROPE_TYPES}"
                )
            scaling["rope_type"] = rope_type
            if rope_type == "default":
                scaling = None
        qwen2 = model_type == "qwen2"  # Qwen2 always has q/k/v biases and no flag for them
        max_positions = config.get("max_position_embeddings", DEFAULT_MAX_POSITIONS.get(model_type, 2048))
        window, sliding = SLIDING_LAYER_READERS.get(model_type, no_sliding_layers)(config)
        return cls(
            model_type=model_type,
            vocab_size=config["vocab_size"],
            hidden_size=hidden_size,
            num_layers=config["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=config.get("num_key_value_heads") or num_heads,
            head_dim=config.get("head_dim") or hidden_size // num_heads,
            intermediate_size=config["intermediate_size"],
            max_positions=max_positions,
            rms_norm_eps=config.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta),
            rope_scaling=scaling,
            attention_bias=qwen2 or config.get("attention_bias", False),
            attention_output_bias=(not qwen2) and config.get("attention_bias", False),
            mlp_bias=config.get("mlp_bias", False),
            tie_word_embeddings=config.get("tie_word_embeddings", False),
            task=decoder_task(config.get("architectures"), model_type),
            num_labels=len(config["id2label"]) if "id2label" in config else config.get("num_labels", 2),
            classifier_dropout=(
                config["classifier_dropout"] if config.get("classifier_dropout") is not None
                else config.get("hidden_dropout", 0.1)
            ),
            **window_fields(window, sliding, max_positions),
        )


# --- sliding windows, read as transformers reads them -------------------------------------

def no_sliding_layers(config: dict) -> tuple[int | None, tuple[bool, ...]]:
    """Llama: every layer sees every earlier position (``LlamaConfig`` has no window)."""
    return None, ()


def mistral_sliding_layers(config: dict) -> tuple[int | None, tuple[bool, ...]]:
    """Mistral: ``sliding_window`` in every layer (``MistralConfig``'s default 4096 when the key
    is absent; ``null``, as in Mistral 7B v0.2 and later, turns it off)."""
    window = config.get("sliding_window", 4096)
    return window, (window is not None,) * config["num_hidden_layers"]


def qwen_sliding_layers(config: dict) -> tuple[int | None, tuple[bool, ...]]:
    """Qwen2 / Qwen3 (``configuration_qwen2.py``, ``configuration_qwen3.py``): ``sliding_window``
    (default 4096) only when ``use_sliding_window`` is true, in the layers ``layer_types`` names
    ``"sliding_attention"``, or without ``layer_types`` in layers ``i >= max_window_layers``
    (default 28).

    Raises:
        ValueError: for an unknown layer type, a ``layer_types`` of the wrong length, or
            sliding layers without a window (transformers refuses these at the first forward pass).
    """
    window = config.get("sliding_window", 4096) if config.get("use_sliding_window", False) else None
    num_layers = config["num_hidden_layers"]
    first_sliding = config.get("max_window_layers", 28)
    layer_types = config.get("layer_types") or [
        "sliding_attention" if window is not None and index >= first_sliding else "full_attention"
        for index in range(num_layers)
    ]
    return window, sliding_flags(layer_types, window, num_layers, config.get("model_type", "qwen2"))


def sliding_flags(layer_types: list[str], window: int | None, num_layers: int, model_type: str) -> tuple[bool, ...]:
    """One flag per layer, True where ``layer_types`` names ``"sliding_attention"``
    (Qwen2 / Qwen3 / SmolLM3 list them, each family filling in its own default).

    Raises:
        ValueError: for an unknown layer type, a ``layer_types`` of the wrong length, or
            sliding layers without a ``window``.
    """
    unknown = sorted(set(layer_types) - set(LAYER_TYPES))
    if unknown or len(layer_types) != num_layers:
        raise ValueError(f"{model_type} config.json's layer_types must list {num_layers} entries of {LAYER_TYPES}, "
                         f"got {layer_types}")
    sliding = tuple(kind == "sliding_attention" for kind in layer_types)
    if any(sliding) and window is None:
        raise ValueError(f"{model_type} config.json's layer_types names sliding_attention layers but sets no "
                         "window (use_sliding_window false or sliding_window null); set both, or make every layer "
                         "full_attention")
    return sliding


# model_type -> its reader of the windowed layers; the others have none.
SLIDING_LAYER_READERS = {"mistral": mistral_sliding_layers, "qwen2": qwen_sliding_layers}


def window_fields(window: int | None, sliding: tuple[bool, ...], max_positions: int) -> dict:
    """``sliding_window`` and ``sliding_layers`` of `ModelArgs`; a window at least as long as the
    context (``max_positions``) hides nothing and is dropped, as is one no layer uses."""
    if window is None or window >= max_positions or not any(sliding):
        return {"sliding_window": None, "sliding_layers": ()}
    return {"sliding_window": window, "sliding_layers": tuple(sliding)}


def hf_architecture(model_type: str, task: str) -> str:
    """The transformers class of a ``model_type`` model of this backbone for ``task``
    (``LlamaForCausalLM``, ``Qwen3ForSequenceClassification``, ...); the families built
    on `llama` share it."""
    if task not in DECODER_TASKS:
        raise ValueError(f"{model_type} models have no {task!r} task; choose one of {tuple(DECODER_TASKS)}")
    return model_type_info(model_type).hf_prefix + DECODER_TASKS[task]


def features(args: ModelArgs) -> list[str]:
    """What sets this Llama-family variant apart, for ``mlx-llm info``."""
    found = [f"rotary positions (theta {args.rope_theta:g}"
             + (f", {args.rope_scaling['rope_type']} scaling)" if args.rope_scaling else ")")]
    if args.num_kv_heads < args.num_heads:
        found.append(f"grouped-query attention ({args.num_heads} query / {args.num_kv_heads} key-value heads)")
    if args.attention_bias:
        found.append("q/k/v biases")
    if args.tie_word_embeddings:
        found.append("tied embeddings")
    if args.sliding_layers:
        sliding = [index for index, flag in enumerate(args.sliding_layers) if flag]
        full = [index for index, flag in enumerate(args.sliding_layers) if not flag]
        where = f" in layers {sliding}, full attention in {full}" if full else ""  # none listed: every layer
        found.append(f"sliding-window attention (window {args.sliding_window}){where}")
    return found


def llama3_inverse_frequencies(head_dim: int, base: float, scaling: dict) -> mx.array:
    """Llama 3.1 rope scaling: low frequencies slowed by ``factor``, high ones kept,
    and a smooth blend between the two wavelength thresholds."""
    inverse = 1.0 / base ** (mx.arange(0, head_dim, 2, dtype=mx.float32) / head_dim)
    factor = scaling["factor"]
    low_factor = scaling.get("low_freq_factor", 1.0)
    high_factor = scaling.get("high_freq_factor", 4.0)
    old_context = scaling.get("original_max_position_embeddings", 8192)
    wavelength = 2 * math.pi / inverse
    scaled = mx.where(wavelength > old_context / low_factor, inverse / factor, inverse)
    smooth = (old_context / wavelength - low_factor) / (high_factor - low_factor)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelength >= old_context / high_factor) & (wavelength <= old_context / low_factor)
    return mx.where(medium, blended, scaled)


def make_rope(args: ModelArgs) -> RotaryEmbedding:
    scaling = args.rope_scaling
    if scaling is None:
        return RotaryEmbedding(args.head_dim, base=args.rope_theta)
    if scaling["rope_type"] == "linear":
        return RotaryEmbedding(args.head_dim, base=args.rope_theta, scale=1.0 / scaling["factor"])
    return RotaryEmbedding(args.head_dim, freqs=llama3_inverse_frequencies(args.head_dim, args.rope_theta, scaling))


class LlamaModel(nn.Module):
    """Token embeddings, pre-RMSNorm blocks with rotary causal self-attention, final RMSNorm.

    Families built on this backbone (Qwen3, SmolLM3, OLMo 2) override
    `layer_options`, the `TransformerEncoderLayer` arguments of one layer.
    A layer with a sliding window ``W`` (``args.windows``: Mistral, Qwen2/Qwen3
    with ``use_sliding_window``, Phi-3, Mixtral, Qwen3-MoE, SmolLM3) limits its
    queries to the keys ``p - W < k <= p`` (`masks.decoder_mask`); each window
    gets one mask.
    """

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.embed_tokens = Embedding(
            args.vocab_size, args.hidden_size, output_layer=args.task == "causal_lm" and args.tie_word_embeddings
        )
        rope = self.make_rope(args)  # shared by every layer; it has no parameters
        self.layers = [
            TransformerEncoderLayer(args.hidden_size, args.num_heads, args.intermediate_size,
                                    **self.layer_options(args, index, rope))
            for index in range(args.num_layers)
        ]
        self.norm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self._windows = tuple(args.windows)  # underscore: not a parameter

    def make_rope(self, args: ModelArgs) -> nn.Module:
        """The rotary embedding every layer shares (`make_rope`; Phi-3 builds LongRoPE)."""
        return make_rope(args)

    def embed(self, input_ids: mx.array) -> mx.array:
        """Token embeddings ``(B, L, hidden_size)``; families that scale them (Granite) override this."""
        return self.embed_tokens(input_ids)

    def layer_options(self, args: ModelArgs, index: int, rope: nn.Module) -> dict:
        """Keyword arguments of `TransformerEncoderLayer` for layer ``index``."""
        return dict(
            num_kv_heads=args.num_kv_heads,
            head_dim=args.head_dim,
            activation="silu",
            gated=True,
            bias=args.attention_bias,
            attention_output_bias=args.attention_output_bias,
            feed_forward_bias=args.mlp_bias,
            norm="rmsnorm",
            norm_eps=args.rms_norm_eps,
            norm_first=True,
            rope=rope,
        )

    def __call__(
        self,
        input_ids: mx.array,
        attention_mask: mx.array | None = None,
        cache: list[KVCache] | None = None,
        all_hidden_states: list | None = None,
    ) -> mx.array:
        """Final hidden states ``(B, L, hidden_size)`` for ``(B, L)`` token ids; ``all_hidden_states``,
        when given, receives every layer's input and the final output (``num_layers + 1`` arrays)."""
        masks = decoder_masks(input_ids.shape[1], attention_mask, cache, self._windows)
        return run_layers(self.layers, self.embed(input_ids), masks, cache, all_hidden_states, self.norm)


class Model(DecoderTaskModel):
    """Llama-family causal language model, or a classifier over the same
    backbone when ``args.task`` asks for one (`heads.DecoderTaskModel`:
    ``forward``, ``make_cache`` with a sliding window's rotating caches, ``layers``)."""

    backbone = LlamaModel  # families on this file's pieces swap in their own


# --- Hugging Face weights -----------------------------------------------------------------

ATTENTION_TENSORS = ("self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj.", "self_attn.o_proj.")
MLP_TENSORS = ("mlp.gate_proj.", "mlp.up_proj.", "mlp.down_proj.")


def layer_names(norms: dict[str, str], *extra: str) -> tuple[dict[str, str], tuple[str, ...]]:
    """``(renames, known)`` of a family on this backbone for `convert_hf_weights`: ``mlp.`` ->
    ``feed_forward.`` and its block ``norms`` (theirs -> ours); known, the attention and MLP
    projections (`ATTENTION_TENSORS`, `MLP_TENSORS`), those norms and the ``extra`` prefixes."""
    return {"mlp.": "feed_forward.", **norms}, (*ATTENTION_TENSORS, *MLP_TENSORS, *norms, *extra)


# The two block norms of a Llama layer (theirs -> ours).
BLOCK_NORMS = {"input_layernorm.": "self_attn_norm.", "post_attention_layernorm.": "feed_forward_norm."}
_RENAMES, _KNOWN = layer_names(BLOCK_NORMS)


def convert_hf_weights(
    weights: dict[str, mx.array],
    args: ModelArgs,
    renames: dict[str, str] = _RENAMES,
    known: tuple[str, ...] = _KNOWN,
) -> dict[str, mx.array]:
    """Hugging Face ``LlamaForCausalLM`` names to this file's: the layer modules
    are renamed (``mlp`` -> ``feed_forward``, the two norms), the rest kept.

    ``renames`` (theirs -> ours) and ``known`` (the layer tensors' name prefixes)
    are the other families' on this backbone."""
    converted: dict[str, mx.array] = {}
    for name, tensor in weights.items():
        if "rotary_emb.inv_freq" in name:
            continue
        # Quantized checkpoints (mlx-lm's layout) add ``.scales`` and ``.biases`` next to
        # each quantized ``.weight``, embeddings and the output layer included.
        if name.startswith("lm_head."):
            if args.task == "causal_lm" and not args.tie_word_embeddings:
                converted[name] = tensor
            continue
        if name.startswith("score."):
            if args.task != "causal_lm":
                converted[f"head.linear.{name.removeprefix('score.')}"] = tensor
            continue
        if name.startswith("model.embed_tokens.") or name == "model.norm.weight":
            converted[name] = tensor
            continue
        parts = name.split(".", 3)
        if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3].startswith(known):
            rest = parts[3]
            for old, new in renames.items():
                if rest.startswith(old):
                    rest = new + rest[len(old):]
            converted[f"model.layers.{parts[2]}.{rest}"] = tensor
            continue
        raise ValueError(f"unknown {args.model_type} tensor {name!r} in checkpoint")
    return converted


def export_hf_weights(
    weights: dict[str, mx.array], args: ModelArgs, renames: dict[str, str] = _RENAMES
) -> dict[str, mx.array]:
    """The inverse of `convert_hf_weights` (``feed_forward`` -> ``mlp``, the norms,
    the head -> ``score``), ``renames`` as there."""
    exported: dict[str, mx.array] = {}
    for name, tensor in weights.items():
        if name.startswith("head.linear."):
            exported[f"score.{name.removeprefix('head.linear.')}"] = tensor
            continue
        parts = name.split(".", 3)
        if len(parts) == 4 and parts[:2] == ["model", "layers"]:
            rest = parts[3]
            for theirs, ours in renames.items():
                if rest.startswith(ours):
                    rest = theirs + rest[len(ours):]
            name = f"model.layers.{parts[2]}.{rest}"
        exported[name] = tensor
    return exported
