"""The Llama family: Llama 1-3, Mistral, Qwen2/Qwen2.5, SmolLM/SmolLM2, TinyLlama.

Pre-RMSNorm decoder blocks with rotary positions, grouped-query attention and
a SwiGLU feed-forward. The variants differ only in configuration: key/value
heads, attention biases (Qwen2), tied embeddings, RMSNorm epsilon, rope
theta and rope scaling. ``task`` builds the classifiers of
``LlamaForSequenceClassification`` (last real token) and
``LlamaForTokenClassification`` (every token) over the same backbone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ..cache import KVCache, make_decoder_cache
from ..heads import DECODER_TASKS, DecoderTaskHead, decoder_task
from ..layers import Embedding, Linear
from ..masks import decoder_mask
from ..model_output import DECODER, ModelOutput
from ..positions import RotaryEmbedding
from ..transformer import TransformerEncoderLayer
from . import ModelType, check_required_keys, model_type_info

MODEL_TYPES = {"llama": ModelType("Llama", "Llama"), "mistral": ModelType("Mistral", "Mistral"),
               "qwen2": ModelType("Qwen2", "Qwen2")}

ROPE_TYPES = ("default", "linear", "llama3")
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

    def __post_init__(self) -> None:
        if self.task not in DECODER_TASKS:
            raise ValueError(f"unknown {self.model_type} task {self.task!r}; choose one of {tuple(DECODER_TASKS)}")
        if self.num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {self.num_labels}")

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
        return cls(
            model_type=model_type,
            vocab_size=config["vocab_size"],
            hidden_size=hidden_size,
            num_layers=config["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=config.get("num_key_value_heads") or num_heads,
            head_dim=config.get("head_dim") or hidden_size // num_heads,
            intermediate_size=config["intermediate_size"],
            max_positions=config.get("max_position_embeddings", 2048),
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
        )


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
    ``sliding_window`` (``None`` here; Phi-3 sets it) limits every layer's
    queries to the keys ``p - W < k <= p`` (`masks.decoder_mask`).
    """

    sliding_window: int | None = None

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
        hidden_states = self.embed(input_ids)
        mask = decoder_mask(input_ids.shape[1], attention_mask, None if cache is None else cache[0],
                            window_size=self.sliding_window)
        for index, layer in enumerate(self.layers):
            if all_hidden_states is not None:
                all_hidden_states.append(hidden_states)
            hidden_states = layer(hidden_states, mask=mask, cache=None if cache is None else cache[index])
        hidden_states = self.norm(hidden_states)
        if all_hidden_states is not None:
            all_hidden_states.append(hidden_states)
        return hidden_states


class Model(nn.Module):
    """Llama-family causal language model, or a classifier over the same
    backbone when ``args.task`` asks for one."""

    backbone = LlamaModel  # families on this file's pieces swap in their own
    kind = DECODER

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model = self.backbone(args)
        if args.task != "causal_lm":
            self.head = DecoderTaskHead(args.task, args.hidden_size, args.num_labels, args.classifier_dropout)
        elif not args.tie_word_embeddings:
            self.lm_head = Linear(args.hidden_size, args.vocab_size, bias=False)

    def forward(
        self,
        input_ids: mx.array,
        attention_mask: mx.array | None = None,
        cache: list[KVCache] | None = None,
        *,
        output_hidden_states: bool = False,
    ) -> ModelOutput:
        """``logits``: next-token logits ``(B, L, vocab_size)``, or for a classifier
        ``(B, num_labels)`` (sequence) or ``(B, L, num_labels)`` (token) logits;
        ``last_hidden_state`` ``(B, L, hidden_size)``; with ``output_hidden_states``,
        ``hidden_states`` (``num_layers + 1`` arrays, as transformers)."""
        all_hidden_states = [] if output_hidden_states else None
        hidden_states = self.model(input_ids, attention_mask, cache, all_hidden_states)
        if "head" in self:
            logits = self.head(hidden_states, attention_mask)
        elif self.args.tie_word_embeddings:
            logits = self.model.embed_tokens.as_linear(hidden_states)
        else:
            logits = self.lm_head(hidden_states)
        output = ModelOutput(logits=logits, last_hidden_state=hidden_states)
        if all_hidden_states is not None:
            output.hidden_states = all_hidden_states
        return output

    def __call__(
        self,
        input_ids: mx.array,
        attention_mask: mx.array | None = None,
        cache: list[KVCache] | None = None,
    ) -> mx.array:
        """``forward(...).logits``."""
        return self.forward(input_ids, attention_mask, cache).logits

    @property
    def layers(self) -> list[nn.Module]:
        return self.model.layers

    def make_cache(self, left_padding: mx.array | None = None, max_kv_size: int | None = None) -> list:
        """One cache per layer: a `KVCache` (``left_padding`` ``(B,)`` for a
        left-padded batch), or a `RotatingKVCache` bounded to ``max_kv_size``."""
        return make_decoder_cache(len(self.model.layers), left_padding, max_kv_size)


# --- Hugging Face weights -----------------------------------------------------------------

_RENAMES = {
    "mlp.": "feed_forward.",
    "input_layernorm.": "self_attn_norm.",
    "post_attention_layernorm.": "feed_forward_norm.",
}
_KNOWN = ("self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj.", "self_attn.o_proj.",
          "mlp.gate_proj.", "mlp.up_proj.", "mlp.down_proj.", "input_layernorm.", "post_attention_layernorm.")


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
