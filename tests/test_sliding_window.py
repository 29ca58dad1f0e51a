"""The blocks Gemma added, against their formulas in NumPy: sliding-window masks (no
cache, `KVCache`, `RotatingKVCache` with left padding, the server's `BatchKVCache`),
soft-capped attention, the ``(1 + w)`` RMSNorm and sandwich norms."""

import mlx.core as mx
import numpy as np
import pytest

from mlx_llm.blocks.attention import MultiHeadAttention, attention_weights
from mlx_llm.blocks.cache import KVCache, RotatingKVCache, make_decoder_cache
from mlx_llm.blocks.masks import create_attention_mask
from mlx_llm.blocks.norms import UnitOffsetRMSNorm, make_norm
from mlx_llm.serve.batch_cache import BatchKVCache
from mlx_llm.blocks.transformer import TransformerEncoderLayer

RNG = np.random.default_rng(0)


def window_formula(query_length: int, offset: int, window: int) -> np.ndarray:
    """Query at ``p`` sees ``p - window < k <= p`` (transformers' sliding_window_overlay)."""
    queries = np.arange(offset, offset + query_length)[:, None]
    keys = np.arange(offset + query_length)[None, :]
    return (keys <= queries) & (keys > queries - window)


@pytest.mark.parametrize("query_length, offset", [(12, 0), (1, 9), (3, 7), (2, 1)])
def test_window_mask_formula(query_length, offset):
    mask = create_attention_mask(query_length, None, causal=True, offset=offset, window_size=4)
    expected = window_formula(query_length, offset, 4)
    if offset + query_length <= 4:  # everything inside the window: plain causal
        assert mask in ("causal", None)
    else:
        np.testing.assert_array_equal(np.array(mask), expected)
    padded = mx.array([[0] * 2 + [1] * (offset + query_length - 2)])
    with_padding = np.array(create_attention_mask(query_length, padded, True, offset, 4))
    np.testing.assert_array_equal(with_padding[0, 0], expected & (np.arange(offset + query_length) >= 2))


def outputs_with(cache, queries, keys, values, window, attention_mask=None):
    """Attention of new queries through ``cache`` with the cache's own mask."""
    mask = cache.make_mask(queries.shape[2], attention_mask, window_size=window)
    held_keys, held_values = cache.update_and_fetch(keys, values)
    weights = attention_weights(queries, held_keys, mask=mask if mask is not None else None)
    return np.array(weights @ held_values)


@pytest.mark.parametrize("padding", [None, [0, 5]])
def test_rotating_cache_equals_full_cache_with_window(padding):
    """A `RotatingKVCache` of W positions gives what a full `KVCache` masked to the window
    gives, through a long prefill, short chunks and single tokens, with left padding too."""
    left = None if padding is None else mx.array(padding)
    full, rotating = KVCache(left_padding=left), RotatingKVCache(4, keep=0, left_padding=left)
    total = 0
    for size in [6, 1, 3, 1, 1, 2, 1, 1, 1, 1]:
        queries, keys, values = (mx.array(RNG.normal(size=(2, 2, size, 8)).astype(np.float32)) for _ in range(3))
        total += size
        attention_mask = None if padding is None else mx.array(
            [[0] * pad + [1] * (total - pad) for pad in padding])
        expected = outputs_with(full, queries, keys, values, 4, attention_mask)
        got = outputs_with(rotating, queries, keys, values, 4, attention_mask)
        if padding is not None:  # rows whose queries are all padding have no defined output
            expected, got = expected[:, :, -1:], got[:, :, -1:]
        np.testing.assert_allclose(got, expected, atol=1e-6)
    assert rotating.state[0].shape[2] == 4 and full.state[0].shape[2] == total
    if padding is not None:
        np.testing.assert_array_equal(np.array(rotating.position_offset), [total, total - 5])


def test_batch_cache_window_mask():
    cache = BatchKVCache()
    keys = mx.zeros((2, 1, 6, 4))
    cache.set_rows(keys, keys, 6, [0, 2])
    mask = np.array(cache.make_mask(1, window_size=3))  # query at 6 sees 4, 5, 6 (and no padding)
    np.testing.assert_array_equal(mask[:, 0, 0], [[0, 0, 0, 0, 1, 1, 1]] * 2)


def test_make_decoder_cache_windows():
    caches = make_decoder_cache(3, windows=[4, None, 4])
    assert [type(cache) for cache in caches] == [RotatingKVCache, KVCache, RotatingKVCache]
    bounded = make_decoder_cache(2, max_kv_size=3, windows=[4, None])
    assert [cache.max_size for cache in bounded] == [3, 3]
    with pytest.raises(ValueError, match="2 windows for 3 layers"):
        make_decoder_cache(3, windows=[4, None])


def test_soft_capped_attention_formula():
    queries, keys = (mx.array(RNG.normal(size=(1, 2, 5, 4)).astype(np.float32) * 3) for _ in range(2))
    weights = np.array(attention_weights(queries, keys, mask="causal", scale=0.5, softcap=2.0))
    scores = 0.5 * np.array(queries) @ np.array(keys).swapaxes(-1, -2)
    scores = 2.0 * np.tanh(scores / 2.0) + np.where(np.tril(np.ones((5, 5))) > 0, 0, -np.inf)
    expected = np.exp(scores - scores.max(-1, keepdims=True))
    np.testing.assert_allclose(weights, expected / expected.sum(-1, keepdims=True), atol=1e-6)
    attention = MultiHeadAttention(8, 2, head_dim=4, logit_softcap=2.0)
    with pytest.raises(ValueError, match="logit_softcap must be positive"):
        MultiHeadAttention(8, 2, logit_softcap=0.0)
    hidden = mx.array(RNG.normal(size=(1, 5, 8)).astype(np.float32))
    q, k, v = attention.project(hidden)
    capped = attention_weights(q, k, mask="causal", scale=attention.scale, softcap=2.0) @ v
    expected = attention.o_proj(capped.transpose(0, 2, 1, 3).reshape(1, 5, 8))
    np.testing.assert_allclose(np.array(attention(hidden, mask="causal")), np.array(expected), atol=1e-6)


def test_unit_offset_rms_norm_and_sandwich_layer():
    norm = UnitOffsetRMSNorm(6, eps=1e-6)
    norm.weight = mx.array(RNG.normal(size=6).astype(np.float32))
    x = RNG.normal(size=(2, 3, 6)).astype(np.float32)
    expected = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-6) * (1 + np.array(norm.weight))
    np.testing.assert_allclose(np.array(norm(mx.array(x))), expected, atol=1e-5)
    assert isinstance(make_norm("rmsnorm_unit_offset", 6, 1e-6), UnitOffsetRMSNorm)
    layer = TransformerEncoderLayer(8, 2, 12, norm="rmsnorm_unit_offset", norm_first=True, norm_output=True,
                                    gated=True, bias=False, qk_norm="head")
    assert isinstance(layer.self_attn.q_norm, UnitOffsetRMSNorm)
    hidden = mx.array(RNG.normal(size=(1, 4, 8)).astype(np.float32))
    h = hidden + layer.self_attn_output_norm(layer.self_attn(layer.self_attn_norm(hidden), mask="causal"))
    expected = h + layer.feed_forward_output_norm(layer.feed_forward(layer.feed_forward_norm(h)))
    np.testing.assert_allclose(np.array(layer(hidden, mask="causal")), np.array(expected), atol=1e-6)
