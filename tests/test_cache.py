"""KV cache: storage behaviour, and incremental decoding equals full attention."""

import mlx.core as mx
import numpy as np
import pytest

from mlx_llm import (
    KVCache,
    MultiHeadAttention,
    RotaryEmbedding,
    TransformerDecoder,
    TransformerEncoder,
    create_attention_mask,
)


def test_append_fetch_trim_and_step_growth():
    cache = KVCache(step=4)
    keys = mx.random.normal((2, 3, 5, 8))
    values = mx.random.normal((2, 3, 5, 6))
    k, v = cache.update_and_fetch(keys[:, :, :3], values[:, :, :3])
    assert cache.offset == 3 and k.shape == (2, 3, 3, 8) and v.shape == (2, 3, 3, 6)
    assert cache.keys.shape[2] == 4  # one step allocated
    k, v = cache.update_and_fetch(keys[:, :, 3:], values[:, :, 3:])
    assert cache.offset == 5 and cache.keys.shape[2] == 8  # grew by one step, not per token
    np.testing.assert_array_equal(np.array(k), np.array(keys))
    np.testing.assert_array_equal(np.array(v), np.array(values))
    assert cache.trim(2) == 2 and cache.offset == 3
    np.testing.assert_array_equal(np.array(cache.state[0]), np.array(keys[:, :, :3]))
    k, _ = cache.update_and_fetch(keys[:, :, 4:5], values[:, :, 4:5])  # overwrite after trim
    np.testing.assert_array_equal(np.array(k[:, :, 3]), np.array(keys[:, :, 4]))
    assert cache.trim(100) == 4 and cache.offset == 0
    cache.reset()
    assert cache.state == (None, None) and cache.nbytes == 0


def test_cache_rejects_mismatched_shapes():
    cache = KVCache()
    cache.update_and_fetch(mx.zeros((1, 2, 3, 4)), mx.zeros((1, 2, 3, 4)))
    with pytest.raises(ValueError, match=r"holds keys of shape \(1, 2, 256, 4\).*\(2, 2, 1, 4\)"):
        cache.update_and_fetch(mx.zeros((2, 2, 1, 4)), mx.zeros((2, 2, 1, 4)))
    with pytest.raises(ValueError, match="takes keys"):
        cache.update_and_fetch(mx.zeros((1, 2, 3, 4)), mx.zeros((1, 2, 2, 4)))
    with pytest.raises(ValueError, match="non-negative"):
        cache.trim(-1)


@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("kv_heads", [4, 1])
def test_incremental_attention_equals_full_causal_attention(rope, kv_heads):
    hidden, length = 16, 9
    mha = MultiHeadAttention(
        hidden, 4, num_kv_heads=kv_heads, bias=True, rope=RotaryEmbedding(4) if rope else None
    )
    x = mx.random.normal((2, length, hidden))
    full = np.array(mha(x, mask="causal"))
    cache = KVCache(step=4)  # several growth steps within the sequence
    # A 3-token prompt, then one token at a time.
    pieces = [mha(x[:, :3], mask=create_attention_mask(3, causal=True), cache=cache)]
    for t in range(3, length):
        pieces.append(mha(x[:, t : t + 1], mask=create_attention_mask(1, causal=True, offset=t), cache=cache))
    incremental = np.concatenate([np.array(p) for p in pieces], axis=1)
    np.testing.assert_allclose(incremental, full, atol=1e-5)
    assert cache.offset == length


def test_incremental_with_padding_mask_equals_full():
    hidden, length = 8, 6
    encoder = TransformerEncoder(2, hidden, 2, 16, norm_first=True, dropout=0.0)
    x = mx.random.normal((2, length, hidden))
    attention_mask = mx.array([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])  # left padding
    full = np.array(encoder(x, mask=create_attention_mask(length, attention_mask, causal=True)))
    cache = encoder.make_cache()
    outputs = []
    for t in range(length):
        mask = create_attention_mask(1, attention_mask[:, : t + 1], causal=True, offset=t)
        outputs.append(np.array(encoder(x[:, t : t + 1], mask=mask, cache=cache)))
    incremental = np.concatenate(outputs, axis=1)
    # Left-padding query rows attend to nothing; compare the real tokens.
    np.testing.assert_allclose(incremental[0, 2:], full[0, 2:], atol=1e-5)
    np.testing.assert_allclose(incremental[1], full[1], atol=1e-5)


def test_decoder_stack_incremental_equals_full_with_cross_attention_cache():
    hidden, length = 16, 7
    decoder = TransformerDecoder(2, hidden, 4, 32, dropout=0.0)
    memory = mx.random.normal((2, 5, hidden))
    memory_mask = mx.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])[:, None, None, :].astype(mx.bool_)
    x = mx.random.normal((2, length, hidden))
    full = np.array(decoder(x, memory, mask="causal", memory_mask=memory_mask))
    cache = decoder.make_cache()
    steps = [
        np.array(decoder(x[:, t : t + 1], memory, memory_mask=memory_mask, cache=cache))
        for t in range(length)
    ]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)
    self_cache, cross_cache = cache[0]
    assert self_cache.offset == length and cross_cache.offset == 5  # encoder K/V projected once


def sink_window_mask(length: int, max_size: int, keep: int) -> np.ndarray:
    """Causal, and each query sees the first `keep` positions plus the last max_size - keep up to itself."""
    query = np.arange(length)[:, None]
    key = np.arange(length)[None, :]
    return (key <= query) & ((key < keep) | (key > query - (max_size - keep)))


@pytest.mark.parametrize("keep", [0, 2])
@pytest.mark.parametrize("chunks", [[1] * 20, [5] + [1] * 15, [3, 1, 1, 6, 1, 1, 4, 1, 1, 1]])
def test_rotating_cache_equals_sink_and_window_attention(keep, chunks):
    from mlx_llm.blocks.cache import RotatingKVCache

    hidden, max_size = 16, 7
    length = sum(chunks)
    mha = MultiHeadAttention(hidden, 4, num_kv_heads=2, rope=RotaryEmbedding(4))
    x = mx.random.normal((1, length, hidden))
    expected = np.array(mha(x, mask=mx.array(sink_window_mask(length, max_size, keep))))
    cache = RotatingKVCache(max_size, keep=keep, step=3)
    outputs, start = [], 0
    for size in chunks:
        mask = cache.make_mask(size)
        outputs.append(np.array(mha(x[:, start : start + size], mask=mask, cache=cache)))
        start += size
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), expected, atol=1e-5)
    assert cache.offset == length and cache.keys.shape[2] == max_size  # memory stays bounded
    assert cache.trim(1) == 0  # evicted positions cannot come back


def test_rotating_cache_without_eviction_equals_plain_cache():
    from mlx_llm.blocks.cache import RotatingKVCache

    encoder = TransformerEncoder(2, 8, 2, 16, norm_first=True)
    x = mx.random.normal((1, 6, 8))
    full = np.array(encoder(x, mask="causal"))
    cache = [RotatingKVCache(32) for _ in range(2)]
    steps = [np.array(encoder(x[:, :2], mask=cache[0].make_mask(2), cache=cache))]
    steps += [np.array(encoder(x[:, t : t + 1], mask=cache[0].make_mask(1), cache=cache)) for t in range(2, 6)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)
    assert cache[0].trim(2) == 2 and cache[0].offset == 4
    with pytest.raises(ValueError, match="cannot hold padded batches"):
        cache[0].make_mask(1, mx.array([[1, 0, 1, 1, 1]]))
    with pytest.raises(ValueError, match="max_size >= 2"):
        RotatingKVCache(1)
