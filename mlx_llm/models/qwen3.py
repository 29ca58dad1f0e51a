"""The Qwen3 family (dense): Qwen3 0.6B-32B.

A Llama-family decoder (`llama`: pre-RMSNorm blocks, rotary positions,
grouped-query attention, SwiGLU) with one change: the projected queries and
keys are RMS-normalized per head, over ``head_dim``, before rotary positions
(``q_norm``, ``k_norm``). ``head_dim`` is explicit in the config (128 in the
released models, not ``hidden_size // num_heads``), and q/k/v/o biases follow
``attention_bias`` (off in the released models).

Sliding-window attention (``use_sliding_window``, off in every released
Qwen3) is read as for Qwen2 (`llama.qwen_sliding_layers`): the window in the
layers ``layer_types`` names, or in layers ``i >= max_window_layers``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import mlx.core as mx
import mlx.nn as nn

from . import ModelType, llama

MODEL_TYPES = {"qwen3": ModelType("Qwen3", "Qwen3")}
hf_architecture = llama.hf_architecture  # Qwen3ForCausalLM, Qwen3ForSequenceClassification, ...

_KNOWN = llama._KNOWN + ("self_attn.q_norm.", "self_attn.k_norm.")


@dataclass
class ModelArgs(llama.ModelArgs):
    """`llama.ModelArgs`, read from a Qwen3 ``config.json``."""

    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        """Read a Qwen3 config (transformers 4.x ``rope_theta`` or 5.x ``rope_parameters``;
        ``max_position_embeddings`` 32768 when absent, as ``Qwen3Config``).

        Raises:
            ValueError: naming missing keys, or an invalid ``layer_types``.
        """
        config = {"model_type": "qwen3", "max_position_embeddings": 32768, **config}
        args = super().from_config(config)
        windows = llama.window_fields(*llama.qwen_sliding_layers(config), args.max_positions)
        return replace(args, **windows)


def features(args: ModelArgs) -> list[str]:
    """Llama's features plus the query/key norms, for ``mlx-llm info``."""
    return [*llama.features(args), f"per-head q/k RMSNorm (head_dim {args.head_dim})"]


class Qwen3Model(llama.LlamaModel):
    """The Llama backbone with per-head query and key RMSNorm."""

    def layer_options(self, args: ModelArgs, index: int, rope: nn.Module) -> dict:
        return {**super().layer_options(args, index, rope), "qk_norm": "head"}


class Model(llama.Model):
    """Qwen3 causal language model (or classifier, as `llama.Model`)."""

    backbone = Qwen3Model


def convert_hf_weights(weights: dict[str, mx.array], args: ModelArgs) -> dict[str, mx.array]:
    """Hugging Face ``Qwen3ForCausalLM`` names to this file's (Llama's map plus ``q_norm``/``k_norm``)."""
    return llama.convert_hf_weights(weights, args, known=_KNOWN)


def export_hf_weights(weights: dict[str, mx.array], args: ModelArgs) -> dict[str, mx.array]:
    """The inverse of `convert_hf_weights`."""
    return llama.export_hf_weights(weights, args)
