"""LoRA and QLoRA: low-rank adapters on the linear layers of any mlx_llm model.

A wrapped layer computes ``base(x) + (alpha / rank) * dropout(x) @ A @ B`` with
the base frozen (full precision, or quantized for QLoRA) and only ``A``
``(input_dims, rank)`` and ``B`` ``(rank, output_dims)`` trained. ``B`` starts
at zero, so a freshly adapted model computes exactly what the base did.
Adapters are saved on their own (a few MB) and loaded onto a fresh base, or
fused into the weights for inference.
"""

from __future__ import annotations

import math
import os
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from ..blocks.layers import Linear
from ..model_files.hub import read_json, write_json
from ..model_files.weight_files import load_safetensors

ADAPTER_WEIGHTS_NAME = "adapters.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_FORMAT = "mlx_llm-lora"
# Entries of adapter_config.json besides the LoRAConfig: the base model the adapters
# were trained on, and how that base was quantized for training (QLoRA).
ADAPTER_METADATA = ("base_model", "quantization")


def _check_hyperparameters(rank: int, alpha: float, dropout: float) -> None:
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be an integer >= 1, got {rank!r}")
    if not alpha > 0:
        raise ValueError(f"LoRA alpha must be > 0, got {alpha!r}; the adapter output is scaled by alpha / rank")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}")


def _linear_dims(linear: nn.Module) -> tuple[int, int]:
    """``(input_dims, output_dims)`` of an ``nn.Linear`` or ``nn.QuantizedLinear``."""
    output_dims, stored_input_dims = linear.weight.shape
    if isinstance(linear, nn.QuantizedLinear):
        return stored_input_dims * 32 // linear.bits, output_dims  # bits-wide values packed in uint32
    return stored_input_dims, output_dims


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update.

    Args:
        base: The ``nn.Linear`` or ``nn.QuantizedLinear`` to adapt; it is frozen.
        rank: Inner width ``r`` of the update.
        alpha: The update is scaled by ``alpha / rank``.
        dropout: Dropout on the adapter's input (the base sees ``x`` unchanged).
    """

    def __init__(self, base: nn.Module, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, (nn.Linear, nn.QuantizedLinear)):
            raise TypeError(f"LoRA wraps nn.Linear or nn.QuantizedLinear, got {type(base).__name__}")
        _check_hyperparameters(rank, alpha, dropout)
        input_dims, output_dims = _linear_dims(base)
        self.linear = base
        self.linear.freeze()
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout)
        bound = 1.0 / math.sqrt(input_dims)  # Kaiming-uniform bound, as in mlx-lm
        self.lora_a = mx.random.uniform(low=-bound, high=bound, shape=(input_dims, rank))
        self.lora_b = mx.zeros((rank, output_dims))

    @classmethod
    def from_base(cls, linear: nn.Module, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> "LoRALinear":
        """Wrap ``linear`` (see the class arguments)."""
        return cls(linear, rank=rank, alpha=alpha, dropout=dropout)

    @property
    def rank(self) -> int:
        return self.lora_a.shape[1]

    def __call__(self, x: mx.array) -> mx.array:
        output = self.linear(x)
        # Adapters are kept in float32 and cast to the input dtype: (..., in) @ (in, r) @ (r, out).
        update = (self.dropout(x) @ self.lora_a.astype(x.dtype)) @ self.lora_b.astype(x.dtype)
        return output + self.scale * update

    def fuse(self, dequantize: bool = False) -> nn.Module:
        """The base layer with ``scale * (A @ B).T`` added to its weight.

        Args:
            dequantize: For a quantized base, return a float ``nn.Linear``
                instead of re-quantizing with the base's group size and bits.

        Returns:
            An ``nn.Linear`` (or ``nn.QuantizedLinear`` for a quantized base).
        """
        base = self.linear
        quantized = isinstance(base, nn.QuantizedLinear)
        if quantized:
            weight = mx.dequantize(
                base.weight, base.scales, base.get("biases"), group_size=base.group_size, bits=base.bits, mode=base.mode
            )
        else:
            weight = base.weight
        delta = self.scale * (self.lora_a @ self.lora_b).T  # (output_dims, input_dims), float32
        input_dims, output_dims = _linear_dims(base)
        fused = Linear(input_dims, output_dims, bias="bias" in base)  # random init is lazy, never computed
        fused.weight = (weight.astype(mx.float32) + delta).astype(weight.dtype)
        if "bias" in base:
            fused.bias = base.bias
        if quantized and not dequantize:
            return nn.QuantizedLinear.from_linear(fused, base.group_size, base.bits, mode=base.mode)
        return fused


@dataclass
class LoRAConfig:
    """Which layers get adapters, and how big they are.

    Args:
        rank: Inner width of each adapter.
        alpha: Adapter outputs are scaled by ``alpha / rank``.
        dropout: Dropout on adapter inputs while training.
        target_modules: Linear modules to adapt, matched on the end of their
            path inside a layer: ``"q_proj"`` or ``"self_attn.o_proj"``. GPT-2
            has one ``qkv_proj`` where other families have ``q_proj``, ``k_proj``
            and ``v_proj``.
        num_layers: Adapt the last ``num_layers`` of ``model.layers``; all if ``None``.
        trainable_modules: Module paths trained in full, e.g. ``("classifier",
            "model.pooler")`` for a new classification head.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    num_layers: int | None = None
    trainable_modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_hyperparameters(self.rank, self.alpha, self.dropout)
        if self.num_layers is not None and not (isinstance(self.num_layers, int) and self.num_layers >= 1):
            raise ValueError(f"num_layers must be an integer >= 1 or None (all layers), got {self.num_layers!r}")
        for name in ("target_modules", "trainable_modules"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ValueError(f"{name} must be a list of module names, got the string {value!r}; write ({value!r},)")
            setattr(self, name, tuple(value))
        if not self.target_modules:
            raise ValueError('target_modules is empty; name at least one linear module, e.g. ("q_proj", "v_proj")')

    def to_dict(self) -> dict:
        """A JSON-ready dict (tuples as lists)."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "LoRAConfig":
        """The inverse of `to_dict`; unknown keys raise ``ValueError``."""
        unknown = sorted(set(data) - {field.name for field in fields(cls)})
        if unknown:
            raise ValueError(f"unknown LoRA config keys {unknown}; known keys: {[field.name for field in fields(cls)]}")
        return cls(**data)


def _layers_with_paths(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(path, layer)`` for ``model.layers`` (every family has it; T5's: encoder then decoder layers)."""
    layers = getattr(model, "layers", None)
    if layers is None:  # not a model of the library (a bare layer, say)
        raise ValueError(f"{type(model).__name__} has no `layers` list to adapt")
    path_of = {id(module): path for path, module in model.named_modules()}
    return [(path_of[id(layer)], layer) for layer in layers]


def _matches(path: str, target: str) -> bool:
    return path == target or path.endswith("." + target)  # whole components: "proj" never matches "q_proj"


def _check_trainable_modules(modules: dict[str, nn.Module], trainable_modules: tuple[str, ...]) -> None:
    for prefix in trainable_modules:
        if prefix not in modules:
            top_level = ", ".join(sorted(name for name in modules if name and "." not in name))
            raise ValueError(f"trainable module {prefix!r} does not exist; top-level modules: {top_level}")
        quantized = [
            name
            for name, module in modules.items()
            if name == prefix or name.startswith(prefix + ".")
            if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding))
        ]
        if quantized:
            raise ValueError(
                f"trainable module {prefix!r} holds quantized layers ({', '.join(quantized)}) whose weights cannot "
                "be trained; quantize the model with a class_predicate that skips them"
            )


