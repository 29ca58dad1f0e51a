"""Evaluation metrics: pure Python and NumPy, no MLX.

Classification (accuracy, macro-F1), regression (MSE, Pearson, Spearman),
multi-label F1, entity-level scores for sequence labeling (as ``seqeval``
computes them) and perplexity.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# Tag prefixes each sequence-labeling scheme allows besides "O".
SCHEME_PREFIXES = {"IOB1": "BI", "IOB2": "BI", "IOBES": "BIES"}
SCHEME_ALIASES = {"BIOES": "IOBES"}
MODES = ("default", "strict")


def _paired_arrays(predictions, labels, what: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """Both sides as equal-length, non-empty 1-D arrays, or a ValueError saying why not."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.ndim != 1 or labels.ndim != 1:
        raise ValueError(
            f"predictions and {what} must be 1-D, got shapes {predictions.shape} and {labels.shape}"
        )
    if len(predictions) != len(labels):
        raise ValueError(f"got {len(predictions)} predictions for {len(labels)} {what}")
    if len(predictions) == 0:
        raise ValueError(f"predictions and {what} are empty; there is nothing to score")
    return predictions, labels


def _precision_recall_f1(num_correct: int, num_predicted: int, num_true: int) -> tuple[float, float, float]:
    """Precision, recall and F1 from counts; 0.0 wherever a denominator is 0."""
    precision = num_correct / num_predicted if num_predicted else 0.0
    recall = num_correct / num_true if num_true else 0.0
    # 2PR / (P + R) written with counts, so it is exact and needs no zero check on P + R.
    f1 = 2 * num_correct / (num_predicted + num_true) if num_correct else 0.0
    return precision, recall, f1


# --- single-label classification ---------------------------------------------


def accuracy(predictions, labels) -> float:
    """Fraction of predictions equal to their label.

    Args:
        predictions: Predicted class ids, a sequence or 1-D array.
        labels: True class ids, the same length.

    Returns:
        Accuracy in ``[0, 1]``.
    """
    predictions, labels = _paired_arrays(predictions, labels)
    return float(np.mean(predictions == labels))


def f1_scores(predictions, labels, num_labels: int | None = None) -> dict:
    """Per-class precision, recall, F1 and support, and their macro-F1.

    Classes are those that occur in ``labels`` or ``predictions``; a class
    never seen on either side is left out of the average, as scikit-learn's
    ``f1_score(average="macro", labels=<classes present>, zero_division=0)``.

    Args:
        predictions: Predicted class ids, a sequence or 1-D array.
        labels: True class ids, the same length.
        num_labels: If given, every id must lie in ``[0, num_labels)``.

    Returns:
        ``{"macro_f1": float, "per_class": {class: {"precision", "recall", "f1", "support"}}}``.
    """
    predictions, labels = _paired_arrays(predictions, labels)
    if num_labels is not None:
        for name, values in (("prediction", predictions), ("label", labels)):
            outside = values[(values < 0) | (values >= num_labels)]
            if len(outside):
                raise ValueError(f"{name} {outside[0].item()!r} is outside [0, {num_labels}) for num_labels={num_labels}")
    per_class = {}
    for cls in np.union1d(predictions, labels):
        is_predicted, is_true = predictions == cls, labels == cls
        precision, recall, f1 = _precision_recall_f1(
            int(np.sum(is_predicted & is_true)), int(is_predicted.sum()), int(is_true.sum())
        )
        per_class[cls.item()] = {"precision": precision, "recall": recall, "f1": f1, "support": int(is_true.sum())}
    macro = float(np.mean([scores["f1"] for scores in per_class.values()]))
    return {"macro_f1": macro, "per_class": per_class}


def macro_f1(predictions, labels) -> float:
    """Macro-averaged F1 over the classes present; see :func:`f1_scores`."""
    return f1_scores(predictions, labels)["macro_f1"]


def classification_metrics(predictions, labels, num_labels: int | None = None) -> dict:
    """Accuracy and macro-F1, plus the F1 of class 1 for binary tasks (as GLUE reports for MRPC and QQP).

    Args:
        predictions: Predicted class ids.
        labels: True class ids.
        num_labels: Number of classes; when omitted the task counts as binary
            if every id is 0 or 1.

    Returns:
        ``{"accuracy", "macro_f1"}``, and ``"f1"`` when the task is binary.
    """
    scores = f1_scores(predictions, labels, num_labels)
    metrics = {"accuracy": accuracy(predictions, labels), "macro_f1": scores["macro_f1"]}
    ids_seen = set(scores["per_class"])
    if num_labels == 2 or (num_labels is None and ids_seen <= {0, 1}):
        metrics["f1"] = scores["per_class"].get(1, {"f1": 0.0})["f1"]
    return metrics


