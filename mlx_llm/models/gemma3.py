"""The Gemma 3 family (text): Gemma 3 270M, 1B, and the text model of the larger ones.

Gemma 2's backbone (`gemma2`: scaled embeddings, ``(1 + w)`` sandwich
RMSNorms, GeGLU, ``query_pre_attn_scalar``, sliding-window and global layers)
with these changes:

- queries and keys are RMS-normalized per head (``(1 + w)`` norms over
  ``head_dim``) before rotary positions;
- no soft-capping by default (``attn_logit_softcapping`` and
  ``final_logit_softcapping`` are ``null`` in the released models);
- five sliding-window layers for each global one (``sliding_window_pattern``
  6, or ``layer_types``);
- each kind of layer has its own rotary base: ``rope_local_base_freq``
  (10,000) for the sliding layers, ``rope_theta`` (1,000,000) with the
  config's rope scaling (linear in the 4B-27B models) for the global ones.
  transformers 5 writes both as ``rope_parameters`` keyed by layer type.

A multimodal ``gemma3`` ``config.json`` (its text model under ``text_config``)
is refused: convert the text model alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import mlx.core as mx
import mlx.nn as nn

from . import ModelType, gemma2, llama
from .gemma2 import common_fields, read_rope

MODEL_TYPES = {"gemma3_text": ModelType("Gemma 3", "Gemma3")}
KNOWN = gemma2.KNOWN + ("self_attn.q_norm.", "self_attn.k_norm.")


@dataclass
class ModelArgs(gemma2.ModelArgs):
    """`gemma2.ModelArgs` plus the sliding layers' own rotary base and scaling."""

    local_rope_theta: float = 10000.0
    local_rope_scaling: dict | None = None

    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        """Read a Gemma 3 text ``config.json``: transformers 5's ``rope_parameters``
        (``full_attention`` / ``sliding_attention``) or 4.x's ``rope_theta``,
        ``rope_local_base_freq`` and ``rope_scaling``; ``layer_types`` or
        ``sliding_window_pattern``.

        Raises:
            ValueError: naming missing keys or an unsupported value, or for a
                multimodal config.
        """
        if "text_config" in config:
            raise ValueError(
                f"config.json describes the multimodal {config.get('model_type', 'gemma3')} model (text_config with a "
                "vision tower); only Gemma 3 text models (model_type gemma3_text, e.g. google/gemma-3-1b-it) are supported"
            )
        config = {"model_type": "gemma3_text", **config}
        model_type = config["model_type"]
        parameters = config.get("rope_parameters") or {}
        if "full_attention" in parameters or "sliding_attention" in parameters:
            global_rope = parameters.get("full_attention") or {"rope_theta": 1_000_000.0}
            local_rope = parameters.get("sliding_attention") or {"rope_theta": 10_000.0}
        else:
            global_rope = {**(config.get("rope_scaling") or {}), "rope_theta": config.get("rope_theta", 1_000_000.0)}
            local_rope = {"rope_theta": config.get("rope_local_base_freq", 10_000.0)}
        theta, scaling = read_rope(global_rope, model_type)
        local_theta, local_scaling = read_rope(local_rope, model_type)
        pattern = config.get("sliding_window_pattern") or config.get("_sliding_window_pattern") or 6
        fields = common_fields({"max_position_embeddings": 131_072, **config}, pattern=pattern, softcaps=(None, None))
        return cls(**fields, rope_theta=theta, rope_scaling=scaling, local_rope_theta=local_theta,
                   local_rope_scaling=local_scaling)


def hf_architecture(model_type: str, task: str) -> str:
    """``Gemma3ForCausalLM`` or ``Gemma3TextForSequenceClassification`` (transformers has
    no Gemma 3 token classifier)."""
    classes = {"causal_lm": "Gemma3ForCausalLM", "sequence_classification": "Gemma3TextForSequenceClassification"}
    if task not in classes:
        raise ValueError(f"{model_type} models have no {task!r} task in transformers; choose one of {tuple(classes)}")
    return classes[task]


def features(args: ModelArgs) -> list[str]:
    """Gemma 2's features with the query/key norms and both rotary bases, for ``mlx-llm info``."""
    found = [feature for feature in gemma2.features(args) if not feature.startswith("rotary positions")]
    local = f", {args.local_rope_scaling['rope_type']} scaling" if args.local_rope_scaling else ""
    found += [f"per-head q/k (1 + w) RMSNorm (head_dim {args.head_dim})",
              f"{gemma2.rope_feature(args)} in global layers, theta {args.local_rope_theta:g}{local} in sliding ones"]
    return found


class Gemma3Model(gemma2.GemmaModel):
    """Gemma 2's backbone with per-head query/key norms and a rotary base per layer kind."""

    def local_rope(self, args: ModelArgs) -> nn.Module:
        return llama.make_rope(replace(args, rope_theta=args.local_rope_theta, rope_scaling=args.local_rope_scaling))

    def layer_options(self, args: ModelArgs, index: int, rope: nn.Module) -> dict:
        return {**super().layer_options(args, index, rope), "qk_norm": "head"}


class Model(gemma2.Model):
    """Gemma 3 causal language model (or classifier, as `llama.Model`)."""

    backbone = Gemma3Model


def convert_hf_weights(weights: dict[str, mx.array], args: ModelArgs) -> dict[str, mx.array]:
    """Hugging Face ``Gemma3ForCausalLM`` names to this file's (Gemma 2's map plus ``q_norm``/``k_norm``)."""
    return llama.convert_hf_weights(weights, args, renames=gemma2.RENAMES, known=KNOWN)


def export_hf_weights(weights: dict[str, mx.array], args: ModelArgs) -> dict[str, mx.array]:
    """The inverse of `convert_hf_weights`."""
    return llama.export_hf_weights(weights, args, renames=gemma2.RENAMES)


def sliding_window_pattern(sliding_layers: tuple[bool, ...]) -> int | None:
    """The period ``p`` with layer ``i`` global exactly when ``(i + 1) % p == 0`` (mlx-lm's
    and transformers 4.x's ``sliding_window_pattern``), or ``None`` when the layers follow none."""
    for period in range(1, len(sliding_layers) + 2):
        if all(sliding == ((index + 1) % period != 0) for index, sliding in enumerate(sliding_layers)):
            return period
    return None


def mlx_lm_config(config: dict) -> dict:
    """``config`` with the keys mlx-lm's ``gemma3_text`` reads: ``rope_theta``,
    ``rope_local_base_freq``, ``rope_scaling`` and ``sliding_window_pattern`` (transformers 5
    writes ``rope_parameters`` by layer type, and ``layer_types``)."""
    args = ModelArgs.from_config(config)
    written = {**config, "rope_theta": args.rope_theta, "rope_local_base_freq": args.local_rope_theta,
               "rope_scaling": args.rope_scaling, "query_pre_attn_scalar": config.get("query_pre_attn_scalar", 256)}
    pattern = sliding_window_pattern(args.sliding_layers)
    if pattern is not None:
        written["sliding_window_pattern"] = pattern
    return written
