"""Loss functions: pure functions of logits and targets."""

from __future__ import annotations

import math
from typing import Callable

import mlx.core as mx

REDUCTIONS = ("mean", "sum", "none")
# Targets and labels equal to this are not scored (Hugging Face's and PyTorch's convention).
IGNORE_INDEX = -100


def cross_entropy(
    logits: mx.array,
    targets: mx.array,
    ignore_index: int = IGNORE_INDEX,
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
    _check_reduction(reduction)
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


def causal_lm_loss(logits: mx.array, labels: mx.array, ignore_index: int = IGNORE_INDEX, reduction: str = "mean") -> mx.array:
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


def masked_lm_loss(logits: mx.array, labels: mx.array, ignore_index: int = IGNORE_INDEX, reduction: str = "mean") -> mx.array:
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
    _check_reduction(reduction)
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
    _check_reduction(reduction)
    if predictions.ndim == targets.ndim + 1 and predictions.shape[-1] == 1:
        predictions = predictions.squeeze(-1)
    if predictions.shape != targets.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} differ in shape")
    losses = (predictions.astype(mx.float32) - targets) ** 2
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.mean()


# --- Knowledge distillation -------------------------------------------------
#
# Distillation losses compare a student with a fixed teacher: every one of them
# applies ``mx.stop_gradient`` to the teacher side, so a training step may pass
# teacher outputs straight from the teacher's forward pass.

# TinyBERT treats attention scores at or below this value as masked (BERT adds
# -10000, newer code the dtype minimum, to the scores of padding keys).
MASKED_SCORE_THRESHOLD = -1e2


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")


def _check_pair(student: mx.array, teacher: mx.array, named: str, widths: str) -> None:
    """``ValueError`` unless ``student`` and ``teacher`` have one shape.

    ``named`` and ``widths`` are `str.format` templates over the two shapes ``s`` and
    ``t`` and their last axes ``s_last`` and ``t_last``: ``named`` names both arrays (the
    message adds ``differ in shape``); ``widths`` is the message when only the last
    axis (classes, width) differs.
    """
    if student.shape == teacher.shape:
        return
    s, t = tuple(student.shape), tuple(teacher.shape)
    if s[:-1] == t[:-1] and student.ndim > 0:
        raise ValueError(widths.format(s=s, t=t, s_last=s[-1], t_last=t[-1]))
    raise ValueError(named.format(s=s, t=t) + " differ in shape")


def _check_logit_pair(student_logits: mx.array, teacher_logits: mx.array) -> None:
    named = "student logits {s} and teacher logits {t}"
    _check_pair(student_logits, teacher_logits, named,
                named + ": student has {s_last} classes, teacher {t_last}: logit losses need the same vocabulary")


def _check_hidden_pair(student_hidden: mx.array, teacher_hidden: mx.array, loss_name: str) -> None:
    _check_pair(student_hidden, teacher_hidden, loss_name + ": student hidden states {s} and teacher {t}",
                loss_name + ": student hidden states {s} are {s_last} wide, teacher {t} {t_last}: project the student "
                "first (nn.Linear({s_last}, {t_last}))")


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _position_mask(mask, positions_shape: tuple) -> mx.array | None:
    """``mask`` as a boolean ``positions_shape`` array (None stays None)."""
    if mask is None:
        return None
    if tuple(mask.shape) != tuple(positions_shape):
        raise ValueError(f"mask of shape {tuple(mask.shape)} must have the positions shape {tuple(positions_shape)}")
    return mask.astype(mx.bool_)


