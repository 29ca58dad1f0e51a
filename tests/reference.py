"""NumPy implementations of the textbook formulas, used as references."""

import mlx.core as mx
import numpy as np


def to_numpy(array: mx.array) -> np.ndarray:
    if array.dtype in (mx.bfloat16, mx.float16):
        array = array.astype(mx.float32)
    return np.array(array)


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def attention(q, k, v, mask=None, scale=None):
    """alpha_ij = softmax_j(q_i . k_j / sqrt(d_k)); o_i = sum_j alpha_ij v_j.

    q (B, H, L, D), k/v (B, H, S, D); boolean mask True = attend. Returns (output, weights)
    computed in float64, with rows that allow no key set to zero.
    """
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    scores = np.einsum("bhld,bhsd->bhls", q, k) * scale
    if mask is not None:
        mask = np.broadcast_to(mask, scores.shape)
        scores = np.where(mask, scores, -np.inf)
    with np.errstate(invalid="ignore"):
        weights = softmax(scores)
    weights = np.nan_to_num(weights, nan=0.0)
    return np.einsum("bhls,bhsd->bhld", weights, v), weights


def layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def gelu_exact(x):
    from math import erf

    return x * 0.5 * (1.0 + np.vectorize(erf)(x / np.sqrt(2.0)))


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def silu(x):
    return x / (1.0 + np.exp(-x))


def rotate_half_rope(x, base=10000.0, offset=0):
    """Hugging Face / GPT-NeoX rotary embedding on (..., L, D)."""
    x = np.asarray(x, dtype=np.float64)
    length, dims = x.shape[-2:]
    inv_freq = 1.0 / base ** (np.arange(0, dims, 2) / dims)
    angles = np.arange(offset, offset + length)[:, None] * inv_freq[None]
    cos = np.concatenate([np.cos(angles)] * 2, axis=-1)
    sin = np.concatenate([np.sin(angles)] * 2, axis=-1)
    half = dims // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin
