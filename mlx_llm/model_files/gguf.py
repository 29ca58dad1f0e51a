"""GGUF files (llama.cpp's format): configuration, weights and model.

A ``.gguf`` file holds the whole checkpoint: hyperparameters and tokenizer
under llama.cpp's metadata keys, and tensors under llama.cpp's names and
types. Files are read with the ``gguf`` package (llama.cpp's own reader),
which also dequantizes every type in NumPy.

- Q4_0, Q4_1 and Q8_0 are affine quantizations with 32-weight groups, the
  same as MLX's (``w = scale * q + bias``), so those tensors stay quantized:
  their blocks are repacked, not rounded again (Q4_0 ``d * (q - 8)`` is
  scale ``d``, bias ``-8 d``; Q8_0's signed ``d * q`` is the unsigned
  ``q + 128`` with bias ``-128 d``; Q4_1 ``d * q + m`` maps as it is).
- Every other type the ``gguf`` package can dequantize (the K-quants,
  Q5_0/Q5_1, the IQ types, ...) becomes float16 (or the ``dtype`` asked for).
- llama.cpp's converter permutes the query and key rows of ``llama`` models
  for its rotary layout (pairs interleaved); `unpermute` undoes it.

The tokenizer is built in `mlx_llm.model_files.gguf_tokenizer`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import numpy as np

# general.architecture -> Hugging Face model_type and class. SmolLM files are "llama";
# llama.cpp writes Mistral 7B as "llama" too ("mistral" appears in files from other tools).
ARCHITECTURES = {
    "llama": ("llama", "LlamaForCausalLM"),
    "mistral": ("mistral", "MistralForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
}
# Architectures whose q/k rows llama.cpp permutes (Qwen2 uses the NeoX rotary layout, unpermuted).
_PERMUTED = ("llama", "mistral")
GROUP_SIZE = 32  # the block size of Q4_0, Q4_1 and Q8_0
KEPT_BITS = {"Q4_0": 4, "Q4_1": 4, "Q8_0": 8}
_FLOAT_TYPES = {"F32": np.float32, "F16": np.float16}
INSTALL_HINT = 'reading GGUF files needs the gguf package: pip install "mlx-llm-kit[gguf]"'

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm": "self_attn_norm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "feed_forward_norm",
    "ffn_gate": "feed_forward.gate_proj",
    "ffn_up": "feed_forward.up_proj",
    "ffn_down": "feed_forward.down_proj",
    "attn_q_norm": "self_attn.q_norm",  # Qwen3's per-head query and key norms
    "attn_k_norm": "self_attn.k_norm",
}


class MissingGGUFPackage(ImportError, ValueError):
    """The optional ``gguf`` package is not installed (a ValueError too, so the CLI prints one line)."""


def is_gguf_file(path: str | Path) -> bool:
    """Whether ``path`` names a ``.gguf`` file (existing or not: a missing one fails in `open_gguf`)."""
    return str(path).lower().endswith(".gguf")


def _gguf_module():
    try:
        import gguf
    except ImportError:
        raise MissingGGUFPackage(INSTALL_HINT) from None
    return gguf


@dataclass
class GGUFFile:
    """An open GGUF file: its metadata as Python values and its tensors by name."""

    path: Path
    metadata: dict
    tensors: dict  # name -> gguf ReaderTensor
    architecture: str = field(init=False)

    def __post_init__(self) -> None:
        self.architecture = str(self.metadata.get("general.architecture", ""))

    def get(self, key: str, default=None):
        """Metadata value of ``{architecture}.key``."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    def require(self, key: str):
        full = f"{self.architecture}.{key}"
        if full not in self.metadata:
            raise ValueError(f"{self.path}: GGUF metadata has no {full}, which a {self.architecture} model needs")
        return self.metadata[full]


