"""Normalization layers, by name: every block and attention layer builds its norms here.

- ``"layernorm"``: ``(x - mean(x)) / sqrt(var(x) + eps) * w + b`` (BERT, GPT-2).
- ``"rmsnorm"``: ``x / sqrt(mean(x^2) + eps) * w`` (Llama).
- ``"rmsnorm_unit_offset"``: ``x / sqrt(mean(x^2) + eps) * (1 + w)`` (Gemma 2
  and 3): the scale is stored as its offset from one, so a zero weight is the
  identity scale, as in the checkpoints.

All three run as `mx.fast` kernels.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

NORMS = ("layernorm", "rmsnorm", "rmsnorm_unit_offset")


class UnitOffsetRMSNorm(nn.Module):
    """RMSNorm scaled by ``1 + weight``: ``y = x / sqrt(mean(x^2) + eps) * (1 + w)``.

    The weight starts at zero (the identity scale); ``(1 + w)`` is formed in
    the weight's dtype and the normalization in float32, as `mx.fast.rms_norm`
    does (transformers' ``Gemma2RMSNorm`` also scales before casting back).

    Args:
        dims: Width of the last axis.
        eps: Added to the mean square.
    """

    def __init__(self, dims: int, eps: float = 1e-6):
        super().__init__()
        self.weight = mx.zeros((dims,))
        self.eps = eps

    def __call__(self, hidden_states: mx.array) -> mx.array:
        """``(..., dims)`` in and out."""
        return mx.fast.rms_norm(hidden_states, 1.0 + self.weight, self.eps)


def make_norm(kind: str, dims: int, eps: float) -> nn.Module:
    """``nn.LayerNorm``, ``nn.RMSNorm`` or `UnitOffsetRMSNorm` by ``kind`` (one of `NORMS`)."""
    if kind == "layernorm":
        return nn.LayerNorm(dims, eps=eps)
    if kind == "rmsnorm":
        return nn.RMSNorm(dims, eps=eps)
    if kind == "rmsnorm_unit_offset":
        return UnitOffsetRMSNorm(dims, eps=eps)
    raise ValueError(f"unknown norm {kind!r}; choose one of {NORMS}")
