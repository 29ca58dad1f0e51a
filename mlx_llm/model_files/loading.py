"""Load, convert and quantize checkpoints: a local folder or a Hub repository in,
an MLX model (and tokenizer) out."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..blocks.layers import relayout
from ..models import get_family
from .gguf import is_gguf_file
from .hub import atomic_output_dir, copy_tokenizer_files, read_json, resolve_model_path, write_json
from .mlx_lm_layout import group_size_of, mlx_lm_folder, quantization_notes, quantization_record, quantize_as_stored
from .weight_files import find_weight_files, load_safetensors, read_safetensors_header, save_safetensors

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
QUANTIZATION_BITS = (2, 3, 4, 5, 6, 8)
# Marks a folder written by this project (`convert`, `fuse`, training).
FORMAT_KEY = "mlx_llm"
# 3: mlx-lm's layout (Hugging Face tensor names, mlx-lm's quantization record), so that
#    mlx-lm and other MLX tools load the folder; `mlx_lm_layout`.
# 2: this project's module names; GPT-2's attention keeps one fused qkv_proj.
# 1: as 2, with GPT-2's q_proj, k_proj, v_proj apart.
# Folders of families without Hugging Face names for their tensors (T5) are still written as 2.
FORMAT_VERSION = 3
OWN_NAMES_VERSION = 2


def _dtype(name: str | None) -> mx.Dtype | None:
    if name is None:
        return None
    if name not in DTYPES:
        raise ValueError(f"unsupported dtype {name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def read_config(folder: Path) -> dict:
    """The ``config.json`` of a model folder."""
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} has no config.json; a model folder needs config.json and safetensors weights "
            "(a Hugging Face checkpoint or the output of `mlx-llm convert`)"
        )
    config = read_json(path)
    if not isinstance(config, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return config


def check_weights(model: nn.Module, weights: dict[str, mx.array], source: str) -> None:
    """Raise a ``ValueError`` naming missing, unexpected and mis-shaped tensors."""
    expected = dict(tree_flatten(model.parameters()))
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    mismatched = [
        f"{name}: expected {tuple(expected[name].shape)}, found {tuple(weights[name].shape)}"
        for name in sorted(set(expected) & set(weights))
        if expected[name].shape != weights[name].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else ""))
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected[:10])}" + (" ..." if len(unexpected) > 10 else ""))
    if mismatched:
        problems.append("tensors of the wrong shape: " + "; ".join(mismatched[:10]))
    if problems:
        raise ValueError(
            f"the weights in {source} do not fit the model its config.json describes ("
            + "; ".join(problems)
            + "); check that config.json belongs to these weights"
        )


def quantization_predicate(group_size: int):
    """Which modules `nn.quantize` converts: linear, embedding and stacked-expert
    layers whose rows split into whole groups, except task heads (small, and
    trained fresh). A module with ``preferred_bits`` and ``preferred_group_size``
    (a mixture-of-experts router, `mlx_llm.blocks.moe.SparseMoeBlock`) gets those settings."""
    def predicate(path: str, module: nn.Module) -> bool | dict:
        if f"{path}.".startswith(HEAD_PREFIXES[:2]) or not hasattr(module, "to_quantized"):
            return False
        preferred = getattr(module, "preferred_bits", None)
        if preferred is not None:
            size = module.preferred_group_size
            return module.weight.shape[-1] % size == 0 and {"group_size": size, "bits": preferred}
        return module.weight.shape[-1] % group_size == 0

    return predicate


# Parameters of task heads: a task model may start them fresh over a pretrained backbone.
HEAD_PREFIXES = ("classifier.", "head.", "mlm_head.", "nsp_head.", "lm_head.", "model.pooler.")
ADAPTER_CONFIG = "adapter_config.json"


def check_format_version(config: dict) -> None:
    """Raise a ``ValueError`` for a folder written by a newer mlx_llm."""
    version = config.get(FORMAT_KEY, {}).get("format_version", 1)
    if version > FORMAT_VERSION:
        raise ValueError(
            f"this checkpoint was written by a newer mlx_llm (format {version}; this one reads up to "
            f"{FORMAT_VERSION}); upgrade mlx_llm"
        )


def upgrade_weights(family, weights: dict[str, mx.array], config: dict) -> dict[str, mx.array]:
    """Weights mlx_llm saved in this project's names (formats 1 and 2), in today's names and layouts."""
    check_format_version(config)
    version = config[FORMAT_KEY].get("format_version", 1)
    upgrade = getattr(family, "upgrade_weights", None)
    return weights if upgrade is None else upgrade(weights, version)


def _fresh_heads(model: nn.Module, weights: dict[str, mx.array], std: float) -> dict[str, mx.array]:
    """Head tensors the checkpoint lacks (or holds for another label set), initialized
    as transformers does: normal(0, ``std``) weights, zero biases. Tensors of
    heads the model does not build are dropped from ``weights``."""
    expected = dict(tree_flatten(model.parameters()))
    for name in [name for name in weights if name.startswith(HEAD_PREFIXES)]:
        if name not in expected or weights[name].shape != expected[name].shape:
            del weights[name]
    fresh = {}
    for name, parameter in expected.items():
        if name.startswith(HEAD_PREFIXES) and name not in weights:
            fresh[name] = (mx.zeros(parameter.shape) if name.endswith("bias")
                           else mx.random.normal(parameter.shape) * std)
    return fresh


def language_model_config(family, config: dict) -> dict:
    """The ``config.json`` of the model a checkpoint loads as: ``config``, or for a multimodal
    checkpoint its language model's (the family's ``language_model_config``: Gemma 3's text model)."""
    reader = getattr(family, "language_model_config", None)
    return config if reader is None else reader(config)