def apply_lora(model: nn.Module, config: LoRAConfig) -> int:
    """Freeze ``model`` and wrap its target linear layers in `LoRALinear`.

    Only the adapters (``lora_a``, ``lora_b``) and ``config.trainable_modules``
    stay trainable; quantized bases (QLoRA) stay quantized. Every check runs
    before the model is touched.

    Args:
        model: Any mlx_llm model; changed in place.
        config: Which layers and modules to adapt.

    Returns:
        The number of wrapped linear layers.
    """
    layers = _layers_with_paths(model)
    if config.num_layers is not None and config.num_layers > len(layers):
        raise ValueError(f"num_layers={config.num_layers} exceeds the model's {len(layers)} layers")
    selected = layers if config.num_layers is None else layers[-config.num_layers:]
    modules = dict(model.named_modules())
    if any(isinstance(module, LoRALinear) for module in modules.values()):
        raise ValueError("model already has LoRA adapters; apply_lora works on a base model (fuse_lora removes them)")

    targets: list[tuple[str, nn.Module]] = []  # (path in model, base linear)
    linear_names: set[str] = set()  # paths inside a layer, for the error message
    matched: set[str] = set()
    for layer_path, layer in selected:
        for name, module in layer.named_modules():
            if isinstance(module, (nn.Linear, nn.QuantizedLinear)):
                linear_names.add(name)
                hits = {target for target in config.target_modules if _matches(name, target)}
                matched |= hits
                if hits:
                    targets.append((f"{layer_path}.{name}", module))
    for target in config.target_modules:
        if target not in matched:
            where = f"the last {config.num_layers} of the" if config.num_layers else "any of the"
            where = f"{where} {len(layers)}"
            raise ValueError(
                f"no module named {target!r} in {where} layers; "
                f"linear modules there: {', '.join(sorted(linear_names))}"
            )
    _check_trainable_modules(modules, config.trainable_modules)

    model.freeze()
    model.update_modules(
        tree_unflatten([(path, LoRALinear(base, config.rank, config.alpha, config.dropout)) for path, base in targets])
    )
    modules = dict(model.named_modules())
    for prefix in config.trainable_modules:
        modules[prefix].unfreeze()
    return len(targets)


