"""The Gemma 2 family: Gemma 2 2B, 9B, 27B.

A decoder on the Llama pieces (`llama`: rotary positions, grouped-query
attention, a gated feed-forward) with Gemma's changes:

- token embeddings scaled by ``sqrt(hidden_size)``, the factor cast to the
  embeddings' dtype first (``h = E[ids] * dtype(sqrt(d))``), as transformers;
- RMSNorms scaled by ``(1 + w)`` (`mlx_llm.blocks.norms.UnitOffsetRMSNorm`), before
  and after each sublayer: ``h = x + Norm'(Attn(Norm(x)))``,
  ``out = h + Norm'(MLP(Norm(h)))`` (`TransformerEncoderLayer`'s sandwich norms);
- a GeGLU feed-forward (``gelu_pytorch_tanh``);
- attention scores scaled by ``query_pre_attn_scalar ** -0.5`` (not
  ``head_dim ** -0.5``) and soft-capped, ``s -> c * tanh(s / c)`` with
  ``c = attn_logit_softcapping``; the final logits are soft-capped the same
  way with ``final_logit_softcapping``;
- layers alternate between sliding-window attention (the query at ``p`` sees
  keys ``p - W < k <= p``, ``W = sliding_window``; even layers) and global
  attention (``layer_types`` when the config lists them). Each kind gets its
  own mask, and `Model.make_cache` gives each sliding layer a `RotatingKVCache`
  of ``W`` positions and each global layer a `KVCache`.

Gemma 3 (`gemma3`) builds on this file's backbone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from ..blocks.cache import KVCache, RotatingKVCache
from ..blocks.feed_forward import hf_activation
from ..blocks.heads import decoder_task
from ..blocks.layers import Embedding
from ..blocks.masks import decoder_masks
from ..blocks.norms import UnitOffsetRMSNorm
from ..blocks.positions import RotaryEmbedding
from ..blocks.transformer import TransformerEncoderLayer, run_layers
from . import ModelType, check_required_keys, llama

MODEL_TYPES = {"gemma2": ModelType("Gemma 2", "Gemma2")}
hf_architecture = llama.hf_architecture  # Gemma2ForCausalLM, Gemma2ForSequenceClassification, ...


@dataclass
class ModelArgs(llama.ModelArgs):
    """`llama.ModelArgs` plus Gemma's scales and caps; its ``sliding_window``, ``sliding_layers``
    and ``windows`` hold the sliding-window layers, one flag for every layer."""

    query_pre_attn_scalar: float = 256.0  # attention scale = query_pre_attn_scalar ** -0.5
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    activation: str = "gelu_tanh"

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.sliding_layers) != self.num_layers:  # the backbone builds its layers from these flags
            raise ValueError(
                f"{self.model_type} layer_types has {len(self.sliding_layers)} entries for {self.num_layers} layers"
            )
        if not self.query_pre_attn_scalar > 0:
            raise ValueError(f"{self.model_type} query_pre_attn_scalar must be positive, got {self.query_pre_attn_scalar}")

    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        """Read a Gemma 2 ``config.json`` (transformers 4.x ``rope_theta`` / ``rope_scaling``
        or 5.x ``rope_parameters``; ``layer_types``, or every other layer sliding from layer 0).

        Raises:
            ValueError: naming missing keys or an unsupported value.
        """
        config = {"model_type": "gemma2", **config}
        rope = config.get("rope_parameters") or {
            **(config.get("rope_scaling") or {}), "rope_theta": config.get("rope_theta", 10000.0)}
        theta, scaling = read_rope(rope, config["model_type"])
        return cls(**common_fields(config, pattern=2, softcaps=(50.0, 30.0)), rope_theta=theta, rope_scaling=scaling)


def read_rope(parameters: dict, model_type: str) -> tuple[float, dict | None]:
    """``(rope_theta, rope scaling or None)`` from one rope record (``rope_theta``,
    ``rope_type`` or ``type``, and the scaling's own keys)."""
    parameters = dict(parameters)
    theta = float(parameters.pop("rope_theta", 10000.0))
    legacy = parameters.pop("type", "default")  # transformers 4.x's older spelling
    rope_type = parameters.pop("rope_type", legacy)
    if rope_type not in llama.ROPE_TYPES:
        raise ValueError(f"{model_type} config has rope type {rope_type!r}; supported rope types: {llama.ROPE_TYPES}")
    return theta, None if rope_type == "default" else {**parameters, "rope_type": rope_type}


def common_fields(config: dict, pattern: int, softcaps: tuple[float | None, float | None]) -> dict:
    """The `ModelArgs` fields Gemma 2 and Gemma 3 read alike (all but the rotary ones).

    Args:
        config: The ``config.json``, ``model_type`` set.
        pattern: Without ``layer_types``, every ``pattern``-th layer (1-based) is
            global and the others slide, as transformers fills it in.
        softcaps: Defaults of ``attn_logit_softcapping`` and ``final_logit_softcapping``
            when the config lacks the keys (a ``null`` value means no cap).
    """
    model_type = config["model_type"]
    check_required_keys(config, llama.REQUIRED_KEYS, model_type)
    # transformers reads hidden_activation (4.x configs also hold a hidden_act, which Gemma 2 ignores).
    activation_key = "hidden_activation" if config.get("hidden_activation") else "hidden_act"
    activation = hf_activation(config.get(activation_key) or "gelu_pytorch_tanh", activation_key)
    if config.get("use_bidirectional_attention"):
        raise ValueError(f"{model_type} config.json sets use_bidirectional_attention (an encoder); "
                         "only causal Gemma models are supported")
    num_layers, num_heads = config["num_hidden_layers"], config["num_attention_heads"]
    layer_types = config.get("layer_types") or [
        "full_attention" if (index + 1) % pattern == 0 else "sliding_attention" for index in range(num_layers)]
    window = config.get("sliding_window", 4096)
    # A null window makes every layer global, as in transformers.
    sliding = (llama.sliding_flags(layer_types, window, num_layers, model_type) if window is not None
               else (False,) * num_layers)
    return dict(
        model_type=model_type,
        vocab_size=config["vocab_size"],
        hidden_size=config["hidden_size"],
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=config.get("num_key_value_heads") or num_heads,
        head_dim=config.get("head_dim") or config["hidden_size"] // num_heads,
        intermediate_size=config["intermediate_size"],
        max_positions=config.get("max_position_embeddings", 8192),
        rms_norm_eps=config.get("rms_norm_eps", 1e-6),
        attention_bias=config.get("attention_bias", False),
        attention_output_bias=config.get("attention_bias", False),
        tie_word_embeddings=config.get("tie_word_embeddings", True),  # transformers' Gemma default
        task=decoder_task(config.get("architectures"), model_type),
        num_labels=len(config["id2label"]) if "id2label" in config else config.get("num_labels", 2),
        classifier_dropout=0.1 if config.get("classifier_dropout") is None else config["classifier_dropout"],
        query_pre_attn_scalar=float(config.get("query_pre_attn_scalar", 256)),
        attn_logit_softcap=config.get("attn_logit_softcapping", softcaps[0]),
        final_logit_softcap=config.get("final_logit_softcapping", softcaps[1]),
        sliding_window=window,
        sliding_layers=sliding,
        activation=activation,
    )


def features(args: ModelArgs) -> list[str]:
    """What sets a Gemma model apart, for ``mlx-llm info``."""
    found = [f"embeddings scaled by sqrt({args.hidden_size})", "(1 + w) RMSNorm before and after each sublayer",
             f"attention scale query_pre_attn_scalar^-0.5 ({args.query_pre_attn_scalar:g})"]
    if args.attn_logit_softcap is not None:
        found.append(f"attention logit soft-cap {args.attn_logit_softcap:g}")
    if args.final_logit_softcap is not None:
        found.append(f"final logit soft-cap {args.final_logit_softcap:g}")
    sliding = [index for index, flag in enumerate(args.sliding_layers) if flag]
    if sliding:
        found.append(f"sliding-window attention (window {args.sliding_window}) in layers {sliding}, "
                     f"global in {[index for index, flag in enumerate(args.sliding_layers) if not flag]}")
    found.append(rope_feature(args))
    if args.num_kv_heads < args.num_heads:
        found.append(f"grouped-query attention ({args.num_heads} query / {args.num_kv_heads} key-value heads)")
    if args.tie_word_embeddings:
        found.append("tied embeddings")
    return found


def rope_feature(args: ModelArgs) -> str:
    """Rotary positions, for `features`."""
    scaling = f", {args.rope_scaling['rope_type']} scaling" if args.rope_scaling else ""
    return f"rotary positions (theta {args.rope_theta:g}{scaling})"


class GemmaModel(nn.Module):
    """Scaled token embeddings, sandwich-normed blocks of sliding-window or global
    attention, and a final ``(1 + w)`` RMSNorm.

    Gemma 3 overrides `layer_options` (query/key norms) and `local_rope` (the
    sliding layers' own rotary base).
    """

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.embed_tokens = Embedding(
            args.vocab_size, args.hidden_size, output_layer=args.task == "causal_lm" and args.tie_word_embeddings
        )
        self.embed_scale = math.sqrt(args.hidden_size)
        global_rope, local_rope = llama.make_rope(args), self.local_rope(args)  # no parameters: shared
        self.layers = [
            TransformerEncoderLayer(args.hidden_size, args.num_heads, args.intermediate_size,
                                    **self.layer_options(args, index, local_rope if sliding else global_rope))
            for index, sliding in enumerate(args.sliding_layers)
        ]
        self.norm = UnitOffsetRMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self._windows = tuple(args.windows)  # underscore: not a parameter

    def embed(self, input_ids: mx.array) -> mx.array:
        """Token embeddings times ``sqrt(hidden_size)`` cast to their dtype, ``(B, L, hidden_size)``."""
        hidden_states = self.embed_tokens(input_ids)
        return hidden_states * mx.array(self.embed_scale, hidden_states.dtype)

    def local_rope(self, args: ModelArgs) -> RotaryEmbedding:
        """The rotary embedding of the sliding-window layers (Gemma 2: the global one's settings)."""
        return llama.make_rope(args)

    def layer_options(self, args: ModelArgs, index: int, rope: nn.Module) -> dict:
        """Keyword arguments of `TransformerEncoderLayer` for layer ``index``."""
        return dict(
            num_kv_heads=args.num_kv_heads,
            head_dim=args.head_dim,
            activation=args.activation,
            gated=True,
            bias=args.attention_bias,
            attention_output_bias=args.attention_output_bias,
            feed_forward_bias=False,
            norm="rmsnorm_unit_offset",
            norm_eps=args.rms_norm_eps,
            norm_first=True,
            norm_output=True,  # with norm_first: a norm before and after each sublayer
            rope=rope,
            attention_scale=args.query_pre_attn_scalar ** -0.5,
            attention_logit_softcap=args.attn_logit_softcap,
        )

    def __call__(
        self,
        input_ids: mx.array,
        attention_mask: mx.array | None = None,
        cache: list[KVCache | RotatingKVCache] | None = None,
        all_hidden_states: list | None = None,
    ) -> mx.array:
        """Final hidden states ``(B, L, hidden_size)`` for ``(B, L)`` token ids; ``all_hidden_states``,
        when given, receives every layer's input and the final output (``num_layers + 1`` arrays)."""
        masks = decoder_masks(input_ids.shape[1], attention_mask, cache, self._windows)  # one per layer kind
        return run_layers(self.layers, self.embed(input_ids), masks, cache, all_hidden_states, self.norm)


class Model(llama.Model):
    """Gemma 2 causal language model with soft-capped logits (or a classifier, as `llama.Model`);
    its cache: a `RotatingKVCache` of ``sliding_window`` positions for each sliding-window
    layer, a `KVCache` for each global one."""

    backbone = GemmaModel

    def lm_logits(self, hidden_states: mx.array) -> mx.array:
        """`llama.Model`'s next-token logits ``z`` soft-capped, ``c * tanh(z / c)`` with ``c``
        the final soft-cap when there is one (a classifier's logits are not)."""
        logits = super().lm_logits(hidden_states)
        cap = self.args.final_logit_softcap
        return logits if cap is None else mx.tanh(logits / cap) * cap


# --- Hugging Face weights -----------------------------------------------------------------

RENAMES, KNOWN = llama.layer_names({
    "input_layernorm.": "self_attn_norm.",
    "post_attention_layernorm.": "self_attn_output_norm.",
    "pre_feedforward_layernorm.": "feed_forward_norm.",
    "post_feedforward_layernorm.": "feed_forward_output_norm.",
})


def convert_hf_weights(weights: dict[str, mx.array], args: ModelArgs) -> dict[str, mx.array]:
    """Hugging Face ``Gemma2ForCausalLM`` names to this file's (Llama's map with the four block norms)."""
    return llama.convert_hf_weights(weights, args, renames=RENAMES, known=KNOWN)


def export_hf_weights(weights: dict[str, mx.array], args: ModelArgs) -> dict[str, mx.array]:
    """The inverse of `convert_hf_weights`."""
    return llama.export_hf_weights(weights, args, renames=RENAMES)


def mlx_lm_config(config: dict) -> dict:
    """``config`` with the keys mlx-lm's ``gemma2`` reads spelled its way (transformers 5
    writes ``rope_parameters``; mlx-lm's own default ``query_pre_attn_scalar`` is 144, not 256).

    mlx-lm's Gemma 2 attends to every position in every layer: its logits equal these
    while the sequence fits in the sliding window.
    """
    args = ModelArgs.from_config(config)
    return {**config, "rope_theta": args.rope_theta, "query_pre_attn_scalar": config.get("query_pre_attn_scalar", 256),
            "attn_logit_softcapping": args.attn_logit_softcap, "final_logit_softcapping": args.final_logit_softcap}