def load_model(
    path_or_repo: str | Path,
    dtype: str | None = None,
    revision: str | None = None,
    task_config: dict | None = None,
) -> tuple[nn.Module, dict]:
    """Build the model a checkpoint describes and load its weights.

    Args:
        path_or_repo: A ``.gguf`` file (`mlx_llm.model_files.gguf_loading`), a local folder (Hugging Face layout, `convert` output,
            a training run, or a LoRA run folder holding ``adapter_config.json``)
            or a Hub repository id.
        dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"`` to cast floating
            weights; the checkpoint's own types if ``None``.
        revision: Hub branch, tag or commit.
        task_config: Build this configuration instead of the checkpoint's
            (same backbone, another task): heads the checkpoint lacks start
            fresh and heads the new task does not use are dropped.

    Returns:
        ``(model, config)``, the model in eval mode.
    """
    target_dtype = _dtype(dtype)
    if is_gguf_file(path_or_repo):
        from .gguf_loading import load_gguf_model

        return load_gguf_model(path_or_repo, dtype=dtype, revision=revision, task_config=task_config)
    folder = resolve_model_path(path_or_repo, revision=revision)
    config = read_config(folder)
    if (folder / ADAPTER_CONFIG).is_file() and task_config is None:
        return _load_with_adapters(folder, config, dtype)
    model_config = config if task_config is None else task_config
    family = get_family(model_config.get("model_type"))
    model_config = language_model_config(family, model_config)
    args = family.ModelArgs.from_config(model_config)
    model = family.Model(args)
    quantization = quantization_record(config)  # before the weights load: a bad record fails fast
    weights = load_safetensors(find_weight_files(folder))
    if FORMAT_KEY in config and config[FORMAT_KEY].get("format_version", 1) <= OWN_NAMES_VERSION:
        weights = upgrade_weights(family, weights, config)  # written here in this project's names
    else:
        check_format_version(config)
        weights = family.convert_hf_weights(weights, args)  # Hugging Face or mlx-lm layout
    if quantization is not None:
        # Each module as stored: mixed bits (mlx-lm recipes, GGUF files) and float modules included.
        quantize_as_stored(model, quantization, weights)
    if task_config is not None:
        weights.update(_fresh_heads(model, weights, model_config.get("initializer_range", 0.02)))
    check_weights(model, weights, str(folder))
    model.load_weights(list(weights.items()))
    del weights  # the model holds the only references now, so relayout frees each matrix it copies
    if target_dtype is not None:
        model.set_dtype(target_dtype)
    relayout(model)  # each weight in the memory order the CPU's BLAS reads fastest
    model.eval()
    mx.eval(model.parameters())
    return model, model_config


