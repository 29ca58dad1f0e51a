"""mlx-lm's on-disk layout, read and written: Hugging Face tensor names, and
quantization recorded as mlx-lm records it.

Why names are mapped here rather than inside the models: this project's
modules keep their own attribute names (``feed_forward``, ``self_attn_norm``,
a fused GPT-2 ``qkv_proj``) that every model and many callers use; each family
already maps Hugging Face names to them (``convert_hf_weights``) and back
(``export_hf_weights``). Those maps carry the extra tensors of a quantized
layer (``.scales``, ``.biases``) unchanged, so a folder is read and written in
mlx-lm's layout with the modules untouched.

A quantized folder's ``config.json`` holds ``quantization`` (and its copy
``quantization_config``): ``group_size``, ``bits``, ``mode`` for every
quantized module, plus per-module entries (``"model.layers.0.mlp.down_proj":
{"bits": 8, "group_size": 64}``, or ``false``) where a module differs.
Which modules are quantized, and with what, is read from the tensors
themselves, as mlx-lm does for modules the record does not name: a module is
quantized exactly when its ``.scales`` are stored, and the shapes of its
packed weight and scales give its bits and group size. That works whatever
names the record uses (Hugging Face's, or this project's in earlier folders).
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from types import ModuleType

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..blocks.heads import task_of
from ..blocks.moe import QuantizedSwitchLinear

# Modes other than affine store uint8 scales, and each allows one (bits, group size).
FLOAT_MODES = {(4, 32): "mxfp4", (8, 32): "mxfp8", (4, 16): "nvfp4"}
RECORD_KEYS = ("group_size", "bits", "mode")


@lru_cache(maxsize=None)
def _runnable(group_size: int, bits: int, mode: str) -> str | None:
    """``None`` when this MLX quantizes and multiplies with these settings; else its reason."""
    try:
        weight = mx.zeros((group_size, 2 * group_size))
        packed = mx.quantize(weight, group_size=group_size, bits=bits, mode=mode)
        biases = packed[2] if len(packed) > 2 else None
        mx.eval(mx.quantized_matmul(mx.zeros((1, 2 * group_size)), packed[0], packed[1], biases,
                                    transpose=True, group_size=group_size, bits=bits, mode=mode))
    except (ValueError, RuntimeError, TypeError) as error:
        return str(error).removeprefix("[quantize] ").strip()
    return None


def check_runnable(group_size, bits, mode: str, where: str) -> None:
    """Raise a one-line ``ValueError`` naming ``where`` when this MLX cannot run the settings.

    Args:
        group_size: Elements per group.
        bits: Bits per element.
        mode: ``"affine"``, ``"mxfp4"``, ``"mxfp8"``, ``"nvfp4"``, ...
        where: What asks for them, e.g. ``"config.json's quantization"``.
    """
    if not isinstance(bits, int) or not isinstance(group_size, int) or not isinstance(mode, str):
        raise ValueError(f"{where} has bits={bits!r}, group_size={group_size!r}, mode={mode!r}: not a quantization")
    reason = _runnable(group_size, bits, mode)
    if reason is not None:
        raise ValueError(
            f"{where} asks for {bits}-bit {mode} quantization with group size {group_size}, which MLX "
            f"{mx.__version__} cannot run ({reason})"
        )


def quantization_record(config: dict) -> dict | None:
    """The MLX quantization record of a ``config.json``, checked; ``None`` if unquantized.

    Args:
        config: The folder's configuration.

    Returns:
        ``config["quantization"]`` (or ``quantization_config`` when only that is
        present and is an MLX record), its ``mode`` filled in.

    Raises:
        ValueError: one line, for a record this MLX cannot run, or a Hugging Face
            quantization (``quant_method``: GPTQ, AWQ, bitsandbytes, ...).
    """
    record = config.get("quantization")
    if record is None:
        other = config.get("quantization_config")
        if not other:
            return None
        if not isinstance(other, dict) or "quant_method" in other or "bits" not in other:
            method = other.get("quant_method") if isinstance(other, dict) else other
            raise ValueError(
                f"config.json's quantization_config (quant_method {method!r}) is not an MLX quantization; "
                "convert the float checkpoint instead"
            )
        record = other
    if not isinstance(record, dict) or "bits" not in record or "group_size" not in record:
        raise ValueError(f"config.json's quantization {record!r} lacks bits and group_size")
    record = {**record, "mode": record.get("mode", "affine")}
    check_runnable(record["group_size"], record["bits"], record["mode"], "config.json's quantization")
    for key, entry in record.items():
        if isinstance(entry, dict):
            check_runnable(entry.get("group_size", record["group_size"]), entry.get("bits", record["bits"]),
                           entry.get("mode", record["mode"]), f"config.json's quantization of {key}")
    return record


def group_size_of(record: dict, module: str) -> int:
    """The group size ``record`` gives ``module`` (its own entry's, else the default)."""
    entry = record.get(module)
    return entry.get("group_size", record["group_size"]) if isinstance(entry, dict) else record["group_size"]


def quantization_notes(record: dict | None) -> tuple[str, ...]:
    """One line for `describe` when modules have settings of their own (mixed-bit recipes)."""
    entries = {key: entry for key, entry in (record or {}).items() if isinstance(entry, dict) or entry is False}
    if not entries:
        return ()
    bits = sorted({entry.get("bits", record["bits"]) for entry in entries.values() if entry})
    floats = sum(entry is False for entry in entries.values())
    return (f"mixed quantization: {len(entries)} modules with their own settings (bits "
            f"{', '.join(map(str, bits)) or 'none'}; {floats} kept in float)",)


def _module_settings(path: str, module: nn.Module, weights: dict[str, mx.array], mode: str) -> dict | bool:
    """How the module at ``path`` is stored: ``False`` if float, else its quantization,
    read from the shapes of its packed weight and scales (the record may name the
    module differently, or not at all)."""
    scales = weights.get(f"{path}.scales")
    if scales is None or not hasattr(module, "to_quantized") or f"{path}.weight" not in weights:
        return False
    in_dims = module.weight.shape[-1]
    group_size = in_dims // scales.shape[-1]
    bits = weights[f"{path}.weight"].shape[-1] * 32 // in_dims
    if scales.dtype == mx.uint8:  # only the floating-point modes keep 8-bit scales
        mode = FLOAT_MODES.get((bits, group_size), mode)
    elif mode != "affine":
        mode = "affine"  # the record's default mode, overridden for this module
    check_runnable(group_size, bits, mode, f"the stored quantization of {path}")
    return {"group_size": group_size, "bits": bits, "mode": mode}


def quantize_as_stored(model: nn.Module, record: dict, weights: dict[str, mx.array]) -> None:
    """Quantize the modules of ``model`` whose tensors ``weights`` stores quantized.

    Args:
        model: The freshly built float model.
        record: `quantization_record` of the folder.
        weights: The folder's tensors in ``model``'s names.
    """
    nn.quantize(model, group_size=record["group_size"], bits=record["bits"], mode=record["mode"],
                class_predicate=lambda path, module: _module_settings(path, module, weights, record["mode"]))


def _exporter(family: ModuleType):
    """The family's map to mlx-lm's names, or ``None`` when it has none (its folders keep this project's)."""
    return getattr(family, "export_mlx_lm_weights", None) or getattr(family, "export_hf_weights", None)


def _quantization_of(model: nn.Module, hf_name) -> dict | None:
    """The record mlx-lm reads back: the most common settings as the default and an
    entry per module that differs from it, under its Hugging Face name."""
    settings = {
        path: {"group_size": module.group_size, "bits": module.bits, "mode": getattr(module, "mode", "affine")}
        for path, module in model.named_modules()
        if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding, QuantizedSwitchLinear))
    }
    if not settings:
        return None
    counts = Counter(tuple(entry[key] for key in RECORD_KEYS) for entry in settings.values())
    default = dict(zip(RECORD_KEYS, counts.most_common(1)[0][0]))
    record = dict(default)
    for path, entry in sorted(settings.items()):
        if entry != default:
            record[hf_name(path)] = entry
    return record


