"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlx.core as mx


def blas_in_use() -> str:
    """Which BLAS this process runs with, from LD_PRELOAD."""
    preload = os.environ.get("LD_PRELOAD", "")
    if "mkl" in preload:
        return "MKL (preloaded)"
    if "openblas" in preload:
        return "OpenBLAS (preloaded)"
    return "as installed (MLX wheel's BLAS)"


def save_random_checkpoint(model_class: str, config_class: str, options: dict, path: Path) -> Path:
    """A random-weight transformers checkpoint in ``path`` (written once); GPT-2 ones
    in the Hub's own layout, which mlx-lm's GPT-2 loader expects."""
    if (path / "config.json").exists():
        return path
    import torch
    import transformers

    torch.manual_seed(0)
    getattr(transformers, model_class)(getattr(transformers, config_class)(**options)).save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    if config["model_type"] == "gpt2":
        # transformers 5 no longer writes n_ctx and prefixes names with "transformer.".
        config.setdefault("n_ctx", config["n_positions"])
        (path / "config.json").write_text(json.dumps(config, indent=2))
        weights = mx.load(str(path / "model.safetensors"))
        mx.save_safetensors(str(path / "model.safetensors"),
                            {name.removeprefix("transformer."): value for name, value in weights.items()},
                            metadata={"format": "pt"})
    return path


def torch_training_step(model, batch: dict, optimizer, scheduler, max_grad_norm: float = 1.0):
    """One PyTorch step as the benchmarks' transformers side runs it: forward with labels,
    backward, global-norm clipping, optimizer and schedule step; returns the detached loss."""
    import torch

    output = model(**batch)
    output.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    return output.loss.detach()
