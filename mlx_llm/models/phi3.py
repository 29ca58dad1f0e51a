"""The Phi-3 family: Phi-3 and Phi-3.5 mini/medium, Phi-4-mini (``model_type`` ``phi3``).

A Llama-family decoder (`llama`: pre-RMSNorm blocks, grouped-query attention,
SwiGLU) with three differences:

- queries, keys and values come from one fused ``qkv_proj`` (rows: queries,
  keys, values) and the feed-forward's gate and up projections from one
  ``gate_up_proj`` (rows: gate, then up); both stay fused here
  (`MultiHeadAttention`'s ``fused_qkv``, `GatedFeedForward`'s ``fused``), so
  the checkpoint's tensors load and export under their own names;
- rotary positions may cover only the first ``head_dim * partial_rotary_factor``
  features of each head (Phi-4-mini: 0.75);
- the 128k-context models use LongRoPE (`positions.LongRoPE`, rope type
  ``"longrope"``, formerly ``"su"``): per-pair frequency rescale factors, short
  ones up to ``original_max_position_embeddings`` positions and long ones past
  it, and ``cos``/``sin`` scaled by ``sqrt(1 + ln(s) / ln(n))`` with ``s =
  max_position_embeddings / n``. As in transformers, a forward pass uses the long
  factors when its positions reach past ``n``. A cache made by `Model.make_cache`
  (a `LongRoPECache`) keeps its token ids and is recomputed with the long factors
  when a cached sequence grows past ``n``, as transformers' ``generate`` recomputes
  its cache, so cached decoding gives what a full pass over the sequence gives.
  Caches built elsewhere (the server's continuous batch) keep the keys of the set
  they were filled with.

``sliding_window`` (Phi-3-mini-4k: 2047) limits every layer's queries to the
keys ``p - W < k <= p``, and the cache of each layer holds the last ``W``
positions (`llama.LlamaModel`'s and `llama.Model.make_cache`'s windows per
layer). Windows at least as long as the context (the 128k models' 262144)
change nothing and are dropped (`llama.window_fields`).
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..blocks.feed_forward import GatedFeedForward
from ..blocks.positions import LongRoPE, RotaryEmbedding, longrope_attention_factor
from . import ModelType, llama

MODEL_TYPES = {"phi3": ModelType("Phi-3", "Phi3")}
hf_architecture = llama.hf_architecture  # Phi3ForCausalLM, Phi3ForSequenceClassification, ...

LONGROPE_TYPES = ("longrope", "su")  # "su": the name before transformers 4.42
_KNOWN = ("self_attn.qkv_proj.", "self_attn.o_proj.", "mlp.gate_up_proj.", "mlp.down_proj.",
          "input_layernorm.", "post_attention_layernorm.")


def _read_rope(config: dict) -> tuple[float, dict | None, float]:
    """``(rope_theta, longrope scaling or None, partial_rotary_factor)`` from either spelling:
    transformers 4.x (``rope_theta``, ``rope_scaling``, top-level ``partial_rotary_factor``)
    or 5.x (all of them in ``rope_parameters``)."""
    parameters = dict(config.get("rope_parameters") or {})
    theta = parameters.get("rope_theta") or config.get("rope_theta", 10000.0)
    partial = parameters.get("partial_rotary_factor") or config.get("partial_rotary_factor") or 1.0
    scaling = parameters if parameters.get("rope_type", parameters.get("type")) not in (None, "default") else None
    scaling = scaling or config.get("rope_scaling") or None
    if scaling is None:
        return float(theta), None, float(partial)
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return float(theta), None, float(partial)
    if rope_type not in LONGROPE_TYPES or "short_factor" not in scaling or "long_factor" not in scaling:
        raise ValueError(
            f"phi3 config.json has rope type {rope_type!r}; supported: 'default' and 'longrope' (or 'su') "
            "with short_factor and long_factor lists"
        )
    return float(theta), dict(scaling), float(partial)


@dataclass
class ModelArgs(llama.ModelArgs):
    """`llama.ModelArgs` plus the rotary width (its ``sliding_window``, when set, covers every layer).

    ``rope_scaling``, for LongRoPE, holds ``rope_type`` ``"longrope"``,
    ``short_factor``, ``long_factor``, ``original_max_position_embeddings`` and
    ``attention_factor``.
    """

    rotary_dim: int = 0  # leading features of each head that are rotated (even, <= head_dim)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.rotary_dim <= self.head_dim or self.rotary_dim % 2:
            raise ValueError(
                f"phi3 partial_rotary_factor gives {self.rotary_dim} rotary dims for head_dim {self.head_dim}; "
                "it must give an even number between 2 and head_dim"
            )

    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        """Read a Phi-3 config (transformers 4.x ``rope_theta``/``rope_scaling`` or 5.x ``rope_parameters``).

        Raises:
            ValueError: naming missing keys, an unsupported rope type, or factor
                lists of the wrong length.
        """
        theta, scaling, partial = _read_rope(config)
        plain = {key: value for key, value in config.items() if key not in ("rope_parameters", "rope_scaling")}
        base = llama.ModelArgs.from_config({**plain, "model_type": "phi3", "rope_theta": theta})
        rotary_dim = int(base.head_dim * partial)
        if scaling is not None:
            original = (scaling.get("original_max_position_embeddings")
                        or config.get("original_max_position_embeddings") or base.max_positions)
            factor = scaling.get("factor") or base.max_positions / original
            attention_factor = scaling.get("attention_factor") or longrope_attention_factor(factor, original)
            scaling = {"rope_type": "longrope", "short_factor": list(scaling["short_factor"]),
                       "long_factor": list(scaling["long_factor"]), "original_max_position_embeddings": original,
                       "attention_factor": float(attention_factor)}
            for name in ("short_factor", "long_factor"):
                if len(scaling[name]) != rotary_dim // 2:
                    raise ValueError(f"phi3 config.json's {name} has {len(scaling[name])} entries; "
                                     f"{rotary_dim // 2} (rotary dims / 2) are needed")
        windows = llama.window_fields(config.get("sliding_window"), (True,) * base.num_layers, base.max_positions)
        return cls(**{**vars(base), "rope_scaling": scaling, **windows}, rotary_dim=rotary_dim)


def features(args: ModelArgs) -> list[str]:
    """Llama's features (the window among them) plus the fused projections, LongRoPE and partial rotary."""
    found = [*llama.features(args), "fused qkv_proj and gate_up_proj"]
    if args.rotary_dim < args.head_dim:
        found.append(f"partial rotary ({args.rotary_dim} of {args.head_dim} head dims)")
    if args.rope_scaling is not None:
        found.append(f"LongRoPE (short/long factors, original context "
                     f"{args.rope_scaling['original_max_position_embeddings']}, "
                     f"attention factor {args.rope_scaling['attention_factor']:.4g})")
    return found


