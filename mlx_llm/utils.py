"""Small helpers shared across the library."""

from __future__ import annotations

import mlx.nn as nn
from mlx.utils import tree_flatten


def num_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters in ``module`` (all, or only trainable ones)."""
    parameters = module.trainable_parameters() if trainable_only else module.parameters()
    return sum(array.size for _, array in tree_flatten(parameters))


def registered(registry: dict, name: str, what: str):
    """``registry[name]``; a ``ValueError`` naming the unknown ``what`` and the registered names otherwise."""
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r}; choose one of {', '.join(registry)}")
    return registry[name]
