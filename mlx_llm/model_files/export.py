"""Export a model (converted, trained, fine-tuned or LoRA-adapted) to a folder
that Hugging Face ``transformers`` loads with the matching ``AutoModelFor...``
class, so that work done here is never locked in."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..blocks.heads import CLASSIFIER_TASKS, task_of
from ..blocks.layers import Embedding, Linear
from ..blocks.moe import QuantizedSwitchLinear
from ..models import get_family
from ..training.lora import fuse_lora
from .hub import atomic_output_dir, copy_tokenizer_files, resolve_model_path, write_json
from .loading import DTYPES, FORMAT_KEY, load_model
from .weight_files import save_safetensors


def hf_architecture(model_type: str, task: str) -> str:
    """The transformers class name of ``model_type`` built for ``task`` (the family module's answer)."""
    return get_family(model_type).hf_architecture(model_type, task)


def dequantize_model(model: nn.Module) -> int:
    """Replace quantized linear and embedding layers by float ones; returns how many."""
    replacements = []
    for path, module in model.named_modules():
        if isinstance(module, QuantizedSwitchLinear):  # a mixture of experts' stacked experts
            replacements.append((path, module.dequantized()))
            continue
        if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            weight = mx.dequantize(module.weight, module.scales, module.biases, module.group_size, module.bits)
            if isinstance(module, nn.QuantizedLinear):
                output_dims, input_dims = weight.shape
                replacement = Linear(input_dims, output_dims, bias="bias" in module)
                if "bias" in module:
                    replacement.bias = module.bias
            else:
                replacement = Embedding(*weight.shape)
            replacement.weight = weight
            replacements.append((path, replacement))
    if replacements:
        from mlx.utils import tree_unflatten

        model.update_modules(tree_unflatten(replacements))
    return len(replacements)


def export_to_hf(model_dir: str | Path, out: str | Path, dtype: str | None = None, overwrite: bool = False) -> Path:
    """Write ``out`` with ``config.json``, ``model.safetensors`` (transformers names
    and layouts) and the tokenizer files of ``model_dir``.

    LoRA adapters are fused in and quantized weights dequantized first: the
    result is a plain float checkpoint.

    Args:
        model_dir: Any folder `mlx_llm.load` reads.
        out: Output folder (must not exist unless ``overwrite``).
        dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"``; the model's own if ``None``.
        overwrite: Replace an existing ``out``.

    Returns:
        ``out``.
    """
    folder = resolve_model_path(model_dir)
    model, config = load_model(folder)
    fuse_lora(model, dequantize=True)
    dequantize_model(model)
    if dtype is not None:
        if dtype not in DTYPES:
            raise ValueError(f"unsupported dtype {dtype!r}; choose one of {sorted(DTYPES)}")
        model.set_dtype(DTYPES[dtype])
    args = model.args
    task = task_of(model)
    family = get_family(config["model_type"])
    if not hasattr(family, "export_hf_weights"):
        raise ValueError(f"exporting {config['model_type']} models to transformers is not supported")
    weights = family.export_hf_weights(dict(tree_flatten(model.parameters())), args)
    hf_config = {key: value for key, value in config.items()
                 if key not in (FORMAT_KEY, "quantization", "quantization_config")}  # the weights are float now
    hf_config["architectures"] = [hf_architecture(config["model_type"], task)]
    stored = next(iter(weights.values())).dtype
    hf_config["torch_dtype"] = hf_config["dtype"] = next(name for name, value in DTYPES.items() if value == stored)
    if task not in CLASSIFIER_TASKS:  # problem_type describes a classifier's head
        hf_config.pop("problem_type", None)
    with atomic_output_dir(Path(out), overwrite=overwrite, inputs={"MODEL_DIR": folder}) as staging:
        save_safetensors(weights, staging, metadata={"format": "pt"})
        write_json(hf_config, staging / "config.json")
        copy_tokenizer_files(folder, staging)
    return Path(out)
