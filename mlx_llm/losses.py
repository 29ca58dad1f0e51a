"""Loss functions: pure functions of logits and targets."""

from __future__ import annotations

import mlx.core as mx

REDUCTIONS = ("mean", "sum", "none")


def cross_entropy(
    logits: mx.array,
    targets: mx.array,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> mx.array:
    """Token-level cross-entropy ``logsumexp(logits) - logits[target]``.

    Args:
        logits: ``(..., V)`` unnormalized scores.
        targets: ``(...)`` class ids; positions equal to ``ignore_index``
            contribute nothing.
        ignore_index: Target value to skip (padding, prompt tokens).
        reduction: ``"mean"`` over non-ignored positions, ``"sum"``, or
            ``"none"`` (per position, 0 where ignored).

    Returns:
        A float32 scalar, or an array of the shape of ``targets``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits of shape {tuple(logits.shape)} need targets of shape "
            f"{tuple(logits.shape[:-1])}, got {tuple(targets.shape)}"
        )
    keep = targets != ignore_index
    losses = mx.fast.cross_entropy(logits, mx.where(keep, targets, 0)) * keep
    if reduction == "none":
        return losses
    total = losses.astype(mx.float32).sum()
    if reduction == "sum":
        return total
    return total / mx.maximum(keep.sum(), 1)
