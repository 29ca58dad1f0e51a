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


def causal_lm_loss(logits: mx.array, labels: mx.array, ignore_index: int = -100, reduction: str = "mean") -> mx.array:
    """Next-token loss: position ``t`` predicts ``labels[t + 1]``.

    The shift is done here, as in Hugging Face, so ``labels`` are the input
    ids themselves (with ``ignore_index`` at padding or prompt positions).

    Args:
        logits: ``(B, L, V)``.
        labels: ``(B, L)``.
        ignore_index: Label value that contributes nothing.
        reduction: ``"mean"`` over predicted tokens, ``"sum"`` or ``"none"``.
    """
    if logits.ndim != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"causal_lm_loss takes logits (B, L, V) and labels (B, L), got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    return cross_entropy(logits[:, :-1], labels[:, 1:], ignore_index=ignore_index, reduction=reduction)


def masked_lm_loss(logits: mx.array, labels: mx.array, ignore_index: int = -100, reduction: str = "mean") -> mx.array:
    """Masked-LM loss: cross-entropy at the masked positions only (labels elsewhere
    are ``ignore_index``); the mean is over masked positions."""
    return cross_entropy(logits, labels, ignore_index=ignore_index, reduction=reduction)


def next_sentence_loss(logits: mx.array, labels: mx.array, reduction: str = "mean") -> mx.array:
    """Next-sentence prediction: two-class cross-entropy on BERT's ``(B, 2)`` head
    (label 0 = B follows A, 1 = B is random, as in Hugging Face)."""
    if logits.ndim != 2 or logits.shape[-1] != 2:
        raise ValueError(f"next_sentence_loss takes (batch, 2) logits, got {tuple(logits.shape)}")
    return cross_entropy(logits, labels, reduction=reduction)


def bert_pretraining_loss(
    mlm_logits: mx.array, mlm_labels: mx.array, nsp_logits: mx.array, nsp_labels: mx.array
) -> mx.array:
    """BERT's pretraining objective: masked-LM loss + next-sentence loss."""
    return masked_lm_loss(mlm_logits, mlm_labels) + next_sentence_loss(nsp_logits, nsp_labels)


def binary_cross_entropy_with_logits(logits: mx.array, targets: mx.array, reduction: str = "mean") -> mx.array:
    """Multi-label loss: ``log(1 + exp(z)) - y z`` per output, computed stably as
    ``max(z, 0) - y z + log(1 + exp(-|z|))`` (as ``BCEWithLogitsLoss``).

    Args:
        logits: ``(B, C)`` scores.
        targets: ``(B, C)`` in ``[0, 1]`` (multi-hot labels).
        reduction: ``"mean"`` over all ``B * C`` outputs, ``"sum"`` or ``"none"``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must have the same shape")
    logits = logits.astype(mx.float32)
    losses = mx.maximum(logits, 0) - targets * logits + mx.log1p(mx.exp(-mx.abs(logits)))
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.mean()


def mean_squared_error(predictions: mx.array, targets: mx.array, reduction: str = "mean") -> mx.array:
    """Regression loss ``(prediction - target)^2``; ``(B, 1)`` predictions are squeezed
    to ``(B,)`` targets (as transformers' single-output regression)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")
    if predictions.ndim == targets.ndim + 1 and predictions.shape[-1] == 1:
        predictions = predictions.squeeze(-1)
    if predictions.shape != targets.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} differ in shape")
    losses = (predictions.astype(mx.float32) - targets) ** 2
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.mean()