def mlx_lm_folder(model: nn.Module, config: dict, family: ModuleType, provenance: dict,
                  format_version: int, old_format_version: int) -> tuple[dict[str, mx.array], dict]:
    """The tensors and ``config.json`` of a folder in mlx-lm's layout.

    Args:
        model: The model to write (quantized modules are recorded as they are).
        config: Its configuration; any earlier quantization record is replaced.
        family: Its family module.
        provenance: Written under ``config["mlx_llm"]`` (e.g. ``{"converted_from": ...}``).
        format_version: The version recorded for mlx-lm's layout.
        old_format_version: The version recorded for a family without Hugging
            Face names for its tensors (written in this project's names).

    Returns:
        ``(weights, config)``.
    """
    ours = dict(tree_flatten(model.parameters()))
    export = _exporter(family)
    config = {key: value for key, value in config.items() if key not in ("quantization", "quantization_config")}
    args = model.args
    if export is None:
        weights, version = ours, old_format_version
        hf_name = str
    else:
        weights, version = export(ours, args), format_version

        def hf_name(path: str) -> str:
            return next(iter(export({f"{path}.scales": ours[f"{path}.scales"]}, args))).removesuffix(".scales")

    record = _quantization_of(model, hf_name)
    if record is not None:
        config["quantization"] = record
        config["quantization_config"] = dict(record)  # mlx-lm writes both (the Hub's model tree reads the second)
    if task_of(model) == "causal_lm":
        # mlx-lm's defaults differ from transformers' (Llama: tied), so the value is always written.
        config["tie_word_embeddings"] = args.tie_word_embeddings
    # transformers 5 writes rope_parameters; mlx-lm reads the older rope_theta and rope_scaling
    # (with defaults of its own: Qwen2's theta is 1e6), so both spellings are written.
    rope = dict(config.get("rope_parameters") or {})
    if "rope_theta" in rope:
        config.setdefault("rope_theta", rope.pop("rope_theta"))
    if rope.get("rope_type", "default") != "default":
        config.setdefault("rope_scaling", rope)
    if hasattr(family, "mlx_lm_config"):  # optional: keys mlx-lm reads in another spelling, or requires
        config = family.mlx_lm_config(config)  # (Qwen3-MoE's num_experts, GPT-2's n_ctx)
    config["mlx_llm"] = {**provenance, "format_version": version}
    return weights, config