def make_rope(args: ModelArgs) -> nn.Module:
    """`LongRoPE` for a longrope config, else a `RotaryEmbedding` over the first ``rotary_dim`` features."""
    scaling = args.rope_scaling
    if scaling is None:
        return RotaryEmbedding(args.rotary_dim, base=args.rope_theta)
    return LongRoPE(args.rotary_dim, args.rope_theta, scaling["short_factor"], scaling["long_factor"],
                    scaling["original_max_position_embeddings"], scaling["attention_factor"])


class LongRoPECache(list):
    """One cache per layer (a list, as every decoder's) that also keeps the token ids it holds,
    so that a LongRoPE model can recompute it when a row's factor set changes.

    Keys and values depend on the factors through every layer (each layer's input is the
    output of attention with rotated queries and keys), so a cache filled with the short
    factors cannot be turned into a long-factor one: it is recomputed from the held ids,
    as transformers' ``generate`` does when it drops its cache past the original length.

    Attributes:
        input_ids: ``(B, S)`` ids of the held positions (left padding included), or ``None``.
        long_rows: ``(B,)`` booleans, the factor set each row's keys were computed with.
    """

    def __init__(self, layers: list):
        super().__init__(layers)
        self.input_ids: mx.array | None = None
        self.long_rows: np.ndarray | None = None


