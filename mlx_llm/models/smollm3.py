"""The SmolLM3 family: SmolLM3 3B.

A Llama-family decoder (`llama`) in which some layers attend without rotary
positions ("NoPE" layers). ``no_rope_layers`` lists one flag per layer:
1 = the layer uses rotary positions, 0 = it does not (transformers'
``SmolLM3Attention.use_rope``). When the config has no list,
``no_rope_layer_interval`` (default 4) makes every 4th layer (indices 3, 7, ...)
a NoPE layer, as transformers does.

Sliding-window attention (off in the released model) is read as transformers
reads it: ``sliding_window`` (default null) in the layers ``layer_types`` names
``"sliding_attention"``; without ``layer_types``, in the NoPE layers when
``use_sliding_window`` is true, as ``SmolLM3Config`` fills it in
(`llama.sliding_flags`). Each windowed layer gets its own mask and a rotating
cache of ``W`` positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from . import ModelType, llama

MODEL_TYPES = {"smollm3": ModelType("SmolLM3", "SmolLM3")}
hf_architecture = llama.hf_architecture  # SmolLM3ForCausalLM, SmolLM3ForSequenceClassification, ...


@dataclass
class ModelArgs(llama.ModelArgs):
    """`llama.ModelArgs` plus which layers use rotary positions."""

    rope_layers: tuple[bool, ...] = ()  # one flag per layer, True = rotary positions

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.rope_layers) != self.num_layers:
            raise ValueError(
                f"{self.model_type} no_rope_layers has {len(self.rope_layers)} entries for {self.num_layers} layers"
            )

    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        """Read a SmolLM3 config (transformers 4.x ``rope_theta`` or 5.x ``rope_parameters``;
        ``max_position_embeddings`` 32768 when absent, as ``SmolLM3Config``).

        Raises:
            ValueError: naming missing keys, a ``no_rope_layers`` of the wrong length, or a
                ``layer_types`` that is invalid or names sliding layers without a window.
        """
        base = llama.ModelArgs.from_config({"model_type": "smollm3", "max_position_embeddings": 32768, **config})
        flags = config.get("no_rope_layers")
        if flags is None:
            interval = config.get("no_rope_layer_interval", 4)
            flags = [(index + 1) % interval != 0 for index in range(base.num_layers)]
        # use_sliding_window only fills in layer_types: transformers' masks and caches (eager, sdpa)
        # window the layers layer_types names, with or without it.
        window = config.get("sliding_window")
        slides = config.get("use_sliding_window", False) and window is not None
        layer_types = config.get("layer_types") or [
            "sliding_attention" if slides and not uses_rope else "full_attention" for uses_rope in flags]
        sliding = llama.sliding_flags(layer_types, window, base.num_layers, "smollm3")
        windows = llama.window_fields(window, sliding, base.max_positions)
        return cls(**{**vars(base), **windows}, rope_layers=tuple(bool(flag) for flag in flags))


def features(args: ModelArgs) -> list[str]:
    """Llama's features plus the layers without positions, for ``mlx-llm info``."""
    nope = [index for index, uses_rope in enumerate(args.rope_layers) if not uses_rope]
    return [*llama.features(args), f"no rotary positions in layers {nope}" if nope else "rotary positions in every layer"]


class SmolLM3Model(llama.LlamaModel):
    """The Llama backbone; NoPE layers get no rotary embedding."""

    def layer_options(self, args: ModelArgs, index: int, rope: nn.Module) -> dict:
        return {**super().layer_options(args, index, rope), "rope": rope if args.rope_layers[index] else None}


class Model(llama.Model):
    """SmolLM3 causal language model (or classifier, as `llama.Model`)."""

    backbone = SmolLM3Model


def convert_hf_weights(weights: dict[str, mx.array], args: ModelArgs) -> dict[str, mx.array]:
    """Hugging Face ``SmolLM3ForCausalLM`` names to this file's (Llama's map)."""
    return llama.convert_hf_weights(weights, args)


def export_hf_weights(weights: dict[str, mx.array], args: ModelArgs) -> dict[str, mx.array]:
    """The inverse of `convert_hf_weights`."""
    return llama.export_hf_weights(weights, args)
