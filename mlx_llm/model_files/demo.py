"""The built-in demo model that ships with the package, and a tiny end-to-end
run of the building blocks, for a first check of an install."""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import mlx.core as mx

from ..blocks.transformer import EncoderDecoder
from ..utils import num_parameters


def demo_model_path() -> Path:
    """The folder of the built-in demo model (a 5.3M-parameter GPT trained on
    tinyshakespeare), installed with the package as ``mlx_llm/demo_model``.

    Returns:
        The folder, for ``mlx_llm.load``.

    Raises:
        FileNotFoundError: The package was installed without its data files
            (or from a zip archive, which this model cannot be read from).
    """
    folder = resources.files("mlx_llm").joinpath("demo_model")
    # Installed wheels and source trees are plain folders; a zipped install has no
    # real path to hand to the safetensors reader.
    if not isinstance(folder, Path) or not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"the built-in demo model is missing from this installation ({folder}); "
            "reinstall mlx-llm-kit, or pass --model with a local folder or a Hub repo id (for example --model gpt2)"
        )
    return folder


@dataclass
class DemoResult:
    source_shape: tuple[int, ...]
    target_shape: tuple[int, ...]
    logits_shape: tuple[int, ...]
    num_parameters: int
    dtype: str
    seconds: float


def run_demo(
    batch_size: int = 2,
    source_length: int = 12,
    target_length: int = 10,
    vocab_size: int = 1000,
    dtype: str = "float32",
    seed: int = 0,
) -> DemoResult:
    """Build a small random `EncoderDecoder` and run one teacher-forced forward pass.

    Returns:
        Input and output shapes, the parameter count and the wall time.
    """
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")
    for name, value in (("batch_size", batch_size), ("source_length", source_length),
                        ("target_length", target_length), ("vocab_size", vocab_size)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    mx.random.seed(seed)
    model = EncoderDecoder(
        vocab_size, vocab_size, hidden_size=128, num_heads=4,
        num_encoder_layers=2, num_decoder_layers=2, dropout=0.0,
    )
    model.set_dtype(getattr(mx, dtype))
    model.eval()
    source = mx.random.randint(0, vocab_size, (batch_size, source_length))
    target = mx.random.randint(0, vocab_size, (batch_size, target_length))
    start = time.perf_counter()
    logits = model(source, target)
    mx.eval(logits)
    seconds = time.perf_counter() - start
    return DemoResult(tuple(source.shape), tuple(target.shape), tuple(logits.shape),
                      num_parameters(model), dtype, seconds)
