"""T5's Hugging Face weight names: `convert_hf_weights` maps a
``T5ForConditionalGeneration`` checkpoint (and mlx-lm-style quantized tensors)
onto `mlx_llm.models.t5.Model`'s parameters, `export_hf_weights` back."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import mlx.core as mx

if TYPE_CHECKING:
    from .t5 import ModelArgs

# Hugging Face name patterns -> Model names. ``{i}`` is the block index.
_ATTENTION_NAMES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"}
_FEED_FORWARD_NAMES = {"wi": "up_proj", "wi_0": "gate_proj", "wi_1": "up_proj", "wo": "down_proj"}
# (stack, sublayer index) -> the shared layer's module for that sublayer.
_SUBLAYERS = {
    ("encoder", "0"): ("self_attn", "SelfAttention"),
    ("encoder", "1"): ("feed_forward", "DenseReluDense"),
    ("decoder", "0"): ("self_attn", "SelfAttention"),
    ("decoder", "1"): ("cross_attn", "EncDecAttention"),
    ("decoder", "2"): ("feed_forward", "DenseReluDense"),
}
_LAYER_PATTERN = re.compile(
    r"(encoder|decoder)\.block\.(\d+)\.layer\.(\d+)\."
    r"(?:(layer_norm)|(SelfAttention|EncDecAttention|DenseReluDense)\.(\w+))\.weight"
)
# Copies of ``shared.weight`` kept by some writers; dropped (lm_head only when tied).
_TIED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
# transformers ignores this one too: cross-attention never had a position bias.
_UNUSED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


def _convert_name(name: str, args: ModelArgs) -> str:
    if name == "shared.weight":
        return "shared.weight"
    if name == "lm_head.weight" and not args.tie_word_embeddings:
        return "lm_head.weight"
    if name in ("encoder.final_layer_norm.weight", "decoder.final_layer_norm.weight"):
        return f"{name.split('.')[0]}.norm.weight"
    match = _LAYER_PATTERN.fullmatch(name)
    if match is None:
        raise ValueError(f"unknown T5 weight {name!r}: no Model parameter corresponds to it")
    stack, block, sublayer, is_norm, module, leaf = match.groups()
    num_layers = args.num_encoder_layers if stack == "encoder" else args.num_decoder_layers
    if int(block) >= num_layers or (stack, sublayer) not in _SUBLAYERS:
        raise ValueError(
            f"unknown T5 weight {name!r}: the config has {num_layers} {stack} layers of "
            f"{2 if stack == 'encoder' else 3} sublayers"
        )
    target, hf_module = _SUBLAYERS[(stack, sublayer)]
    prefix = f"{stack}.layers.{block}"
    if is_norm:
        return f"{prefix}.{target}_norm.weight"
    if module != hf_module:
        raise ValueError(f"unknown T5 weight {name!r}: {stack} sublayer {sublayer} is {hf_module}, not {module}")
    if leaf == "relative_attention_bias" and module == "SelfAttention" and block == "0":
        return f"{stack}_position_bias.embedding.weight"
    if module == "DenseReluDense":
        known = ("wi_0", "wi_1", "wo") if args.gated else ("wi", "wo")
        if leaf not in known:
            kind = "gated" if args.gated else "non-gated"
            raise ValueError(
                f"unknown T5 weight {name!r}: a {kind} feed-forward (feed_forward_proj) has "
                f"{', '.join(known)}"
            )
        return f"{prefix}.{target}.{_FEED_FORWARD_NAMES[leaf]}.weight"
    if leaf not in _ATTENTION_NAMES:
        raise ValueError(f"unknown T5 weight {name!r}: {module} has q, k, v and o (and a position bias in block 0)")
    return f"{prefix}.{target}.{_ATTENTION_NAMES[leaf]}.weight"


def convert_hf_weights(weights: dict[str, mx.array], args: ModelArgs) -> dict[str, mx.array]:
    """Rename Hugging Face T5 tensors to `Model` parameter names.

    Copies of the token embeddings (``encoder.embed_tokens``,
    ``decoder.embed_tokens``, and ``lm_head`` when the head is tied) are
    dropped, as is the cross-attention position bias some old checkpoints
    carry and transformers ignores. Layouts need no change: Hugging Face
    ``nn.Linear`` and MLX ``nn.Linear`` both store ``(out, in)``.

    Args:
        weights: Tensors by Hugging Face name (``T5ForConditionalGeneration``).
        args: The model's `ModelArgs`.

    Returns:
        Tensors by `Model` parameter name.

    Raises:
        ValueError: For a tensor name the map does not know, a missing
            embedding or ``lm_head``, or an ``lm_head`` that a tied config
            would silently ignore although it differs from the embeddings.
    """
    converted: dict[str, mx.array] = {}
    for name, tensor in weights.items():
        module, _, kind = name.rpartition(".")  # a quantized layer's .scales and .biases sit beside its weight
        weight_name = f"{module}.weight" if kind in ("scales", "biases") else name
        if weight_name in _TIED_COPIES or weight_name in _UNUSED:
            continue
        if weight_name == "lm_head.weight" and args.tie_word_embeddings:
            continue  # checked against the embeddings below
        converted[_convert_name(weight_name, args).removesuffix("weight") + kind] = tensor
    if "shared.weight" not in converted:
        copies = [name for name in _TIED_COPIES if name in weights]
        if not copies:
            raise ValueError("the T5 checkpoint has no token embeddings (shared.weight or encoder.embed_tokens.weight)")
        converted["shared.weight"] = weights[copies[0]]
    if args.tie_word_embeddings and "lm_head.weight" in weights:
        if not mx.array_equal(weights["lm_head.weight"], converted["shared.weight"]).item():
            raise ValueError(
                "config.json ties the output head to the embeddings (tie_word_embeddings: true), but the "
                "checkpoint's lm_head.weight differs from shared.weight; set \"tie_word_embeddings\": "
                "false in config.json to use the separate head"
            )
    if not args.tie_word_embeddings and "lm_head.weight" not in converted:
        raise ValueError(
            "config.json has tie_word_embeddings: false, but the checkpoint has no lm_head.weight; "
            "set \"tie_word_embeddings\": true if the head shares the embeddings"
        )
    return converted


def export_hf_weights(weights: dict[str, mx.array], args: ModelArgs) -> dict[str, mx.array]:
    """The inverse of `convert_hf_weights` (the embeddings once, as ``shared``; quantized
    layers keep their ``.scales`` and ``.biases``); ``ValueError`` for an unknown tensor."""
    leaves = {"up_proj": "wi_1" if args.gated else "wi", "gate_proj": "wi_0", "down_proj": "wo",
              **{ours: theirs for theirs, ours in _ATTENTION_NAMES.items()}}
    sublayers = {(stack, target): (index, hf_module) for (stack, index), (target, hf_module) in _SUBLAYERS.items()}
    exported: dict[str, mx.array] = {}
    for name, tensor in weights.items():
        module, _, kind = name.rpartition(".")
        stack, _, rest = module.partition(".")
        if module in ("shared", "lm_head"):
            exported[name] = tensor
        elif rest == "norm":
            exported[f"{stack}.final_layer_norm.{kind}"] = tensor
        elif module.endswith("_position_bias.embedding"):
            exported[f"{stack.split('_')[0]}.block.0.layer.0.SelfAttention.relative_attention_bias.{kind}"] = tensor
        elif rest.startswith("layers."):
            _, block, part = rest.split(".", 2)
            target, _, leaf = part.partition(".")
            index, hf_module = sublayers[(stack, target.removesuffix("_norm"))]
            hf_module = "layer_norm" if target.endswith("_norm") else f"{hf_module}.{leaves[leaf]}"
            exported[f"{stack}.block.{block}.layer.{index}.{hf_module}.{kind}"] = tensor
        else:
            raise ValueError(f"no transformers name for T5 tensor {name!r}")
    return exported