def _load_with_adapters(folder: Path, config: dict, dtype: str | None) -> tuple[nn.Module, dict]:
    """A LoRA run: its base model (quantized as trained) plus the adapters and trained heads."""
    from ..training.lora import load_adapters

    adapter_config = read_json(folder / ADAPTER_CONFIG)
    base = adapter_config.get("base_model")
    if base is None:
        raise ValueError(f"{folder / ADAPTER_CONFIG} does not name its base_model; it cannot be loaded on its own")
    try:
        model, _ = load_model(base, dtype=dtype, task_config=config)
    except (FileNotFoundError, OSError) as error:
        raise FileNotFoundError(
            f"the adapters in {folder} were trained on {base}, which cannot be loaded ({error}); "
            "make it available again, or fuse the adapters with `mlx-llm fuse` while it is"
        ) from error
    quantization = adapter_config.get("quantization")
    if quantization is not None and "quantization" not in read_config(resolve_model_path(base)):
        nn.quantize(model, group_size=quantization["group_size"], bits=quantization["bits"],
                    class_predicate=quantization_predicate(quantization["group_size"]))
    load_adapters(model, folder)
    model.eval()
    mx.eval(model.parameters())
    return model, config


def load(path_or_repo: str | Path, dtype: str | None = None, revision: str | None = None):
    """Load a model and its tokenizer.

    Args: as for `load_model`.

    Returns:
        ``(model, tokenizer)``; ``model.generation_defaults`` holds the
        checkpoint's ``generation_config.json`` settings
        (`mlx_llm.generation.generation_config.GenerationDefaults`).
    """
    from ..generation.generation_config import read_generation_defaults
    from ..tokenization import Tokenizer

    if is_gguf_file(path_or_repo):
        from .gguf_loading import load_gguf

        return load_gguf(path_or_repo, dtype=dtype, revision=revision)
    folder = resolve_model_path(path_or_repo, revision=revision)
    tokenizer = Tokenizer.from_pretrained(folder)  # first: a folder without one fails before the weights load
    defaults = read_generation_defaults(folder)
    model, _ = load_model(folder, dtype=dtype)
    model.generation_defaults = defaults  # a plain attribute: not a parameter, not saved with the weights
    return model, tokenizer


@dataclass
class ConversionReport:
    out: Path
    num_parameters: int
    bytes_written: int
    seconds: float

    @property
    def megabytes_per_second(self) -> float:
        return self.bytes_written / 1e6 / max(self.seconds, 1e-9)


def convert(
    source: str | Path,
    out: str | Path,
    dtype: str | None = None,
    quantize: bool = False,
    bits: int = 4,
    group_size: int = 64,
    revision: str | None = None,
    overwrite: bool = False,
    max_shard_size: int = 5 * 2**30,
) -> ConversionReport:
    """Convert a checkpoint to an MLX folder that `load` reads with no network.

    Writes MLX safetensors (sharded with an index past ``max_shard_size``),
    ``config.json`` (recording dtype and quantization) and the tokenizer
    files, into a temporary folder renamed to ``out`` only on success, in
    mlx-lm's layout (`mlx_llm.model_files.mlx_lm_layout`): ``mlx_lm.load`` reads it too.

    Args:
        source: Local folder, Hub repository id, or ``.gguf`` file (its tokenizer is written as ``tokenizer.json``).
        out: Output folder; must not exist (or be empty) unless ``overwrite``.
        dtype: Cast floating weights to this type.
        quantize: Quantize linear and embedding layers.
        bits: 2, 3, 4, 5, 6 or 8.
        group_size: Elements per quantization group (32, 64 or 128).
        revision: Hub revision of ``source``.
        overwrite: Replace an existing ``out``.
    """
    if quantize and bits not in QUANTIZATION_BITS:
        raise ValueError(f"quantization bits must be one of {QUANTIZATION_BITS}, got {bits}")
    if quantize and group_size not in (32, 64, 128):
        raise ValueError(f"quantization group size must be 32, 64 or 128, got {group_size}")
    start = time.perf_counter()
    from_gguf = is_gguf_file(source)  # a GGUF file: its tokenizer is written out as tokenizer.json
    folder = Path(source).expanduser() if from_gguf else resolve_model_path(source, revision=revision)
    model, config = load_model(folder, dtype=dtype)
    config = dict(config)
    num_parameters = sum(w.size for _, w in tree_flatten(model.parameters()))
    if quantize:
        if "quantization" in config:
            raise ValueError(f"{source} is already quantized ({config['quantization']})")
        nn.quantize(model, group_size=group_size, bits=bits, class_predicate=quantization_predicate(group_size))
    floating = [w.dtype for _, w in tree_flatten(model.parameters()) if mx.issubdtype(w.dtype, mx.floating)]
    if floating:
        dtype_name = next(name for name, value in DTYPES.items() if value == floating[0])
        config["torch_dtype"] = config["dtype"] = dtype_name
    # mlx-lm's layout, with the quantization record built from the modules as they are.
    weights, config = mlx_lm_folder(model, config, get_family(config["model_type"]),
                                    {"converted_from": str(source)}, FORMAT_VERSION, OWN_NAMES_VERSION)
    with atomic_output_dir(Path(out), overwrite=overwrite, inputs={"SOURCE": folder}) as staging:
        files = save_safetensors(weights, staging, max_shard_size=max_shard_size)
        write_json(config, staging / "config.json")
        if from_gguf:
            from .gguf_tokenizer import write_gguf_tokenizer

            write_gguf_tokenizer(folder, staging)
        else:
            copy_tokenizer_files(folder, staging)
        bytes_written = sum(file.stat().st_size for file in files)
    return ConversionReport(
        out=Path(out),
        num_parameters=num_parameters,
        bytes_written=bytes_written,
        seconds=time.perf_counter() - start,
    )


