"""The Qwen3 family (dense): Qwen3 0.6B-32B.

A Llama-family decoder (`llama`: pre-RMSNorm blocks, rotary positions,
grouped-query attention, SwiGLU) with one change: the projected queries and
keys are RMS-normalized per head, over ``head_dim``, before rotary positions
(``q_norm``, ``k_norm``). ``head_dim`` is explicit in the config (128 in the
released models, not ``hidden_size // num_heads``), and q/k/v/o biases follow
``attention_bias`` (off in the released models).

Sliding-window attention (``use_sliding_window``, off in every released
Qwen3) is refused with a clear error rather than run as full attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from . import ModelType, llama

MODEL_TYPES = {"qwen3": ModelType("Qwen3", "Qwen3")}
hf_architecture = llama.hf_architecture  # Qwen3ForCausalLM, Qwen3ForSequenceClassification, ...

_KNOWN = llama._KNOWN + ("self_attn.q_norm.", "self_attn.k_norm.")


def sliding_layers(config: dict) -> list[int]:
    """Indices of the layers a Qwen3-style ``config.json`` gives sliding-window attention."""
    if not config.get("use_sliding_window") or config.get("sliding_window") is None:
        return []
    num_layers = config["num_hidden_layers"]
    layer_types = config.get("layer_types")
    if layer_types is not None:
        return [index for index, kind in enumerate(layer_types) if kind == "sliding_attention"]
    return list(range(config.get("max_window_layers", num_layers), num_layers))


@dataclass
class ModelArgs(llama.ModelArgs):
    """`llama.ModelArgs`, read from a Qwen3 ``config.json``."""

    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        """Read a Qwen3 config (transformers 4.x ``rope_theta`` or 5.x ``rope_parameters``).

        Raises:
            ValueError: naming missing keys, or when sliding-window attention is on.
        """
        args = super().from_config({"model_type": "qwen3", **config})
        sliding = sliding_layers(config)
        if sliding:
            raise ValueError(
                f"{args.model_type} config.json turns on sliding-window attention (window "
                f"{config['sliding_window']}) in layers {sliding}; it is not supported: set "
                "use_sliding_window to false to run every layer with full attention"
            )
        return args


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
