"""Loss functions against NumPy."""

import mlx.core as mx
import numpy as np
import pytest

from mlx_llm import cross_entropy


def numpy_cross_entropy(logits, targets):
    logits = logits.astype(np.float64)
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    return log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]


def test_cross_entropy_matches_numpy_and_ignores_index():
    logits = mx.random.normal((2, 4, 7)) * 3
    targets = np.array([[1, 2, -100, 6], [0, -100, -100, 3]])
    per_token = numpy_cross_entropy(np.array(logits), np.maximum(targets, 0))
    keep = targets != -100
    np.testing.assert_allclose(
        np.array(cross_entropy(logits, mx.array(targets), reduction="none")), per_token * keep, atol=1e-5
    )
    np.testing.assert_allclose(float(cross_entropy(logits, mx.array(targets))), per_token[keep].mean(), atol=1e-5)
    np.testing.assert_allclose(
        float(cross_entropy(logits, mx.array(targets), reduction="sum")), per_token[keep].sum(), atol=1e-4
    )


def test_cross_entropy_golden_value_and_edge_cases():
    # Uniform logits over 4 classes: loss = log 4 exactly.
    assert float(cross_entropy(mx.zeros((3, 4)), mx.array([0, 1, 3]))) == pytest.approx(np.log(4), abs=1e-6)
    # Everything ignored: mean is 0, not NaN.
    assert float(cross_entropy(mx.zeros((2, 4)), mx.array([-100, -100]))) == 0.0
    # A -inf logit on a wrong class is harmless.
    logits = mx.array([[0.0, -mx.inf, 0.0]])
    assert float(cross_entropy(logits, mx.array([0]))) == pytest.approx(np.log(2), abs=1e-6)
    with pytest.raises(ValueError, match=r"need targets of shape \(2,\), got \(3,\)"):
        cross_entropy(mx.zeros((2, 4)), mx.array([0, 1, 2]))
    with pytest.raises(ValueError, match="unknown reduction 'avg'"):
        cross_entropy(mx.zeros((2, 4)), mx.array([0, 1]), reduction="avg")