@dataclass
class ModelInfo:
    """What `describe` reports about a checkpoint."""

    path: Path
    model_type: str
    architecture: str
    num_parameters: int
    dtype: str
    quantization: dict | None
    context_length: int | None
    size_bytes: int
    converted: bool
    file_format: str = "safetensors"  # or "gguf"
    notes: tuple[str, ...] = ()  # e.g. which GGUF tensor types stay quantized or are dequantized
    family: str = ""  # the module under mlx_llm.models that runs it
    features: tuple[str, ...] = ()  # what sets the family's variants apart (the family's ``features``)

    def as_dict(self) -> dict:
        return {
            "path": str(self.path),
            "model_type": self.model_type,
            "architecture": self.architecture,
            "parameters": self.num_parameters,
            "dtype": self.dtype,
            "quantization": self.quantization,
            "context_length": self.context_length,
            "size_bytes": self.size_bytes,
            "mlx_llm_format": self.converted,
            "file_format": self.file_format,
            "notes": list(self.notes),
            "family": self.family,
            "features": list(self.features),
        }


_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx")


def describe(path_or_repo: str | Path, revision: str | None = None) -> ModelInfo:
    """Architecture, parameter count, dtype, quantization and context length of
    a checkpoint, read from its config and safetensors headers without loading
    the weights (a GGUF file: from its metadata and tensor index)."""
    if is_gguf_file(path_or_repo):
        from .gguf_loading import describe_gguf

        return describe_gguf(path_or_repo, revision=revision)
    folder = resolve_model_path(path_or_repo, revision=revision)
    config = read_config(folder)
    family = get_family(config.get("model_type"))  # unsupported types fail here, with the list
    loaded = language_model_config(family, config)
    features = tuple(family.features(family.ModelArgs.from_config(loaded))) if hasattr(family, "features") else ()
    files = find_weight_files(folder)
    quantization = quantization_record(config)  # a record this MLX cannot run fails here, as loading would
    headers = {name: entry for file in files for name, entry in read_safetensors_header(file).items()}
    num_parameters = 0
    dtype_counts: dict[str, int] = {}
    for name, (dtype, shape) in headers.items():
        size = 1
        for dim in shape:
            size *= dim
        if quantization and (name.endswith(".scales") or name.endswith(".biases")):
            continue  # quantization bookkeeping, not parameters
        module = name.removesuffix(".weight")
        if quantization and dtype == "U32" and f"{module}.scales" in headers:
            # Packed weights: a group of group_size elements per scale, whatever the module's bits.
            size = size // shape[-1] * headers[f"{module}.scales"][1][-1] * group_size_of(quantization, module)
        num_parameters += size
        if dtype in _SAFETENSORS_DTYPES:
            dtype_counts[_SAFETENSORS_DTYPES[dtype]] = dtype_counts.get(_SAFETENSORS_DTYPES[dtype], 0) + size
    dtype = max(dtype_counts, key=dtype_counts.get) if dtype_counts else "unknown"
    context = next((loaded[key] for key in _CONTEXT_KEYS if key in loaded), None)
    architectures = config.get("architectures") or [config["model_type"]]
    return ModelInfo(
        path=folder,
        model_type=config["model_type"],
        architecture=architectures[0],
        num_parameters=num_parameters,
        dtype=dtype,
        quantization=quantization,
        context_length=context,
        size_bytes=sum(file.stat().st_size for file in files),
        converted=FORMAT_KEY in config,
        notes=quantization_notes(quantization) + (() if loaded is config else (
            f"{config['model_type']} checkpoint: only its {loaded['model_type']} language model loads (other "
            f"tensors skipped); convert and export write a {loaded['model_type']} folder",)),
        family=family.__name__.rsplit(".", 1)[-1],
        features=features,
    )