def lora_parameters(model: nn.Module) -> dict[str, mx.array]:
    """Flat name -> array of everything `apply_lora` left trainable: the
    adapters and the ``trainable_modules``."""
    return dict(tree_flatten(model.trainable_parameters()))


def _lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    return [(path, module) for path, module in model.named_modules() if isinstance(module, LoRALinear)]


def save_adapters(folder: str | Path, model: nn.Module, config: LoRAConfig, metadata: dict | None = None) -> Path:
    """Write ``adapters.safetensors`` and ``adapter_config.json`` into ``folder``.

    Each file is written under a temporary name and renamed, the config last,
    so a folder with a config always has matching weights.

    Args:
        folder: Output folder, created if missing.
        model: A model prepared with `apply_lora` (and trained).
        config: The config it was prepared with.
        metadata: Further entries for ``adapter_config.json`` (see `ADAPTER_METADATA`).

    Returns:
        ``folder`` as a ``Path``.
    """
    lora_layers = _lora_layers(model)
    if not lora_layers:
        raise ValueError("model has no LoRA adapters to save; call apply_lora(model, config) first")
    for path, layer in lora_layers:
        if layer.rank != config.rank or not math.isclose(layer.scale, config.alpha / config.rank):
            raise ValueError(
                f"{path} has rank {layer.rank} and scale {layer.scale:g}, but the config says rank "
                f"{config.rank} and alpha / rank = {config.alpha / config.rank:g}; pass the config given to apply_lora"
            )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights_path = folder / ADAPTER_WEIGHTS_NAME
    temporary = folder / f".{ADAPTER_WEIGHTS_NAME}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(temporary, "wb") as handle:
            mx.save_safetensors(handle, lora_parameters(model), metadata={"format": ADAPTER_FORMAT})
        os.replace(temporary, weights_path)
    finally:
        temporary.unlink(missing_ok=True)
    unknown = sorted(set(metadata or {}) - set(ADAPTER_METADATA))
    if unknown:
        raise ValueError(f"unknown adapter metadata {unknown}; known: {list(ADAPTER_METADATA)}")
    write_json({**config.to_dict(), **(metadata or {}), "format": ADAPTER_FORMAT}, folder / ADAPTER_CONFIG_NAME)
    return folder


def load_adapters(model: nn.Module, folder: str | Path) -> LoRAConfig:
    """Apply the LoRA config saved in ``folder`` to a base ``model`` and load the adapters.

    Args:
        model: The base model the adapters were trained on; changed in place.
        folder: A folder written by `save_adapters`.

    Returns:
        The saved `LoRAConfig`.

    Raises:
        FileNotFoundError: ``folder`` or one of its two files is missing.
        ValueError: The files do not match each other or the model (the
            message names the tensor); the model then already carries the
            adapter layers, so start again from a fresh base.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"adapter folder {folder} does not exist; save adapters there with save_adapters")
    config_path, weights_path = folder / ADAPTER_CONFIG_NAME, folder / ADAPTER_WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"adapter folder {folder} has no {path.name}; it was not written by save_adapters")
    data = read_json(config_path)
    if not isinstance(data, dict) or data.get("format") != ADAPTER_FORMAT:
        raise ValueError(f"{config_path} is not an mlx_llm LoRA config (it needs \"format\": \"{ADAPTER_FORMAT}\")")
    config = LoRAConfig.from_dict({key: value for key, value in data.items()
                                   if key != "format" and key not in ADAPTER_METADATA})
    weights = load_safetensors(weights_path)
    apply_lora(model, config)
    expected = lora_parameters(model)
    for name, tensor in sorted(weights.items()):
        if name not in expected:
            raise ValueError(f"adapter tensor {name!r} in {weights_path} matches no trainable parameter of the model")
        if tensor.shape != expected[name].shape:
            raise ValueError(
                f"adapter tensor {name!r} in {weights_path} has shape {tuple(tensor.shape)}, but the model's "
                f"parameter has shape {tuple(expected[name].shape)}; {config_path.name} (rank {config.rank}) "
                "does not match the saved weights"
            )
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise ValueError(f"{weights_path} lacks adapter tensors: {', '.join(missing[:10])}")
    model.load_weights(list(weights.items()), strict=False)
    return config


def fuse_lora(model: nn.Module, dequantize: bool = False) -> int:
    """Replace every `LoRALinear` in ``model`` by its fused linear layer (see `LoRALinear.fuse`).

    Returns:
        The number of fused layers.
    """
    fused = [(path, layer.fuse(dequantize=dequantize)) for path, layer in _lora_layers(model)]
    model.update_modules(tree_unflatten(fused))
    return len(fused)
