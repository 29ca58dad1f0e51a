"""The OLMo 2 family: OLMo 2 1B-32B.

A Llama-family decoder (`llama`: rotary positions, SwiGLU, RMSNorm) with two
changes in each block:

- the norms sit on the residual branch, after each sublayer:
  ``h = x + RMSNorm(Attention(x))``, ``out = h + RMSNorm(MLP(h))``
  (`TransformerEncoderLayer`'s ``norm_output``), with a final RMSNorm;
- queries and keys are RMS-normalized over the whole projected width
  (``num_heads * head_dim`` and ``num_kv_heads * head_dim``, not per head),
  before rotary positions.

Hugging Face calls the two block norms ``post_attention_layernorm`` and
``post_feedforward_layernorm``; here they are ``self_attn_norm`` and
``feed_forward_norm``, as in every other family.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from . import ModelType, llama

MODEL_TYPES = {"olmo2": ModelType("OLMo 2", "Olmo2")}
hf_architecture = llama.hf_architecture  # Olmo2ForCausalLM, Olmo2ForSequenceClassification, ...

_RENAMES, _KNOWN = llama.layer_names(
    {"post_attention_layernorm.": "self_attn_norm.", "post_feedforward_layernorm.": "feed_forward_norm."},
    "self_attn.q_norm.", "self_attn.k_norm.",
)


@dataclass
class ModelArgs(llama.ModelArgs):
    """`llama.ModelArgs`, read from an OLMo 2 ``config.json``."""

    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        """Read an OLMo 2 config (transformers 4.x ``rope_theta`` or 5.x ``rope_parameters``).

        Raises:
            ValueError: naming missing keys or an unsupported activation or rope type.
        """
        return super().from_config({"model_type": "olmo2", **config})


def features(args: ModelArgs) -> list[str]:
    """Llama's features plus the norm placement, for ``mlx-llm info``."""
    return [*llama.features(args), "norms after attention and feed-forward", "q/k RMSNorm over the full width"]


class Olmo2Model(llama.LlamaModel):
    """The Llama backbone with normalized sublayer outputs and full-width q/k norms."""

    def layer_options(self, args: ModelArgs, index: int, rope: nn.Module) -> dict:
        options = super().layer_options(args, index, rope)
        return {**options, "norm_first": False, "norm_output": True, "qk_norm": "width"}


class Model(llama.Model):
    """OLMo 2 causal language model (or classifier, as `llama.Model`)."""

    backbone = Olmo2Model


def convert_hf_weights(weights: dict[str, mx.array], args: ModelArgs) -> dict[str, mx.array]:
    """Hugging Face ``Olmo2ForCausalLM`` names to this file's (``post_*`` norms -> the block's norms)."""
    return llama.convert_hf_weights(weights, args, renames=_RENAMES, known=_KNOWN)


def export_hf_weights(weights: dict[str, mx.array], args: ModelArgs) -> dict[str, mx.array]:
    """The inverse of `convert_hf_weights`."""
    return llama.export_hf_weights(weights, args, renames=_RENAMES)