class Phi3Model(llama.LlamaModel):
    """The Llama backbone with fused projections, Phi-3's rotary embedding and LongRoPE's cache switch."""

    def make_rope(self, args: ModelArgs) -> nn.Module:
        return make_rope(args)

    def layer_options(self, args: ModelArgs, index: int, rope: nn.Module) -> dict:
        feed_forward = GatedFeedForward(args.hidden_size, args.intermediate_size, "silu", bias=False, fused=True)
        return {**super().layer_options(args, index, rope), "fused_qkv": True, "feed_forward": feed_forward}

    def __call__(
        self,
        input_ids: mx.array,
        attention_mask: mx.array | None = None,
        cache: list | None = None,
        all_hidden_states: list | None = None,
    ) -> mx.array:
        """Final hidden states ``(B, L, hidden_size)``, as `llama.LlamaModel`; a `LongRoPECache`
        is recomputed first when a row now needs the other factor set (it passed, or was
        trimmed back within, the original length)."""
        rope = self.layers[0].self_attn.rope
        if not isinstance(cache, LongRoPECache) or not isinstance(rope, LongRoPE):
            return super().__call__(input_ids, attention_mask, cache, all_hidden_states)
        held, length = cache[0].offset, input_ids.shape[1]
        padding = getattr(cache[0], "left_padding", None)
        starts = held - (np.zeros(input_ids.shape[0], np.int64) if padding is None else np.array(padding))
        long_rows = starts + length > rope.original_max_positions  # (B,) each row's set, as LongRoPE picks it
        history = input_ids if held == 0 else mx.concatenate([cache.input_ids[:, :held], input_ids], axis=1)
        switch = held > 0 and not np.array_equal(long_rows, cache.long_rows)
        cache.input_ids, cache.long_rows = history, long_rows
        if not switch:
            return super().__call__(input_ids, attention_mask, cache, all_hidden_states)
        for layer_cache in cache:
            layer_cache.reset()  # left padding is kept
        collected = None if all_hidden_states is None else []
        hidden_states = super().__call__(history, attention_mask, cache, collected)[:, -length:]
        if all_hidden_states is not None:
            all_hidden_states.extend(states[:, -length:] for states in collected)
        return hidden_states


class Model(llama.Model):
    """Phi-3 causal language model (or classifier, as `llama.Model`)."""

    backbone = Phi3Model

    def make_cache(self, left_padding: mx.array | None = None, max_kv_size: int | None = None) -> list:
        """As `llama.Model.make_cache` (a sliding window's layers hold their last ``sliding_window``
        positions); with LongRoPE, a `LongRoPECache`."""
        caches = super().make_cache(left_padding, max_kv_size)
        return LongRoPECache(caches) if self.args.rope_scaling is not None else caches


def convert_hf_weights(weights: dict[str, mx.array], args: ModelArgs) -> dict[str, mx.array]:
    """Hugging Face ``Phi3ForCausalLM`` names to this file's (Llama's map over the fused projections)."""
    return llama.convert_hf_weights(weights, args, known=_KNOWN)


def export_hf_weights(weights: dict[str, mx.array], args: ModelArgs) -> dict[str, mx.array]:
    """The inverse of `convert_hf_weights`."""
    return llama.export_hf_weights(weights, args)


def mlx_lm_config(config: dict) -> dict:
    """``config.json`` for mlx-lm's Phi-3, which reads transformers 4.x's spelling: LongRoPE's
    ``rope_scaling`` with a ``type``, and top-level ``partial_rotary_factor`` and
    ``original_max_position_embeddings`` (its default 4096 would otherwise apply)."""
    config = dict(config)
    parameters = config.get("rope_parameters") or {}
    for key in ("partial_rotary_factor", "original_max_position_embeddings"):
        if key in parameters:
            config.setdefault(key, parameters[key])
    scaling = config.get("rope_scaling")
    if scaling and "type" not in scaling:
        config["rope_scaling"] = {**scaling, "type": scaling.get("rope_type")}
    return config
