"""The BERT family's Hugging Face weight names: `convert_hf_weights` maps a
BERT, RoBERTa or DistilBERT checkpoint (and mlx-lm-style quantized tensors)
onto `mlx_llm.models.bert.Model`'s parameters, `export_hf_weights` back."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import mlx.core as mx

if TYPE_CHECKING:
    from .bert import ModelArgs

# Per-layer modules, relative to ``encoder.layer.N.`` (BERT, RoBERTa) or ``transformer.layer.N.`` (DistilBERT).
BERT_LAYER_NAMES = {
    "attention.self.query": "self_attn.q_proj",
    "attention.self.key": "self_attn.k_proj",
    "attention.self.value": "self_attn.v_proj",
    "attention.output.dense": "self_attn.o_proj",
    "attention.output.LayerNorm": "self_attn_norm",
    "intermediate.dense": "feed_forward.up_proj",
    "output.dense": "feed_forward.down_proj",
    "output.LayerNorm": "feed_forward_norm",
}
DISTILBERT_LAYER_NAMES = {
    "attention.q_lin": "self_attn.q_proj",
    "attention.k_lin": "self_attn.k_proj",
    "attention.v_lin": "self_attn.v_proj",
    "attention.out_lin": "self_attn.o_proj",
    "sa_layer_norm": "self_attn_norm",
    "ffn.lin1": "feed_forward.up_proj",
    "ffn.lin2": "feed_forward.down_proj",
    "output_layer_norm": "feed_forward_norm",
}

# Backbone modules, after the ``bert.`` / ``roberta.`` / ``distilbert.`` prefix is removed.
EMBEDDING_NAMES = {
    "embeddings.word_embeddings": "model.embeddings.word_embeddings",
    "embeddings.position_embeddings": "model.embeddings.position_embeddings.embedding",
    "embeddings.token_type_embeddings": "model.embeddings.token_type_embeddings",
    "embeddings.LayerNorm": "model.embeddings.norm",
    "pooler.dense": "model.pooler.dense",
}

# Head modules. "DECODER" marks the MLM output projection: its weight is the tied
# word embedding (dropped) unless untied, and its bias is the head's bias.
HEAD_NAMES = {
    "bert": {
        "cls.predictions.transform.dense": "mlm_head.dense",
        "cls.predictions.transform.LayerNorm": "mlm_head.norm",
        "cls.predictions": "mlm_head",
        "cls.predictions.decoder": "DECODER",
        "cls.seq_relationship": "nsp_head",
        "classifier": "classifier",
    },
    "roberta": {
        "lm_head.dense": "mlm_head.dense",
        "lm_head.layer_norm": "mlm_head.norm",
        "lm_head": "mlm_head",
        "lm_head.decoder": "DECODER",
        "classifier": "classifier",
        "classifier.dense": "classifier.dense",
        "classifier.out_proj": "classifier.out_proj",
    },
    "distilbert": {
        "vocab_transform": "mlm_head.dense",
        "vocab_layer_norm": "mlm_head.norm",
        "vocab_projector": "DECODER",
        "pre_classifier": "classifier.dense",
        "classifier": "classifier",
    },
}

BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
LAYER_PATTERN = re.compile(r"(?:encoder|transformer)\.layer\.(\d+)\.(.+)")


def _built_modules(args: ModelArgs) -> tuple[str, ...]:
    """Name prefixes of the parameters `Model(args)` has."""
    modules = ["model.embeddings.", "model.layers."]
    if args.add_pooling_layer:
        modules.append("model.pooler.")
    if args.has_mlm_head:
        modules.append("mlm_head.")
    if args.has_nsp_head:
        modules.append("nsp_head.")
    if args.has_classifier:
        modules.append("classifier.")
    return tuple(modules)


def _target_name(name: str, module: str, kind: str, args: ModelArgs) -> str | None:
    """This file's name for the HF tensor ``name`` (``module`` + ``.kind``), ``None`` to drop it.

    Raises:
        ValueError: naming a tensor this family does not know.
    """
    unknown = ValueError(
        f"unknown {args.model_type} tensor {name!r} in checkpoint; it matches no module of a "
        f"{args.model_type} model (task {args.task!r})"
    )
    quantized = kind in ("scales", "biases")  # next to the weight of a quantized layer (folders written here)
    if kind not in ("weight", "bias") and not quantized:
        raise unknown
    if module in EMBEDDING_NAMES:
        return f"{EMBEDDING_NAMES[module]}.{kind}"
    layer = LAYER_PATTERN.fullmatch(module)
    if layer is not None:
        distilbert = args.model_type == "distilbert"
        names = DISTILBERT_LAYER_NAMES if distilbert else BERT_LAYER_NAMES
        if module.startswith("transformer.") != distilbert or layer[2] not in names:
            raise unknown
        return f"model.layers.{layer[1]}.{names[layer[2]]}.{kind}"
    target = HEAD_NAMES[args.model_type].get(module)
    if target is None or target == "mlm_head" and kind != "bias":
        raise unknown
    if target == "DECODER":
        if kind == "bias":
            return "mlm_head.bias"
        return None if args.tie_word_embeddings else f"mlm_head.decoder.{kind}"
    if module == "classifier" and args.model_type == "distilbert" and args.task == "sequence_classification":
        target = "classifier.out_proj"  # DistilBERT's pre_classifier + classifier form one head here
    return f"{target}.{kind}"


def convert_hf_weights(weights: dict[str, mx.array], args: ModelArgs) -> dict[str, mx.array]:
    """Map Hugging Face BERT / RoBERTa / DistilBERT tensors to this file's modules.

    Accepts checkpoints of task models (``bert.``, ``roberta.``,
    ``distilbert.`` prefixes) and of bare backbones (no prefix), and old
    LayerNorm names ``gamma`` / ``beta``. Buffers (``position_ids``), the
    tied MLM decoder weight, and tensors of heads ``args`` does not build
    (e.g. the pooler and NSP head of a pretraining checkpoint loaded for
    masked LM, as transformers does) are dropped. No transposes: HF linear
    weights are ``(out, in)`` like MLX's.

    Raises:
        ValueError: naming a tensor this family does not know.
    """
    prefix = f"{args.model_type}."
    built = _built_modules(args)
    converted: dict[str, mx.array] = {}
    decoder_biases: dict[str, mx.array] = {}  # older checkpoints also store the tied decoder bias
    for name, tensor in weights.items():
        key = name.removeprefix(prefix)
        if key in BUFFERS:
            continue
        module, _, kind = key.rpartition(".")
        kind = {"gamma": "weight", "beta": "bias"}.get(kind, kind)
        target = _target_name(name, module, kind, args)
        if target is None or not target.startswith(built):
            continue
        if kind == "bias" and module.endswith(".decoder"):
            decoder_biases[target] = tensor
            continue
        converted[target] = tensor
    for target, tensor in decoder_biases.items():
        converted.setdefault(target, tensor)
    return converted


def export_hf_weights(weights: dict[str, mx.array], args: ModelArgs) -> dict[str, mx.array]:
    """The inverse of `convert_hf_weights`: this file's names to the ones the
    matching transformers class (``ARCHITECTURES``) loads, with the
    ``bert.`` / ``roberta.`` / ``distilbert.`` prefix on the backbone of task models."""
    prefix = "" if args.task == "base" else f"{args.model_type}."
    distilbert = args.model_type == "distilbert"
    layer_root = "transformer.layer" if distilbert else "encoder.layer"
    layer_names = {ours: theirs for theirs, ours in (DISTILBERT_LAYER_NAMES if distilbert else BERT_LAYER_NAMES).items()}
    embedding_names = {ours: theirs for theirs, ours in EMBEDDING_NAMES.items()}
    head_names = {ours: theirs for theirs, ours in HEAD_NAMES[args.model_type].items() if ours != "DECODER"}
    decoder = {"bert": "cls.predictions.decoder", "roberta": "lm_head.decoder", "distilbert": "vocab_projector"}
    if distilbert:
        head_names["mlm_head"] = "vocab_projector"  # its bias is the projector's
        if args.task == "sequence_classification":
            head_names["classifier.out_proj"] = "classifier"
    exported: dict[str, mx.array] = {}
    for name, tensor in weights.items():
        module, _, kind = name.rpartition(".")
        if module.startswith("model.layers."):
            index, _, rest = module.removeprefix("model.layers.").partition(".")
            exported[f"{prefix}{layer_root}.{index}.{layer_names[rest]}.{kind}"] = tensor
        elif module in embedding_names:
            exported[f"{prefix}{embedding_names[module]}.{kind}"] = tensor
        elif module == "mlm_head.decoder":
            exported[f"{decoder[args.model_type]}.{kind}"] = tensor
        elif module in head_names:
            exported[f"{head_names[module]}.{kind}"] = tensor
        else:
            raise ValueError(f"no transformers name for {args.model_type} tensor {name!r}")
    return exported