# --- regression --------------------------------------------------------------


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; nan when either side is constant (undefined, as in SciPy)."""
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(np.sum(x * x) * np.sum(y * y)))
    return float(np.sum(x * y) / denominator) if denominator > 0 else math.nan


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks where tied values share the mean of the ranks they span."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts_run = np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]])
    run_index = np.cumsum(starts_run) - 1  # which run of equal values each sorted item is in
    run_starts = np.flatnonzero(starts_run)
    run_ends = np.append(run_starts[1:], len(values))  # exclusive
    ranks = np.empty(len(values))
    ranks[order] = ((run_starts + run_ends + 1) / 2)[run_index]
    return ranks


def regression_metrics(predictions, targets) -> dict:
    """Mean squared error and the Pearson and Spearman correlations (GLUE's STS-B metrics).

    Args:
        predictions: Predicted values, a sequence or 1-D array.
        targets: True values, the same length.

    Returns:
        ``{"mse", "pearson", "spearman"}``; a correlation is nan when either
        side is constant. Spearman gives tied values their average rank.
    """
    predictions, targets = _paired_arrays(predictions, targets, what="targets")
    predictions, targets = predictions.astype(np.float64), targets.astype(np.float64)
    return {
        "mse": float(np.mean((predictions - targets) ** 2)),
        "pearson": _pearson(predictions, targets),
        "spearman": _pearson(_average_ranks(predictions), _average_ranks(targets)),
    }


# --- multi-label classification ----------------------------------------------


def multilabel_metrics(probabilities_or_predictions, targets, threshold: float = 0.5) -> dict:
    """Micro-F1, macro-F1 and exact match for multi-label predictions.

    Args:
        probabilities_or_predictions: ``(N, L)`` probabilities or 0/1 predictions;
            a label is predicted where the value is ``>= threshold``
            (pass logits with ``threshold=0.0``).
        targets: ``(N, L)`` 0/1 targets.
        threshold: Decision threshold.

    Returns:
        ``{"micro_f1", "macro_f1", "exact_match"}``. Macro-F1 averages over the
        labels that are positive in some target or prediction; exact match is
        the fraction of rows with every label right.
    """
    scores, targets = np.asarray(probabilities_or_predictions), np.asarray(targets)
    if scores.ndim != 2 or scores.shape != targets.shape or scores.size == 0:
        raise ValueError(
            f"multilabel_metrics needs non-empty (N, L) predictions and targets of one shape, "
            f"got {scores.shape} and {targets.shape}"
        )
    predicted, true = scores >= threshold, targets.astype(bool)
    correct = predicted & true
    _, _, micro = _precision_recall_f1(int(correct.sum()), int(predicted.sum()), int(true.sum()))
    present = np.flatnonzero(predicted.any(axis=0) | true.any(axis=0))
    per_label = [
        _precision_recall_f1(int(correct[:, j].sum()), int(predicted[:, j].sum()), int(true[:, j].sum()))[2]
        for j in present
    ]
    return {
        "micro_f1": micro,
        "macro_f1": float(np.mean(per_label)) if per_label else 0.0,
        "exact_match": float(np.mean(np.all(predicted == true, axis=1))),
    }


# --- sequence labeling (entity level, as seqeval) -----------------------------


def _check_scheme_and_mode(scheme: str, mode: str) -> str:
    """The canonical scheme name, or a ValueError for an unknown scheme or mode."""
    scheme = SCHEME_ALIASES.get(scheme, scheme)
    if scheme not in SCHEME_PREFIXES:
        raise ValueError(f"unknown tagging scheme {scheme!r}; choose one of IOB2, IOBES (or BIOES), IOB1")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    if scheme == "IOB1" and mode == "strict":
        raise ValueError("strict mode is not supported for IOB1; convert the tags to IOB2 or use mode='default'")
    return scheme


def _parse_tags(tags: Sequence[str], scheme: str, where: str = "") -> list[tuple[str, str]]:
    """``(prefix, type)`` per tag, ``("O", "")`` for outside; a ValueError names a malformed tag."""
    parsed = []
    for position, tag in enumerate(tags):
        if tag == "O":
            parsed.append(("O", ""))
        elif isinstance(tag, str) and len(tag) > 2 and tag[0] in SCHEME_PREFIXES[scheme] and tag[1] == "-":
            parsed.append((tag[0], tag[2:]))
        else:
            allowed = ", ".join(f"{prefix}-" for prefix in SCHEME_PREFIXES[scheme])
            raise ValueError(
                f"bad tag {tag!r} at {where}position {position}: expected 'O' or {allowed} "
                f"followed by an entity type (scheme {scheme})"
            )
    return parsed


def _default_entities(parsed: list[tuple[str, str]]) -> list[tuple[str, int, int]]:
    """Chunks by conlleval's rules, as seqeval's default mode finds them."""
    entities, start = [], None
    previous_prefix, previous_type = "O", ""
    for position, (prefix, entity_type) in enumerate(parsed + [("O", "")]):
        # A chunk carries on only from B-/I- into I-/E- of the same type (so E- and S-
        # always end theirs); otherwise the open chunk closes, and any non-O tag, even
        # a stray I- or E-, opens a new one.
        continues = previous_prefix in "BI" and prefix in "IE" and previous_type == entity_type
        if start is not None and not continues:
            entities.append((previous_type, start, position - 1))
            start = None
        if prefix != "O" and not continues:
            start = position
        previous_prefix, previous_type = prefix, entity_type
    return entities


def _strict_entities(parsed: list[tuple[str, str]], scheme: str) -> list[tuple[str, int, int]]:
    """Only well-formed chunks: B I* in IOB2; B I* E or S in IOBES."""
    entities, position = [], 0
    while position < len(parsed):
        prefix, entity_type = parsed[position]
        if prefix == "S":
            entities.append((entity_type, position, position))
        elif prefix == "B":
            end = position
            while end + 1 < len(parsed) and parsed[end + 1] == ("I", entity_type):
                end += 1
            if scheme == "IOB2":
                entities.append((entity_type, position, end))
            elif end + 1 < len(parsed) and parsed[end + 1] == ("E", entity_type):
                end += 1
                entities.append((entity_type, position, end))
            position = end
        position += 1
    return entities


def get_entities(tags: Sequence[str], scheme: str = "IOB2", mode: str = "default") -> list[tuple[str, int, int]]:
    """Entities in one tag sequence.

    Args:
        tags: Tags of one sentence, like ``["B-PER", "I-PER", "O"]``.
        scheme: ``"IOB2"``, ``"IOBES"`` (alias ``"BIOES"``) or ``"IOB1"`` (default mode only).
        mode: ``"default"`` follows conlleval (an I- after O or after another
            type starts an entity); ``"strict"`` keeps only entities well formed
            in ``scheme``, as seqeval's strict mode.

    Returns:
        ``(type, start, end)`` tuples, ``end`` inclusive, in order of start.
    """
    scheme = _check_scheme_and_mode(scheme, mode)
    parsed = _parse_tags(tags, scheme)
    return _default_entities(parsed) if mode == "default" else _strict_entities(parsed, scheme)


def entity_scores(
    predicted_tag_seqs: Sequence[Sequence[str]],
    true_tag_seqs: Sequence[Sequence[str]],
    scheme: str = "IOB2",
    mode: str = "default",
) -> dict:
    """Entity-level micro precision, recall and F1, as ``seqeval`` computes them.

    An entity is correct only if its type, start and end all match, so a
    wrong boundary is both a false positive and a false negative. Entities
    never span two sentences.

    Args:
        predicted_tag_seqs: One tag sequence per sentence.
        true_tag_seqs: The true tags, same sentences and lengths.
        scheme: See :func:`get_entities`.
        mode: See :func:`get_entities`.

    Returns:
        ``{"precision", "recall", "f1", "per_type": {type: {"precision", "recall", "f1", "support"}}}``,
        support being the number of true entities; 0.0 wherever a denominator is 0.
    """
    scheme = _check_scheme_and_mode(scheme, mode)
    for name, sequences in (("predicted_tag_seqs", predicted_tag_seqs), ("true_tag_seqs", true_tag_seqs)):
        if isinstance(sequences, str) or any(isinstance(tags, str) for tags in sequences):
            raise ValueError(
                f"{name} must be a list of tag sequences, one per sentence; wrap a single sentence in a list"
            )
    if len(predicted_tag_seqs) != len(true_tag_seqs):
        raise ValueError(f"got {len(predicted_tag_seqs)} predicted sentences for {len(true_tag_seqs)} true ones")
    predicted, true = set(), set()  # (sentence, type, start, end)
    for sentence, (predicted_tags, true_tags) in enumerate(zip(predicted_tag_seqs, true_tag_seqs)):
        if len(predicted_tags) != len(true_tags):
            raise ValueError(
                f"sentence {sentence} has {len(predicted_tags)} predicted tags for {len(true_tags)} true tags"
            )
        for entities, tags in ((predicted, predicted_tags), (true, true_tags)):
            parsed = _parse_tags(tags, scheme, where=f"sentence {sentence}, ")
            found = _default_entities(parsed) if mode == "default" else _strict_entities(parsed, scheme)
            entities.update((sentence, *entity) for entity in found)

    per_type = {}
    for entity_type in sorted({entity[1] for entity in predicted | true}):
        predicted_of_type = {entity for entity in predicted if entity[1] == entity_type}
        true_of_type = {entity for entity in true if entity[1] == entity_type}
        precision, recall, f1 = _precision_recall_f1(
            len(predicted_of_type & true_of_type), len(predicted_of_type), len(true_of_type)
        )
        per_type[entity_type] = {"precision": precision, "recall": recall, "f1": f1, "support": len(true_of_type)}
    precision, recall, f1 = _precision_recall_f1(len(predicted & true), len(predicted), len(true))
    return {"precision": precision, "recall": recall, "f1": f1, "per_type": per_type}


# --- language modeling ---------------------------------------------------------


def perplexity(mean_loss: float) -> float:
    """``exp(mean_loss)``, the perplexity of a mean token cross-entropy in nats.

    Args:
        mean_loss: Mean negative log-likelihood per token.

    Returns:
        The perplexity; ``math.inf`` where ``exp`` would overflow (loss above about 709).
    """
    try:
        return math.exp(mean_loss)
    except OverflowError:
        return math.inf
