"""Model families, one file each, all built from the shared blocks.

Every family module exports the same small interface:

- ``ModelArgs``: a dataclass of the fields the model uses, with
  ``ModelArgs.from_config(config: dict)`` reading a Hugging Face
  ``config.json`` through an explicit key map (``ValueError`` naming any
  invalid value).
- ``Model``: the ``nn.Module`` built from ``ModelArgs``.
- ``convert_hf_weights(weights, args)``: Hugging Face tensor names and
  layouts to the ``Model``'s parameter names; also mlx-lm's layout, and the
  ``.scales`` / ``.biases`` of quantized layers.
- ``export_hf_weights(weights, args)``: the inverse, used to write folders
  (`mlx_llm.mlx_lm_layout`); ``export_mlx_lm_weights`` where mlx-lm's names
  or layouts differ from transformers' (GPT-2).
- ``features(args)`` (optional): short phrases that set the variant apart
  (``mlx-llm info`` prints them).
"""

from __future__ import annotations

import importlib
from types import ModuleType

# Hugging Face ``model_type`` -> family module.
FAMILIES: dict[str, str] = {
    "gpt2": "gpt2",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "qwen3",
    "smollm3": "smollm3",
    "olmo2": "olmo2",
    "bert": "bert",
    "roberta": "bert",
    "distilbert": "bert",
    "t5": "t5",
}


def get_family(model_type: str | None) -> ModuleType:
    """The family module that implements ``model_type``."""
    if model_type not in FAMILIES:
        raise ValueError(
            f"unsupported model_type {model_type!r} in config.json; supported model types: "
            f"{', '.join(sorted(FAMILIES))}"
        )
    return importlib.import_module(f"{__name__}.{FAMILIES[model_type]}")
