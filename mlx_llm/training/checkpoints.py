"""Checkpoint files of a training run, written atomically.

A checkpoint folder ``checkpoints/step-NNNNNNN`` holds the trained weights
(``model.safetensors``), the optimizer state (``optimizer.safetensors``) and
``trainer_state.json`` (step, data position, history, and a fingerprint of
the settings that must match on resume). ``best/`` holds the weights of the
best validation metric. The `training.Trainer` decides when; this module
reads and writes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from ..model_files.hub import atomic_output_dir, read_json, write_json


def settings_fingerprint(values: dict) -> str:
    """A short hash of the settings a resumed run must share with its checkpoint."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_checkpoint(target: Path, weights: dict[str, mx.array], optimizer_state: dict[str, mx.array],
                     trainer_state: dict) -> None:
    """Write one checkpoint folder atomically (a half-written one never appears under ``target``)."""
    with atomic_output_dir(target, overwrite=True) as staging:
        mx.save_safetensors(str(staging / "model.safetensors"), weights)
        mx.save_safetensors(str(staging / "optimizer.safetensors"), optimizer_state)
        write_json(trainer_state, staging / "trainer_state.json")


def prune_checkpoints(checkpoint_dir: Path, keep: int) -> None:
    """Delete all but the last ``keep`` ``step-*`` folders."""
    for old in sorted(checkpoint_dir.glob("step-*"))[:-keep]:
        shutil.rmtree(old)


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The last complete ``step-*`` folder, or ``None``."""
    found = sorted(path for path in checkpoint_dir.glob("step-*") if (path / "trainer_state.json").is_file())
    return found[-1] if found else None


def write_best(best_dir: Path, weights: dict[str, mx.array], record: dict) -> None:
    """Replace ``best/`` atomically with ``weights`` and their ``best.json`` record."""
    with atomic_output_dir(best_dir, overwrite=True) as staging:
        mx.save_safetensors(str(staging / "model.safetensors"), weights)
        write_json(record, staging / "best.json")


def load_trained_weights(model: nn.Module, path: Path) -> None:
    """Load weights a trainer saved (its trainable ones), refusing any tensor the model lacks."""
    weights = mx.load(str(path))
    expected = dict(tree_flatten(model.parameters()))
    wrong = sorted(name for name, value in weights.items()
                   if name not in expected or expected[name].shape != value.shape)
    if wrong:
        raise ValueError(
            f"{path} does not fit this model: {len(wrong)} tensor(s) it lacks or shapes differently "
            f"({', '.join(wrong[:3])}{', ...' if len(wrong) > 3 else ''}); it was written for another model "
            "or by an older mlx_llm: start a new run in another folder"
        )
    model.load_weights(list(weights.items()), strict=False)


def read_optimizer_state(checkpoint: Path) -> dict:
    """The optimizer state tree saved in ``checkpoint``."""
    return tree_unflatten(list(mx.load(str(checkpoint / "optimizer.safetensors")).items()))


def read_resumable_state(checkpoint: Path, settings: dict) -> dict:
    """``trainer_state.json`` of ``checkpoint``, refusing one written with other ``settings``.

    Raises:
        ValueError: The settings differ; the message names each differing key.
    """
    state = read_json(checkpoint / "trainer_state.json")
    if state["fingerprint"] != settings_fingerprint(settings):
        saved, current = state["settings"], json.loads(json.dumps(settings, default=str))
        differences = [
            f"{section}.{key}: checkpoint {saved.get(section, {}).get(key)!r}, now {current[section].get(key)!r}"
            for section in current if isinstance(current[section], dict)
            for key in sorted(set(current[section]) | set(saved.get(section, {})))
            if saved.get(section, {}).get(key) != current[section].get(key)
        ] or ["world_size"]
        raise ValueError(
            f"cannot resume from {checkpoint}: the run's settings differ ({'; '.join(differences)}); "
            "resume with the same settings, or start a new run in another folder"
        )
    return state
