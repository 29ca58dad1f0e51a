"""Model families, one file each, all built from the shared blocks.

The family interface: every family module (``models/<family>.py``) exports

- ``MODEL_TYPES``: ``{model_type: ModelType(...)}`` for each Hugging Face
  ``model_type`` it reads (each also a line in `FAMILIES`): the name shown to
  people, the transformers class prefix, and the ``config.json`` keys of the
  layer count and the width (distillation resizes students with them).
- ``ModelArgs``: a dataclass of the fields the model uses, with
  ``ModelArgs.from_config(config: dict)`` reading a Hugging Face
  ``config.json`` through an explicit key map; required keys are checked up
  front (``ValueError`` naming the missing key and ``config.json``), as is
  any invalid value. Activations are read with
  `feed_forward.hf_activation` (the one Hugging Face activation map).
  ``ModelArgs.context_length`` (a property): the longest sequence its
  positions cover, ``None`` without a limit (T5); generation and
  ``mlx-llm eval`` cut prompts and windows to it.
- ``Model``: the ``nn.Module`` built from ``ModelArgs``, with
  - ``kind``: a class attribute, `model_output.DECODER`, ``ENCODER`` or
    ``ENCODER_DECODER``; callers ask it rather than guess from methods;
  - ``forward(input_ids, attention_mask=None, cache=None, *,
    output_hidden_states=False) -> ModelOutput`` (`model_output`): ``logits``
    always, ``last_hidden_state``, and ``hidden_states`` (``num_layers + 1``
    arrays, as transformers) on request; BERT adds ``token_type_ids`` and its
    heads' outputs, T5 takes its decoder inputs (see `t5.Model.forward`);
  - ``__call__(...)``: ``forward(...).logits``, an ``mx.array`` (what
    mlx-lm-style code and the samplers expect);
  - ``make_cache(...)``: decoders one cache per layer (``left_padding``,
    ``max_kv_size``), encoder-decoders the decoder's caches; an encoder
    raises ``ValueError`` (it keeps no cache: ask ``kind`` first);
  - ``args`` (its ``ModelArgs``) and ``layers`` (the backbone's layers).
  Decoders get all of these from `heads.DecoderTaskModel`, setting its
  ``backbone`` (and overriding ``lm_logits`` where the logits are scaled).
- ``hf_architecture(model_type, task) -> str``: the transformers class that
  loads this model built for ``task`` (``ValueError`` for a task the family
  lacks); `export` and `finetune` write it into ``config.json``.
- ``convert_hf_weights(weights, args)``: Hugging Face tensor names and
  layouts to the ``Model``'s parameter names; also mlx-lm's layout, and the
  ``.scales`` / ``.biases`` of quantized layers.
- ``export_hf_weights(weights, args)``: the inverse, used to write folders
  (`mlx_llm.model_files.mlx_lm_layout`); ``export_mlx_lm_weights`` where mlx-lm's names
  or layouts differ from transformers' (GPT-2).
- ``features(args)`` (optional): short phrases that set the variant apart
  (``mlx-llm info`` prints them).
- ``language_model_config(config) -> dict`` (optional): the ``config.json`` of
  the model that loads when the checkpoint holds more (Gemma 3's multimodal
  ``gemma3``: its ``gemma3_text`` model); `loading.load_model` returns it, so
  ``convert``, ``export`` and fine-tuning write that model's folder.
- ``mlx_lm_config(config) -> dict`` (optional): the ``config.json`` written
  into an mlx-lm folder (`mlx_llm.model_files.mlx_lm_layout`), with the keys mlx-lm
  reads in another spelling or requires (GPT-2's ``n_ctx``, Qwen3-MoE's
  ``num_experts``, Gemma's soft-caps, Phi-3's LongRoPE keys).
- ``init_std(path, args) -> float`` (optional): the standard deviation of a
  freshly initialized weight (`pretrain.build_model`; GPT-2 scales its
  residual projections), 0.02 where a family has none.

``tests/test_model_contract.py`` walks `FAMILIES` and checks every module
and ``Model`` against this list.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class ModelType:
    """What the library knows of one Hugging Face ``model_type`` besides its ``ModelArgs``.

    Attributes:
        display_name: How messages name it (``"GPT-2"``, ``"Qwen2"``).
        hf_prefix: The transformers class prefix (``"GPT2"``, ``"Qwen2"``,
            ``"DistilBert"``), for ``hf_architecture``.
        layers_key: The ``config.json`` key of the number of layers.
        width_key: The ``config.json`` key of the hidden width.
    """

    display_name: str
    hf_prefix: str
    layers_key: str = "num_hidden_layers"
    width_key: str = "hidden_size"


# Hugging Face ``model_type`` -> family module.
FAMILIES: dict[str, str] = {
    "gpt2": "gpt2",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "qwen3",
    "smollm3": "smollm3",
    "olmo2": "olmo2",
    "gemma2": "gemma2",
    "gemma3_text": "gemma3",
    "gemma3": "gemma3",  # multimodal: its text model (gemma3.language_model_config)
    "phi3": "phi3",
    "granite": "granite",
    "mixtral": "mixtral",
    "qwen3_moe": "qwen3_moe",
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


def model_type_info(model_type: str | None) -> ModelType:
    """The `ModelType` of ``model_type``, from its family module's ``MODEL_TYPES``."""
    return get_family(model_type).MODEL_TYPES[model_type]


def check_required_keys(config: dict, keys: tuple[str, ...] | list[str], family: str) -> None:
    """Raise one ``ValueError`` naming every key of ``keys`` that ``config`` lacks (or holds as ``null``).

    Args:
        config: A ``config.json`` dict.
        keys: The keys without a default.
        family: How the message names the model (``"GPT-2"``, ``"qwen2"``).
    """
    missing = [key for key in keys if config.get(key) is None]
    if missing:
        raise ValueError(
            f"{family} config.json lacks {', '.join(missing)} (required, no default); "
            "add the missing key from the model's original config"
        )


def model_types_of_kind(kind: str) -> tuple[str, ...]:
    """Every ``model_type`` in `FAMILIES` whose ``Model.kind`` is ``kind`` (imports each family once)."""
    return tuple(model_type for model_type in FAMILIES if get_family(model_type).Model.kind == kind)
