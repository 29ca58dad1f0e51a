"""Students for distillation: built from the teacher's own layers or fresh from a config.

A student copied from the teacher keeps a subset of its layers (every other
one by default, as DistilBERT) with embeddings, final norms, pooler and heads;
a fresh student is the teacher's config with some fields replaced (fewer
layers, a narrower width) and the same vocabulary. `distill` trains either.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..models import FAMILIES, get_family, model_type_info
from ..pretrain import build_model


def default_layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layers a student of ``student_layers`` copies: every other one
    (0, 2, 4, ... as DistilBERT) when that fits, else evenly spaced from the first to the last."""
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(f"a student needs 1 to {teacher_layers} layers (the teacher's), got {student_layers}")
    if 2 * student_layers <= teacher_layers:
        return [2 * index for index in range(student_layers)]
    if student_layers == 1:
        return [0]
    return [round(index * (teacher_layers - 1) / (student_layers - 1)) for index in range(student_layers)]


def check_layer_map(layer_map: list[int], teacher_layers: int) -> list[int]:
    """Validate a layer map (student layer i <- teacher layer ``layer_map[i]``)."""
    if not layer_map:
        raise ValueError("the layer map is empty; name at least one teacher layer")
    for index in layer_map:
        if not 0 <= index < teacher_layers:
            raise ValueError(
                f"the layer map names teacher layer {index}, but the teacher has {teacher_layers} layers "
                f"(0 to {teacher_layers - 1})"
            )
    return list(layer_map)


def layer_count(config: dict) -> int:
    """The number of layers a ``config.json`` names."""
    return config[model_type_info(config["model_type"]).layers_key]


def width(config: dict) -> int:
    """The hidden width a ``config.json`` names."""
    return config[model_type_info(config["model_type"]).width_key]


def student_from_teacher(teacher: nn.Module, teacher_config: dict, layer_map: list[int]) -> tuple[nn.Module, dict]:
    """A student with ``len(layer_map)`` layers initialized from the teacher:
    student layer ``i`` is a copy of teacher layer ``layer_map[i]``; embeddings,
    final norms, pooler and heads are copied as they are.

    Returns:
        ``(student, config)``.
    """
    layer_map = check_layer_map(layer_map, layer_count(teacher_config))
    config = {**teacher_config, model_type_info(teacher_config["model_type"]).layers_key: len(layer_map)}
    # Per-layer settings follow the copied layers (SmolLM3's rotary flags, per-layer attention kinds).
    rope_layers = getattr(getattr(teacher, "args", None), "rope_layers", None)
    if rope_layers:
        config["no_rope_layers"] = [int(rope_layers[index]) for index in layer_map]
    if isinstance(config.get("layer_types"), list) and len(config["layer_types"]) == layer_count(teacher_config):
        config["layer_types"] = [config["layer_types"][index] for index in layer_map]
    family = get_family(config["model_type"])
    student = family.Model(family.ModelArgs.from_config(config))
    source = dict(tree_flatten(teacher.parameters()))
    weights = {}
    for name, _ in tree_flatten(student.parameters()):
        if name.startswith("model.layers."):
            index, _, rest = name.removeprefix("model.layers.").partition(".")
            name_in_teacher = f"model.layers.{layer_map[int(index)]}.{rest}"
        else:
            name_in_teacher = name
        weights[name] = source[name_in_teacher]
    student.load_weights(list(weights.items()))
    mx.eval(student.parameters())
    return student, config


def student_from_config(teacher_config: dict, fields: dict) -> tuple[nn.Module, dict]:
    """A freshly initialized student: the teacher's config with ``fields`` replaced
    (e.g. fewer layers, a narrower width), same task and labels.

    Raises:
        ValueError: when the student's vocabulary differs from the teacher's
            (logit losses compare distributions over the same tokens).
    """
    config = {**teacher_config, **fields}
    if config.get("model_type") != teacher_config.get("model_type"):
        raise ValueError(f"the student must be a {teacher_config['model_type']} model like the teacher, "
                         f"not {config.get('model_type')!r}")
    if config.get("vocab_size") != teacher_config.get("vocab_size"):
        raise ValueError(
            f"the student config has vocab_size {config.get('vocab_size')}, the teacher "
            f"{teacher_config.get('vocab_size')}: logit losses need the same vocabulary (and tokenizer)"
        )
    return build_model(config), config

def masked_lm_student(student: nn.Module, config: dict) -> tuple[nn.Module, dict]:
    """The encoder ``student`` with only its masked-LM head (DistilBERT drops NSP and the pooler).

    Returns:
        ``(student, config)``; ``config`` is updated in place to the MLM architecture.
    """
    family = get_family(config["model_type"])
    config["architectures"] = [family.hf_architecture(config["model_type"], "masked_lm")]
    masked = family.Model(family.ModelArgs.from_config(config))
    masked.load_weights([(n, w) for n, w in tree_flatten(student.parameters())
                         if n in dict(tree_flatten(masked.parameters()))])
    return masked, config


def __getattr__(name: str) -> dict[str, str]:
    """The former tables ``LAYER_KEYS`` and ``WIDTH_KEYS`` (model_type -> config.json key of the
    layer count / the width), derived on first use from each family's `models.ModelType`."""
    if name in ("LAYER_KEYS", "WIDTH_KEYS"):
        field = "layers_key" if name == "LAYER_KEYS" else "width_key"
        return {model_type: getattr(model_type_info(model_type), field) for model_type in FAMILIES}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