def _reduce_positions(losses: mx.array, keep: mx.array | None, reduction: str, per_position: int = 1) -> mx.array:
    """Reduce float32 ``losses`` over the kept positions.

    ``per_position`` is the number of loss entries per position (``D`` when
    ``losses`` is per feature), so ``"mean"`` divides by counted entries.
    """
    if keep is not None:
        # where, not multiply: an inf at a masked-out position must not become NaN.
        losses = mx.where(keep.reshape(keep.shape + (1,) * (losses.ndim - keep.ndim)), losses, 0.0)
    if reduction == "none":
        return losses
    total = losses.sum()
    if reduction == "sum":
        return total
    count = keep.sum() if keep is not None else mx.array(losses.size // per_position)
    return total / mx.maximum(count * per_position, 1)


def _log_probs(logits: mx.array, temperature: float) -> mx.array:
    """float32 ``log softmax(logits / T)`` over the last axis."""
    scaled = logits.astype(mx.float32) / temperature
    return scaled - mx.logsumexp(scaled, axis=-1, keepdims=True)


def _kl_from_log_probs(log_p: mx.array, log_q: mx.array) -> mx.array:
    """``sum_c p_c (log p_c - log q_c)`` over the last axis, with ``0 log 0 = 0``.

    The difference is zeroed where ``p = 0`` before multiplying, so a ``-inf``
    log-probability gives neither a NaN value nor a NaN gradient.
    """
    p = mx.exp(log_p)
    difference = mx.where(p > 0, log_p - log_q, 0.0)
    return (p * difference).sum(axis=-1)


def _position_divergence(divergence: Callable[[mx.array, mx.array], mx.array], student_logits, teacher_logits,
                         mask, temperature: float, reduction: str) -> mx.array:
    """A divergence of the two distributions at ``temperature``, reduced over the positions.

    Checks the inputs, computes ``log p_t`` (without gradient) and ``log p_s``,
    float32 ``(..., C)``, and reduces ``divergence(log p_t, log p_s)``, one
    value ``(...)`` per position, over the positions ``mask`` keeps.
    """
    _check_reduction(reduction)
    _check_logit_pair(student_logits, teacher_logits)
    _check_temperature(temperature)
    keep = _position_mask(mask, student_logits.shape[:-1])
    teacher_log_probs = _log_probs(mx.stop_gradient(teacher_logits), temperature)
    losses = divergence(teacher_log_probs, _log_probs(student_logits, temperature))
    return _reduce_positions(losses, keep, reduction)


def forward_kl(student_logits: mx.array, teacher_logits: mx.array, mask: mx.array | None = None,
               temperature: float = 1.0, reduction: str = "mean") -> mx.array:
    """Forward KL ``KL(p_t || p_s) = sum_c p_t (log p_t - log p_s)``, ``p = softmax(logits / T)``.

    Mode-covering: the student is pushed to put mass wherever the teacher does.
    Not multiplied by ``T^2``: ``soft_target_loss(T) == T^2 * forward_kl(T)``.
    The teacher receives no gradient.

    Args:
        student_logits: ``(..., C)`` student scores.
        teacher_logits: ``(..., C)`` teacher scores (same classes).
        mask: Optional ``(...)`` boolean or 0/1 array; positions where it is
            false (padding, unmasked MLM tokens) contribute nothing.
        temperature: Softmax temperature ``T > 0`` applied to both sides.
        reduction: ``"mean"`` over counted positions, ``"sum"``, or ``"none"``
            (per position, 0 where masked out).

    Returns:
        A float32 scalar, or a ``(...)`` array for ``"none"``.
    """
    return _position_divergence(_kl_from_log_probs, student_logits, teacher_logits, mask, temperature, reduction)


def reverse_kl(student_logits: mx.array, teacher_logits: mx.array, mask: mx.array | None = None,
               temperature: float = 1.0, reduction: str = "mean") -> mx.array:
    """Reverse KL ``KL(p_s || p_t) = sum_c p_s (log p_s - log p_t)``, ``p = softmax(logits / T)``.

    Mode-seeking (MiniLLM, GKD): the student may drop teacher modes but is
    punished for mass where the teacher has little. Infinite when the student
    puts mass on a class the teacher gives ``-inf``. The teacher receives no
    gradient.

    Args and Returns: as for `forward_kl`.
    """
    def student_to_teacher(teacher_log_probs: mx.array, student_log_probs: mx.array) -> mx.array:
        return _kl_from_log_probs(student_log_probs, teacher_log_probs)

    return _position_divergence(student_to_teacher, student_logits, teacher_logits, mask, temperature, reduction)


def soft_target_loss(
    student_logits: mx.array,
    teacher_logits: mx.array,
    temperature: float = 2.0,
    mask: mx.array | None = None,
    reduction: str = "mean",
) -> mx.array:
    """Hinton et al.'s soft-target loss ``T^2 * KL(p_t^T || p_s^T)``, ``p^T = softmax(logits / T)``.

    The ``T^2`` keeps the gradient, ``T (p_s^T - p_t^T)`` per logit, on the
    scale of the hard-label loss as ``T`` changes. Equal to
    ``temperature**2 * forward_kl(..., temperature=temperature)``. The teacher
    receives no gradient.

    Args:
        student_logits: ``(..., C)`` student scores.
        teacher_logits: ``(..., C)`` teacher scores (same classes).
        temperature: Softmax temperature ``T > 0``.
        mask: Optional ``(...)`` boolean or 0/1 array of positions that count
            (non-padding tokens, or masked-LM positions only).
        reduction: ``"mean"`` over counted positions (the batch mean for
            ``(B, C)`` logits), ``"sum"``, or ``"none"`` (per position, 0 where
            masked out).

    Returns:
        A float32 scalar, or a ``(...)`` array for ``"none"``.
    """
    kl = forward_kl(student_logits, teacher_logits, mask=mask, temperature=temperature, reduction=reduction)
    return kl * (temperature**2)


def jensen_shannon(
    student_logits: mx.array,
    teacher_logits: mx.array,
    beta: float = 0.5,
    mask: mx.array | None = None,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> mx.array:
    """Generalized Jensen-Shannon divergence of GKD (Agarwal et al., 2024).

    With teacher ``P``, student ``Q`` and ``M = beta P + (1 - beta) Q``::

        JSD(beta) = beta KL(P || M) + (1 - beta) KL(Q || M)

    ``beta = 0.5`` is the symmetric JSD, bounded by ``log 2``. As GKD notes, it
    interpolates between the two KLs: for ``beta -> 0``,
    ``JSD(beta) / beta -> KL(P || Q)`` (forward KL); for ``beta -> 1``,
    ``JSD(beta) / (1 - beta) -> KL(Q || P)`` (reverse KL). Use ``forward_kl`` or
    ``reverse_kl`` for the end points themselves. Finite whenever the logits
    are (also with ``-inf`` entries). The teacher receives no gradient.

    Args:
        beta: Teacher weight in the mixture, strictly between 0 and 1.
        student_logits, teacher_logits, mask, temperature, reduction: as for `forward_kl`.

    Returns:
        A float32 scalar, or a ``(...)`` array for ``"none"``.
    """
    if not 0 < beta < 1:
        raise ValueError(
            f"beta must be strictly between 0 and 1, got {beta}; use forward_kl (beta -> 0) or reverse_kl (beta -> 1)"
        )

    def divergence(teacher_log_probs: mx.array, student_log_probs: mx.array) -> mx.array:
        # log M = logaddexp(log beta + log P, log(1 - beta) + log Q); where both are
        # -inf, logaddexp's gradient is NaN, and M is never used there (P = Q = 0).
        both_zero = mx.isneginf(teacher_log_probs) & mx.isneginf(student_log_probs)
        log_mixture = mx.logaddexp(
            mx.where(both_zero, 0.0, teacher_log_probs) + math.log(beta),
            mx.where(both_zero, 0.0, student_log_probs) + math.log1p(-beta),
        )
        return beta * _kl_from_log_probs(teacher_log_probs, log_mixture) + (1 - beta) * _kl_from_log_probs(
            student_log_probs, log_mixture
        )

    return _position_divergence(divergence, student_logits, teacher_logits, mask, temperature, reduction)


def cosine_embedding_loss(
    student_hidden: mx.array,
    teacher_hidden: mx.array,
    mask: mx.array | None = None,
    reduction: str = "mean",
) -> mx.array:
    """DistilBERT's cosine loss ``1 - cos(h_s, h_t)`` per position.

    As ``torch.nn.CosineEmbeddingLoss`` with target 1:
    ``cos = h_s . h_t / sqrt((|h_s|^2 + eps) (|h_t|^2 + eps))``, ``eps = 1e-12``,
    so a zero vector gives a loss of 1, not NaN. The teacher receives no gradient.

    Args:
        student_hidden: ``(..., D)`` student hidden states.
        teacher_hidden: ``(..., D)`` teacher hidden states; a narrower student
            must be projected to ``D`` first.
        mask: Optional ``(...)`` boolean or 0/1 array of positions that count
            (DistilBERT uses the attention mask).
        reduction: ``"mean"`` over counted positions, ``"sum"``, or ``"none"``
            (per position, 0 where masked out).

    Returns:
        A float32 scalar, or a ``(...)`` array for ``"none"``.
    """
    _check_reduction(reduction)
    _check_hidden_pair(student_hidden, teacher_hidden, "cosine_embedding_loss")
    keep = _position_mask(mask, student_hidden.shape[:-1])
    student = student_hidden.astype(mx.float32)
    teacher = mx.stop_gradient(teacher_hidden).astype(mx.float32)
    eps = 1e-12
    dot = (student * teacher).sum(axis=-1)
    norms = mx.sqrt(((student * student).sum(axis=-1) + eps) * ((teacher * teacher).sum(axis=-1) + eps))
    return _reduce_positions(1.0 - dot / norms, keep, reduction)


def hidden_mse_loss(
    student_hidden: mx.array,
    teacher_hidden: mx.array,
    mask: mx.array | None = None,
    reduction: str = "mean",
) -> mx.array:
    """TinyBERT's hidden-state loss: ``(h_s - h_t)^2`` averaged over counted
    positions and the ``D`` features (``torch.nn.MSELoss`` over the selected
    elements).

    TinyBERT's learned projection ``W_h`` is not part of the loss: when the
    student is narrower, map it with an ``nn.Linear(d_student, d_teacher)``
    trained alongside the student and pass the projected states here. The
    teacher receives no gradient.

    Args:
        student_hidden: ``(..., D)`` (projected) student hidden states.
        teacher_hidden: ``(..., D)`` teacher hidden states.
        mask: Optional ``(...)`` boolean or 0/1 array of positions that count.
        reduction: ``"mean"`` over counted positions and features, ``"sum"``
            of the squared errors there, or ``"none"``: per element
            ``(..., D)``, 0 at masked-out positions.

    Returns:
        A float32 scalar, or a ``(..., D)`` array for ``"none"``.
    """
    _check_reduction(reduction)
    _check_hidden_pair(student_hidden, teacher_hidden, "hidden_mse_loss")
    keep = _position_mask(mask, student_hidden.shape[:-1])
    squared = (student_hidden.astype(mx.float32) - mx.stop_gradient(teacher_hidden).astype(mx.float32)) ** 2
    width = student_hidden.shape[-1] if student_hidden.ndim > 0 else 1
    return _reduce_positions(squared, keep, reduction, per_position=width)


def attention_score_mse_loss(
    student_scores: mx.array,
    teacher_scores: mx.array,
    attention_mask: mx.array | None = None,
) -> mx.array:
    """TinyBERT's attention loss: MSE between unnormalized attention scores.

    As TinyBERT's code, scores at or below ``MASKED_SCORE_THRESHOLD`` (-1e2,
    where the additive mask was applied) are replaced by 0 on each side, then
    the squared error is averaged over all ``B * H * L * L`` elements, zeros
    included. With ``attention_mask``, scores of padding keys and of padding
    queries are zeroed as well (padding query rows are never used downstream).
    The teacher receives no gradient.

    Args:
        student_scores: ``(B, H, L, L)`` pre-softmax scores ``q k^T / sqrt(d)``
            (mask added or not).
        teacher_scores: ``(B, H, L, L)``, the same number of heads; map student
            heads to teacher heads (or average them) before calling.
        attention_mask: Optional ``(B, L)``, 1 for real tokens, 0 for padding.

    Returns:
        A float32 scalar.
    """
    student_shape, teacher_shape = tuple(student_scores.shape), tuple(teacher_scores.shape)
    if student_scores.ndim != 4 or teacher_scores.ndim != 4:
        raise ValueError(
            f"attention scores must be (B, H, L, L), got student {student_shape} and teacher {teacher_shape}"
        )
    if student_shape[1] != teacher_shape[1]:
        raise ValueError(
            f"student scores {student_shape} have {student_shape[1]} heads, teacher {teacher_shape} "
            f"{teacher_shape[1]}: TinyBERT's attention loss needs the same number of heads"
        )
    if student_shape != teacher_shape:
        raise ValueError(f"student scores {student_shape} and teacher scores {teacher_shape} differ in shape")
    # TinyBERT's torch.where on each side separately: a score masked on one side
    # only still counts, against 0.
    student = student_scores.astype(mx.float32)
    teacher = mx.stop_gradient(teacher_scores).astype(mx.float32)
    student = mx.where(student <= MASKED_SCORE_THRESHOLD, 0.0, student)
    teacher = mx.where(teacher <= MASKED_SCORE_THRESHOLD, 0.0, teacher)
    if attention_mask is not None:
        batch, _, length, _ = student_shape
        if tuple(attention_mask.shape) != (batch, length):
            raise ValueError(
                f"attention_mask of shape {tuple(attention_mask.shape)} must be (B, L) = {(batch, length)} "
                f"for scores {student_shape}"
            )
        real = attention_mask.astype(mx.bool_)
        pairs = real[:, None, :, None] & real[:, None, None, :]  # (B, 1, L, L): real query and real key
        student = mx.where(pairs, student, 0.0)
        teacher = mx.where(pairs, teacher, 0.0)
    return ((student - teacher) ** 2).mean()


def pkd_loss(student_cls, teacher_cls) -> mx.array:
    """BERT-PKD's patient loss over matched layers (Sun et al., 2019):

        sum_k mean_b || s_kb / |s_kb| - t_kb / |t_kb| ||^2

    i.e. the squared L2 distance of the L2-normalized [CLS] states, summed over
    the ``K`` matched layers and averaged over the batch (the paper's equation;
    the released code's ``F.mse_loss`` further divides by ``K * D``).
    Normalization is ``x / max(|x|, 1e-12)`` (``F.normalize``). The teacher
    receives no gradient.

    Args:
        student_cls: list of ``K`` arrays ``(B, D)``, or a stacked ``(K, B, D)``.
        teacher_cls: the teacher's matched layers, same form and shapes.

    Returns:
        A float32 scalar.
    """
    student = _stack_layers(student_cls, "student")
    teacher = _stack_layers(teacher_cls, "teacher")
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"student has {student.shape[0]} matched layers, teacher {teacher.shape[0]}: pair them one to one"
        )
    if student.shape[-1] != teacher.shape[-1]:
        raise ValueError(
            f"student [CLS] states {tuple(student.shape)} are {student.shape[-1]} wide, teacher "
            f"{tuple(teacher.shape)} {teacher.shape[-1]}: project the student first"
        )
    if student.shape != teacher.shape:
        raise ValueError(
            f"student [CLS] states {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ in shape"
        )
    teacher = mx.stop_gradient(teacher)

    def normalize(states):  # (K, B, D)
        return states / mx.maximum(mx.linalg.norm(states, axis=-1, keepdims=True), 1e-12)

    distances = ((normalize(student) - normalize(teacher)) ** 2).sum(axis=-1)  # (K, B)
    return distances.mean(axis=-1).sum()


def _stack_layers(states, side: str) -> mx.array:
    """A list of ``(B, D)`` arrays or a ``(K, B, D)`` array as float32 ``(K, B, D)``."""
    if isinstance(states, mx.array):
        if states.ndim != 3:
            raise ValueError(f"{side} [CLS] states must be (K, B, D) or a list of (B, D), got {tuple(states.shape)}")
        return states.astype(mx.float32)
    states = list(states)
    if not states:
        raise ValueError(f"{side} has no matched layers")
    shapes = [tuple(layer.shape) for layer in states]
    if any(len(shape) != 2 for shape in shapes) or len(set(shapes)) != 1:
        raise ValueError(f"{side} [CLS] states must all be (B, D) of one shape, got {shapes}")
    return mx.stack(states).astype(mx.float32)