def open_gguf(path: str | Path) -> GGUFFile:
    """Read a GGUF file's metadata and tensor index (the tensor data stays memory-mapped).

    Args:
        path: The ``.gguf`` file.

    Returns:
        The `GGUFFile`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a GGUF file, or cut short (a truncated download).
        MissingGGUFPackage: the ``gguf`` package is not installed.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    gguf = _gguf_module()
    size = path.stat().st_size
    try:
        reader = gguf.GGUFReader(path)
        metadata = {name: value.contents() for name, value in reader.fields.items() if not name.startswith("GGUF.")}
        tensors = {tensor.name: tensor for tensor in reader.tensors}
    except (ValueError, IndexError, OverflowError, UnicodeDecodeError, KeyError) as error:
        raise ValueError(f"{path} is not a readable GGUF file ({' '.join(str(error).split())}); "
                         "it may be truncated or corrupt, download it again") from None
    for tensor in tensors.values():
        # The reader maps slices past the end without complaint; a cut-short file shows up here.
        if tensor.data_offset + tensor.n_bytes > size or tensor.data.nbytes != tensor.n_bytes:
            raise ValueError(f"{path} is truncated: tensor {tensor.name} needs bytes up to "
                             f"{tensor.data_offset + tensor.n_bytes:,} but the file has {size:,}; download it again")
    return GGUFFile(path, metadata, tensors)


def check_architecture(file: GGUFFile) -> tuple[str, str]:
    """``(model_type, class name)`` of the file's architecture, or a ``ValueError`` listing the supported ones."""
    if file.architecture not in ARCHITECTURES:
        raise ValueError(
            f"{file.path}: GGUF architecture {file.architecture!r} is not supported; supported GGUF "
            f"architectures: {', '.join(ARCHITECTURES)}"
        )
    return ARCHITECTURES[file.architecture]


def _one_value(file: GGUFFile, key: str, value):
    # Some files store per-layer lists (variable heads or widths); this model has one value for all.
    if isinstance(value, list):
        if len(set(value)) != 1:
            raise ValueError(f"{file.path}: {file.architecture}.{key} differs between layers ({value[:8]}...); "
                             "models with per-layer sizes are not supported")
        return value[0]
    return value


