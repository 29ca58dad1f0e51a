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

A multimodal ``gemma3`` checkpoint (``Gemma3ForConditionalGeneration``: the text
model's settings under ``text_config``, a vision tower and a projector) loads as
its text model: `language_model_config` fills the text config as transformers'
``Gemma3TextConfig`` does, and `convert_hf_weights` takes the language model's
tensors (``language_model.model.*`` as transformers 5 and mlx-lm store them,
``model.language_model.*`` as transformers 4.52+) and skips the vision ones,
saying so on stderr. Its logits are ``Gemma3ForConditionalGeneration``'s for
text-only input; ``convert`` and ``export`` write a ``gemma3_text`` folder.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

import mlx.core as mx
import mlx.nn as nn

from . import ModelType, gemma2, llama
from .gemma2 import common_fields, read_rope

MODEL_TYPES = {"gemma3_text": ModelType("Gemma 3", "Gemma3"), "gemma3": ModelType("Gemma 3 (multimodal)", "Gemma3")}
KNOWN = gemma2.KNOWN + ("self_attn.q_norm.", "self_attn.k_norm.")

# Gemma3TextConfig's defaults (transformers 5.25, models/gemma3/configuration_gemma3.py) of the keys a
# multimodal config's text_config may leave out (google/gemma-3-4b-it's lists only five); the rope
# bases and sliding_window_pattern default in `ModelArgs.from_config`, as for a text config.
TEXT_CONFIG_DEFAULTS = {
    "vocab_size": 262_208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 131_072, "rms_norm_eps": 1e-6, "attention_bias": False, "query_pre_attn_scalar": 256,
    "sliding_window": 4096, "attn_logit_softcapping": None, "final_logit_softcapping": None,
    "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2,
}
# Keys of a multimodal config.json that describe the image side; the others apply to its text model
# too (quantization, dtype, a task's labels), below text_config's own, except `OUTER_KEYS`.
MULTIMODAL_KEYS = ("text_config", "vision_config", "mm_tokens_per_image", "boi_token_index", "eoi_token_index",
                   "image_token_index")
# Outer keys that win over text_config's: Gemma3ForConditionalGeneration ties by the outer
# tie_word_embeddings (default true), and Hub configs name the end tokens there.
OUTER_KEYS = ("tie_word_embeddings", "bos_token_id", "eos_token_id")
TEXT_ARCHITECTURES = {"Gemma3ForConditionalGeneration": "Gemma3ForCausalLM"}  # a task's own class is kept
# A multimodal checkpoint's tensor name prefixes: the language model's (-> Gemma3ForCausalLM's), and the skipped.
LANGUAGE_MODEL_PREFIXES = {"language_model.model.": "model.", "language_model.lm_head.": "lm_head.",
                           "model.language_model.": "model."}
VISION_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")


def language_model_config(config: dict) -> dict:
    """The ``config.json`` of the model that loads: a text config as it is; for a multimodal
    ``gemma3`` config, a ``gemma3_text`` one: `TEXT_CONFIG_DEFAULTS`, under the outer keys but
    `MULTIMODAL_KEYS`, under ``text_config``, under `OUTER_KEYS` (``tie_word_embeddings`` true
    when absent), ``Gemma3ForConditionalGeneration`` read as ``Gemma3ForCausalLM``."""
    if "text_config" not in config:
        return config
    outer = {key: value for key, value in config.items() if key not in MULTIMODAL_KEYS}
    text = {**TEXT_CONFIG_DEFAULTS, **outer, **(config["text_config"] or {}),
            **{key: config[key] for key in OUTER_KEYS if key in config}}
    architectures = config.get("architectures") or ["Gemma3ForConditionalGeneration"]
    text.update(model_type="gemma3_text", architectures=[TEXT_ARCHITECTURES.get(name, name) for name in architectures],
                tie_word_embeddings=config.get("tie_word_embeddings", True))
    return text


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
        ``sliding_window_pattern``; a multimodal config's text model (`language_model_config`).

        Raises:
            ValueError: naming missing keys or an unsupported value.
        """
        config = {"model_type": "gemma3_text", **language_model_config(config)}
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


def text_weights(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """A multimodal checkpoint's language model tensors under ``Gemma3ForCausalLM``'s names
    (`LANGUAGE_MODEL_PREFIXES`), without the vision tower's and projector's (one line on
    stderr says so); a text checkpoint's tensors as they are."""
    kept: dict[str, mx.array] = {}
    skipped = 0
    for name, tensor in weights.items():
        if name.startswith(VISION_PREFIXES):
            skipped += 1
            continue
        prefix = next((prefix for prefix in LANGUAGE_MODEL_PREFIXES if name.startswith(prefix)), None)
        kept[name if prefix is None else LANGUAGE_MODEL_PREFIXES[prefix] + name[len(prefix):]] = tensor
    if skipped:
        print(f"gemma3: multimodal checkpoint, loading its text model only ({skipped} vision_tower / "
              "multi_modal_projector tensors skipped); convert and export write a gemma3_text folder", file=sys.stderr)
    return kept


def convert_hf_weights(weights: dict[str, mx.array], args: ModelArgs) -> dict[str, mx.array]:
    """Hugging Face ``Gemma3ForCausalLM`` names to this file's (Gemma 2's map plus ``q_norm``/``k_norm``);
    a multimodal checkpoint's language model first (`text_weights`)."""
    return llama.convert_hf_weights(text_weights(weights), args, renames=gemma2.RENAMES, known=KNOWN)


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
