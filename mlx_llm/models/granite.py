"""The Granite family: IBM Granite 3.x dense language models (``model_type`` ``granite``).

A Llama-family decoder (`llama`) with four scalar multipliers from the config
(muP-style parametrization), each where transformers' ``GraniteModel`` applies it:

- ``embedding_multiplier`` ``m_e``: ``h_0 = m_e * Embed(ids)``;
- ``residual_multiplier`` ``m_r``: ``h = h + m_r * Sublayer(RMSNorm(h))`` for
  attention and the feed-forward (`TransformerEncoderLayer`'s ``residual_scale``);
- ``attention_multiplier`` ``m_a``: scores ``Q K^T * m_a`` instead of
  ``Q K^T / sqrt(head_dim)``;
- ``logits_scaling`` ``s``: next-token logits ``lm_head(h) / s``.

A tied output layer multiplies by the embedding matrix itself (without ``m_e``),
as transformers does.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from . import ModelType, llama

MODEL_TYPES = {"granite": ModelType("Granite", "Granite")}


def hf_architecture(model_type: str, task: str) -> str:
    """``GraniteForCausalLM``: transformers has no Granite classifier classes."""
    if task != "causal_lm":
        raise ValueError(f"transformers has no {model_type} class for the {task!r} task; only causal_lm")
    return "GraniteForCausalLM"


@dataclass
class ModelArgs(llama.ModelArgs):
    """`llama.ModelArgs` plus Granite's four multipliers (1 each: plain Llama)."""

    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    attention_multiplier: float = 1.0
    logits_scaling: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.logits_scaling == 0:
            raise ValueError("granite config.json has logits_scaling 0; logits are divided by it, so it must not be 0")

    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        """Read a Granite config (transformers 4.x ``rope_theta`` or 5.x ``rope_parameters``).

        Raises:
            ValueError: naming missing keys, an unsupported activation or rope
                type, or ``logits_scaling`` 0.
        """
        base = llama.ModelArgs.from_config({**config, "model_type": "granite"})
        multipliers = {key: float(config.get(key, 1.0)) for key in
                       ("embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scaling")}
        return cls(**vars(base), **multipliers)


def features(args: ModelArgs) -> list[str]:
    """Llama's features plus the multipliers, for ``mlx-llm info``."""
    return [*llama.features(args),
            f"multipliers: embedding {args.embedding_multiplier:g}, residual {args.residual_multiplier:g}, "
            f"attention {args.attention_multiplier:g}, logits divided by {args.logits_scaling:g}"]


class GraniteModel(llama.LlamaModel):
    """The Llama backbone with scaled embeddings, residual branches and attention scores."""

    def __init__(self, args: ModelArgs):
        super().__init__(args)
        self.embedding_multiplier = args.embedding_multiplier  # a float attribute, not a parameter

    def embed(self, input_ids: mx.array) -> mx.array:
        return self.embed_tokens(input_ids) * self.embedding_multiplier

    def layer_options(self, args: ModelArgs, index: int, rope: nn.Module) -> dict:
        return {**super().layer_options(args, index, rope), "attention_scale": args.attention_multiplier,
                "residual_scale": args.residual_multiplier}


class Model(llama.Model):
    """Granite causal language model (or classifier, as `llama.Model`; only the
    language model's logits are divided by ``logits_scaling``)."""

    backbone = GraniteModel

    def lm_logits(self, hidden_states: mx.array) -> mx.array:
        """`llama.Model`'s next-token logits divided by ``logits_scaling``."""
        logits = super().lm_logits(hidden_states)
        return logits if self.args.logits_scaling == 1.0 else logits / self.args.logits_scaling


def convert_hf_weights(weights: dict[str, mx.array], args: ModelArgs) -> dict[str, mx.array]:
    """Hugging Face ``GraniteForCausalLM`` names to this file's (Llama's map)."""
    return llama.convert_hf_weights(weights, args)


def export_hf_weights(weights: dict[str, mx.array], args: ModelArgs) -> dict[str, mx.array]:
    """The inverse of `convert_hf_weights`."""
    return llama.export_hf_weights(weights, args)