def gguf_config(file: GGUFFile) -> dict:
    """The Hugging Face ``config.json`` equivalent of a GGUF file's metadata.

    Args:
        file: An open GGUF file.

    Returns:
        A config dict `mlx_llm.models.llama.ModelArgs.from_config` reads
        (``model_type``, sizes, rope settings, ``tie_word_embeddings`` when
        the file has no ``output.weight``, token ids).
    """
    model_type, class_name = check_architecture(file)
    hidden = int(file.require("embedding_length"))
    heads = int(_one_value(file, "attention.head_count", file.require("attention.head_count")))
    kv_heads = int(_one_value(file, "attention.head_count_kv", file.get("attention.head_count_kv", heads)))
    head_dim = int(file.get("attention.key_length", hidden // heads))
    rotary = file.get("rope.dimension_count")
    if rotary is not None and int(rotary) != head_dim:
        raise ValueError(f"{file.path}: rotary dimensions {rotary} differ from the head size {head_dim} "
                         "(partial rotary embeddings are not supported)")
    tokens = file.metadata.get("tokenizer.ggml.tokens")
    embedding = file.tensors.get("token_embd.weight")
    if embedding is None:
        raise ValueError(f"{file.path} has no token_embd.weight tensor")
    vocab_size = len(tokens) if tokens else int(embedding.shape[-1])
    if int(embedding.shape[-1]) != vocab_size:
        raise ValueError(f"{file.path}: the tokenizer lists {vocab_size} tokens but token_embd.weight has "
                         f"{int(embedding.shape[-1])} rows")
    window = file.get("attention.sliding_window")
    config = {
        "model_type": model_type,
        "architectures": [class_name],
        "hidden_act": "silu",
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "num_hidden_layers": int(file.require("block_count")),
        "intermediate_size": int(_one_value(file, "feed_forward_length", file.require("feed_forward_length"))),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": int(file.get("context_length", 2048)),
        "rms_norm_eps": float(file.get("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(file.get("rope.freq_base", 10000.0)),
        "rope_scaling": _rope_scaling(file, head_dim),
        "tie_word_embeddings": "output.weight" not in file.tensors,
        # Stated, so that a "mistral" file without the key gets no window (MistralConfig's default is 4096).
        "sliding_window": None if window is None else int(window),
        # Llama with q/k/v/o biases; Qwen2 always has q/k/v biases and needs no flag.
        "attention_bias": model_type != "qwen2" and "blk.0.attn_q.bias" in file.tensors,
    }
    for name in ("bos", "pad"):
        if (token_id := file.metadata.get(f"tokenizer.ggml.{name}_token_id")) is not None:
            config[f"{name}_token_id"] = int(token_id)
    # Generation stops at the end-of-text, end-of-turn and end-of-message tokens.
    ends = [int(file.metadata[f"tokenizer.ggml.{name}_token_id"]) for name in ("eos", "eot", "eom")
            if f"tokenizer.ggml.{name}_token_id" in file.metadata]
    if ends:
        config["eos_token_id"] = ends[0] if len(set(ends)) == 1 else list(dict.fromkeys(ends))
    return config


def _rope_scaling(file: GGUFFile, head_dim: int) -> dict | None:
    """Rope scaling from the metadata, or Llama 3's from the ``rope_freqs`` tensor."""
    kind = str(file.get("rope.scaling.type", "none"))
    factor = file.get("rope.scaling.factor", file.get("rope.scale_linear"))
    if kind == "linear" or (kind == "none" and factor not in (None, 1.0)):
        return {"rope_type": "linear", "factor": float(factor)}
    if kind != "none":
        raise ValueError(f"{file.path}: rope scaling {kind!r} is not supported (supported: linear, and Llama 3's "
                         "rope_freqs)")
    if "rope_freqs.weight" not in file.tensors:
        return None
    # llama.cpp stores Llama 3.1's rope scaling as per-frequency divisors. Every Llama 3.x release
    # uses low/high frequency factors 1 and 4 over an 8192-token original context, so the file's
    # divisors are checked against those settings with its largest divisor as the factor.
    from ..models.llama import llama3_inverse_frequencies

    divisors = _dequantize(file.tensors["rope_freqs.weight"], np.float32).reshape(-1)
    scaling = {"rope_type": "llama3", "factor": float(divisors.max()), "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    base = float(file.get("rope.freq_base", 10000.0))
    plain = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)
    expected = plain / np.array(llama3_inverse_frequencies(head_dim, base, scaling))
    if expected.shape != divisors.shape or not np.allclose(expected, divisors, rtol=1e-3):
        raise ValueError(f"{file.path}: the rope_freqs tensor does not match Llama 3's rope scaling; "
                         "this rope scaling is not supported")
    return scaling


# --- tensors ------------------------------------------------------------------------------


def type_name(tensor) -> str:
    return tensor.tensor_type.name


def is_kept_quantized(tensor) -> bool:
    # Only matrices: MLX quantizes linear and embedding weights (llama.cpp keeps vectors F32 anyway).
    return type_name(tensor) in KEPT_BITS and len(tensor.shape) == 2


def _dequantize(tensor, dtype) -> np.ndarray:
    """A tensor's values as ``dtype``, shaped as in the model (``(out, in)`` for a matrix)."""
    quants = _gguf_module().quants
    name = type_name(tensor)
    shape = tuple(int(dim) for dim in reversed(tensor.shape))  # GGUF lists the row length first
    if name in _FLOAT_TYPES:
        return np.asarray(tensor.data).reshape(shape).astype(dtype)
    try:
        values = quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
    except NotImplementedError:
        raise _unreadable_type(tensor) from None
    return values.reshape(shape).astype(dtype)


def _repack(tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A Q4_0, Q4_1 or Q8_0 matrix as MLX's affine triplet: packed ``uint32`` weights
    ``(out, in * bits / 32)`` and float16 ``scales`` and ``biases`` ``(out, in / 32)``, exactly."""
    name = type_name(tensor)
    rows = int(tensor.shape[1])
    blocks = np.asarray(tensor.data).reshape(-1, {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}[name])  # bytes per block
    scale = blocks[:, :2].copy().view(np.float16)  # (blocks, 1)
    if name == "Q8_0":
        # Signed q in [-128, 127] becomes unsigned q + 128 with the bias taking back 128 d (exact in float16).
        codes = (blocks[:, 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)  # (blocks, 32)
        bias = scale * np.float16(-128)
    else:
        data = blocks[:, 4:] if name == "Q4_1" else blocks[:, 2:]  # (blocks, 16) bytes
        # llama.cpp keeps weights 0-15 in the low nibbles and 16-31 in the high ones;
        # MLX packs consecutive weights low nibble first.
        nibbles = np.concatenate([data & 0x0F, data >> 4], axis=1)  # (blocks, 32) in weight order
        codes = nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)  # (blocks, 16)
        bias = blocks[:, 2:4].copy().view(np.float16) if name == "Q4_1" else scale * np.float16(-8)
    weight = np.ascontiguousarray(codes).reshape(rows, -1).view(np.uint32)
    return weight, scale.reshape(rows, -1), bias.reshape(rows, -1)


def unpermute(rows: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k permutation: within each head, llama.cpp interleaves the
    two rotary halves (row ``2i`` from ``i``, ``2i+1`` from ``half + i``); this puts
    them back. ``rows`` is any array whose first axis is the output rows."""
    per_head = rows.shape[0] // heads
    return rows.reshape(heads, per_head // 2, 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def parameter_name(name: str) -> str:
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_NAMES and parts[3] in ("weight", "bias"):
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    raise ValueError(f"unknown tensor {name!r} in the GGUF file (not part of a llama-family model)")


@dataclass
class TensorSummary:
    """Which GGUF types a file holds and what loading does with each."""

    kept: Counter = field(default_factory=Counter)  # type -> tensors kept quantized
    dequantized: Counter = field(default_factory=Counter)  # type -> tensors turned into floats
    floats: Counter = field(default_factory=Counter)  # F32/F16/BF16 -> tensors

    def notes(self, dtype: str) -> list[str]:
        """One line per kind, e.g. ``"dequantized 98 Q6_K tensors to float16"``."""
        lines = [f"kept {count} {name} tensor{'s' * (count > 1)} quantized ({KEPT_BITS[name]}-bit, group size "
                 f"{GROUP_SIZE})" for name, count in sorted(self.kept.items())]
        lines += [f"dequantized {count} {name} tensor{'s' * (count > 1)} to {dtype}"
                  for name, count in sorted(self.dequantized.items())]
        return lines


def _readable(tensor) -> bool:
    """Whether the ``gguf`` package can dequantize the tensor's type (tried on one zero block)."""
    gguf = _gguf_module()
    block_size, type_size = gguf.GGML_QUANT_SIZES[tensor.tensor_type]
    try:
        gguf.quants.dequantize(np.zeros((1, type_size), dtype=np.uint8), tensor.tensor_type)
    except (NotImplementedError, ValueError):
        return False
    return True


def _unreadable_type(tensor) -> ValueError:
    return ValueError(
        f"tensor {tensor.name} has GGUF type {type_name(tensor)}, which cannot be read; convert the model "
        "with another type (float, Q8_0, Q4_0, Q4_1, the K-quants, ...)"
    )


def summarize(file: GGUFFile) -> TensorSummary:
    """Count the file's tensors by type and treatment (nothing is read); a
    ``ValueError`` names the first tensor of a type that cannot be read."""
    summary = TensorSummary()
    for name, tensor in file.tensors.items():
        kind = type_name(tensor)
        if name == "rope_freqs.weight":
            continue
        if kind not in ("F32", "F16", "BF16") and not _readable(tensor):
            raise ValueError(f"{file.path}: {_unreadable_type(tensor)}")
        if is_kept_quantized(tensor):
            summary.kept[kind] += 1
        elif kind in ("F32", "F16", "BF16"):
            summary.floats[kind] += 1
        else:
            summary.dequantized[kind] += 1
    return summary


def default_dtype(summary: TensorSummary) -> str:
    """The compute type when none is asked for: the 16-bit type the file stores, float32 for an all-F32 file."""
    if summary.floats["BF16"]:
        return "bfloat16"
    if summary.floats["F16"] or summary.kept or summary.dequantized:
        return "float16"
    return "float32"


def gguf_weights(file: GGUFFile, config: dict, dtype: str) -> tuple[dict[str, mx.array], dict[str, int]]:
    """The file's tensors under this project's Llama parameter names.

    Args:
        file: An open GGUF file.
        config: Its `gguf_config`.
        dtype: The float type dequantized tensors become.

    Returns:
        ``(weights, bits)``: the arrays (a kept-quantized matrix as ``.weight``,
        ``.scales``, ``.biases``) and the bits of each kept-quantized module path.
    """
    target = {"float32": np.float32, "float16": np.float16, "bfloat16": np.float32}[dtype]
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    permuted = file.architecture in _PERMUTED
    weights: dict[str, mx.array] = {}
    bits: dict[str, int] = {}
    for name, tensor in file.tensors.items():
        if name == "rope_freqs.weight":
            continue  # read into the config's rope scaling
        model_name = parameter_name(name)
        role = name.split(".")[2] if name.startswith("blk.") else None
        undo = (lambda rows: unpermute(rows, heads[role])) if permuted and role in heads else (lambda rows: rows)
        kind = type_name(tensor)
        if is_kept_quantized(tensor):
            weight, scales, biases = (undo(part) for part in _repack(tensor))
            prefix = model_name.removesuffix(".weight")
            weights[model_name] = mx.array(weight)
            weights[f"{prefix}.scales"] = mx.array(scales)
            weights[f"{prefix}.biases"] = mx.array(biases)
            bits[prefix] = KEPT_BITS[kind]
        elif kind == "BF16":
            values = _dequantize(tensor, np.float32)
            weights[model_name] = mx.array(undo(values)).astype(mx.bfloat16)
        else:
            weights[model_name] = mx.array(undo(_dequantize(tensor, target)))
    return weights, bits


def quantization_config(bits: dict[str, int]) -> dict | None:
    """``config["quantization"]`` for kept-quantized modules: the common bit width, and an
    entry for each module path with another (how `mlx_llm.model_files.loading.load_model` reads it back)."""
    if not bits:
        return None
    common = Counter(bits.values()).most_common(1)[0][0]
    config: dict = {"group_size": GROUP_SIZE, "bits": common}
    config.update({path: {"group_size": GROUP_SIZE, "bits": value}
                   for path, value in sorted(bits.items()) if value != common})
    return config
