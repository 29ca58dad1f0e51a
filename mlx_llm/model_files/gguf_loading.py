"""Loading GGUF files: the model (`load_gguf_model`), model and tokenizer
(`load_gguf`, what `mlx_llm.load` returns for a ``.gguf``), and `describe_gguf`
(what `mlx-llm info` shows). Reading, configuration and tensors are in
`mlx_llm.model_files.gguf`; the tokenizer in `mlx_llm.model_files.gguf_tokenizer`."""

from __future__ import annotations

import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from .gguf import (
    GROUP_SIZE,
    KEPT_BITS,
    default_dtype,
    gguf_config,
    gguf_weights,
    is_kept_quantized,
    open_gguf,
    parameter_name,
    quantization_config,
    summarize,
    type_name,
)


def _local_only(path: str | Path, revision: str | None, task_config: dict | None = None) -> None:
    if revision is not None:
        raise ValueError(f"--revision/revision applies to Hub repositories, not to the GGUF file {path}")
    if task_config is not None:
        raise ValueError(f"a task head cannot be built on the GGUF file {path} directly; "
                         "convert it first (`mlx-llm convert FILE.gguf --out DIR`)")


def load_gguf_model(path: str | Path, dtype: str | None = None, revision: str | None = None,
                    task_config: dict | None = None, quiet: bool = False) -> tuple[nn.Module, dict]:
    """Build the Llama-family model a GGUF file describes and load its weights.

    Args:
        path: The ``.gguf`` file.
        dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"`` for the float
            weights and the scales of quantized ones; by default the file's
            16-bit type (float32 for an all-F32 file).
        revision, task_config: Must be ``None`` (accepted for
            `mlx_llm.model_files.loading.load_model`'s signature).
        quiet: Do not report dequantized tensor types on stderr.

    Returns:
        ``(model, config)``, the model in eval mode; ``config`` is the
        Hugging Face-style configuration (with ``quantization`` when tensors
        stay quantized), ready to be written as ``config.json``.
    """
    from ..blocks.layers import relayout
    from ..models import get_family
    from .loading import DTYPES, check_weights

    _local_only(path, revision, task_config)
    file = open_gguf(path)
    config = gguf_config(file)
    summary = summarize(file)
    dtype = dtype or default_dtype(summary)
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    family = get_family(config["model_type"])
    model = family.Model(family.ModelArgs.from_config(config))
    weights, bits = gguf_weights(file, config, dtype)
    quantization = quantization_config(bits)
    if quantization is not None:
        config["quantization"] = quantization
        nn.quantize(model, class_predicate=lambda name, module: name in bits and
                    {"group_size": GROUP_SIZE, "bits": bits[name]})
    check_weights(model, weights, str(file.path))
    model.load_weights(list(weights.items()))
    del weights
    model.set_dtype(DTYPES[dtype])
    relayout(model)
    model.eval()
    mx.eval(model.parameters())
    if not quiet and summary.dequantized:
        print(f"{file.path.name}: " + "; ".join(summary.notes(dtype)[len(summary.kept):]), file=sys.stderr)
    return model, config


def load_gguf(path: str | Path, dtype: str | None = None, revision: str | None = None):
    """A GGUF file's model and tokenizer (what `mlx_llm.load` returns for one).

    Args:
        path: The ``.gguf`` file.
        dtype: As for `load_gguf_model`.
        revision: Must be ``None``.

    Returns:
        ``(model, tokenizer)``; ``model.generation_defaults`` is empty (GGUF
        files carry no sampling settings; the tokenizer knows the end tokens).
    """
    from ..generation.generation_config import GenerationDefaults
    from .gguf_tokenizer import load_gguf_tokenizer

    _local_only(path, revision)
    tokenizer = load_gguf_tokenizer(path)  # first: an unsupported tokenizer fails before the weights load
    model, _ = load_gguf_model(path, dtype=dtype)
    model.generation_defaults = GenerationDefaults()
    return model, tokenizer


def describe_gguf(path: str | Path, revision: str | None = None):
    """`mlx_llm.model_files.loading.ModelInfo` of a GGUF file, from its metadata and tensor index
    (nothing is dequantized); ``notes`` say which types stay quantized and which
    become floats."""
    from .loading import ModelInfo

    _local_only(path, revision)
    file = open_gguf(path)
    config = gguf_config(file)
    summary = summarize(file)
    dtype = default_dtype(summary)
    quantization = quantization_config({parameter_name(name).removesuffix(".weight"): KEPT_BITS[type_name(tensor)]
                                        for name, tensor in file.tensors.items() if is_kept_quantized(tensor)})
    return ModelInfo(
        path=file.path,
        model_type=config["model_type"],
        architecture=config["architectures"][0],
        num_parameters=sum(int(tensor.n_elements) for name, tensor in file.tensors.items()
                           if name != "rope_freqs.weight"),
        dtype=dtype,
        quantization=quantization,
        context_length=config["max_position_embeddings"],
        size_bytes=file.path.stat().st_size,
        converted=False,
        file_format="gguf",
        notes=tuple(summary.notes(dtype)),
    )
