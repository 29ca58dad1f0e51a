"""Attention against the textbook formulas computed in NumPy."""

import math

import mlx.core as mx
import numpy as np
import pytest
from reference import attention as reference_attention
from reference import to_numpy

from mlx_llm import (
    KVCache,
    MultiHeadAttention,
    attention_weights,
    causal_mask,
    combine_masks,
    create_attention_mask,
    padding_mask,
    scaled_dot_product_attention,
)

B, H, L, D = 2, 3, 5, 8


def random_qkv(batch=B, heads=H, kv_heads=None, queries=L, keys=L, dims=D):
    kv_heads = heads if kv_heads is None else kv_heads
    q = mx.random.normal((batch, heads, queries, dims))
    k = mx.random.normal((batch, kv_heads, keys, dims))
    v = mx.random.normal((batch, kv_heads, keys, dims))
    return q, k, v


def numpy_masks():
    causal = np.tril(np.ones((L, L), dtype=bool))
    pad = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=bool)[:, None, None, :]
    return {"none": None, "causal": causal, "padding": pad, "causal+padding": causal & pad}


@pytest.mark.parametrize("mask_name", ["none", "causal", "padding", "causal+padding"])
def test_sdpa_equals_textbook_formula(mask_name):
    q, k, v = random_qkv()
    mask = numpy_masks()[mask_name]
    expected, expected_weights = reference_attention(to_numpy(q), to_numpy(k), to_numpy(v), mask)
    mlx_mask = None if mask is None else mx.array(mask)
    output = scaled_dot_product_attention(q, k, v, mask=mlx_mask)
    np.testing.assert_allclose(to_numpy(output), expected, atol=1e-5, rtol=0)
    weights = attention_weights(q, k, mask=mlx_mask)
    np.testing.assert_allclose(to_numpy(weights), expected_weights, atol=1e-6, rtol=0)


def test_string_causal_equals_boolean_causal_and_builders():
    q, k, v = random_qkv()
    by_string = scaled_dot_product_attention(q, k, v, mask="causal")
    by_array = scaled_dot_product_attention(q, k, v, mask=causal_mask(L))
    np.testing.assert_allclose(to_numpy(by_string), to_numpy(by_array), atol=1e-6)
    np.testing.assert_array_equal(np.array(causal_mask(L)), np.tril(np.ones((L, L), dtype=bool)))


def test_additive_mask_equals_boolean_mask():
    q, k, v = random_qkv()
    boolean = mx.array(numpy_masks()["causal+padding"])
    additive = mx.where(boolean, 0.0, -1e9)
    np.testing.assert_allclose(
        to_numpy(scaled_dot_product_attention(q, k, v, mask=additive)),
        to_numpy(scaled_dot_product_attention(q, k, v, mask=boolean)),
        atol=1e-6,
    )


def test_masked_positions_get_exactly_zero_weight():
    q, k, v = random_qkv()
    mask = mx.array(numpy_masks()["causal+padding"])
    weights = np.array(attention_weights(q, k, mask=mask))
    assert np.all(weights[~np.broadcast_to(np.array(mask), weights.shape)] == 0.0)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-6)
    # The output cannot depend on masked keys or values: perturb them hugely.
    output = scaled_dot_product_attention(q, k, v, mask=mask)
    masked_keys = ~np.array(padding_mask(mx.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])))[:, 0, 0, :]
    noise = mx.array(np.where(masked_keys[:, None, :, None], 1e4, 0.0).astype(np.float32))
    perturbed = scaled_dot_product_attention(q, k + noise, v + noise, mask=mask)
    np.testing.assert_array_equal(np.array(perturbed), np.array(output))


def test_row_with_all_keys_masked_gives_zeros_not_nan():
    q, k, v = random_qkv()
    mask = np.ones((B, 1, L, L), dtype=bool)
    mask[0, 0, 2, :] = False  # query 2 of batch 0 may attend to nothing
    mask[1, 0, :, :] = False  # a sequence that is all padding
    output = np.array(scaled_dot_product_attention(q, k, v, mask=mx.array(mask)))
    assert not np.isnan(output).any()
    np.testing.assert_array_equal(output[0, :, 2], 0.0)
    np.testing.assert_array_equal(output[1], 0.0)
    expected, _ = reference_attention(to_numpy(q), to_numpy(k), to_numpy(v), mask)
    np.testing.assert_allclose(output, expected, atol=1e-5)
    weights = np.array(attention_weights(q, k, mask=mx.array(mask)))
    assert not np.isnan(weights).any() and np.all(weights[1] == 0.0)


def test_causal_mask_with_cache_offset_and_window():
    mask = np.array(causal_mask(2, offset=3))
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    windowed = np.array(causal_mask(3, window_size=2))
    np.testing.assert_array_equal(windowed, [[1, 0, 0], [1, 1, 0], [0, 1, 1]])
    # "causal" in MLX is lower-right aligned, i.e. the same as an offset causal mask.
    q, k, v = random_qkv(queries=2, keys=5)
    np.testing.assert_allclose(
        to_numpy(scaled_dot_product_attention(q, k, v, mask="causal")),
        to_numpy(scaled_dot_product_attention(q, k, v, mask=causal_mask(2, offset=3))),
        atol=1e-6,
    )


def test_create_attention_mask_forms():
    assert create_attention_mask(4) is None
    assert create_attention_mask(4, causal=True) == "causal"
    assert create_attention_mask(1, causal=True, offset=7) is None
    attention_mask = mx.array([[1, 1, 0], [1, 1, 1]])
    combined = np.array(create_attention_mask(3, attention_mask, causal=True))
    assert combined.shape == (2, 1, 3, 3)
    np.testing.assert_array_equal(combined[0, 0], [[1, 0, 0], [1, 1, 0], [1, 1, 0]])
    np.testing.assert_array_equal(
        np.array(combine_masks(causal_mask(3), padding_mask(attention_mask))), combined
    )
    assert combine_masks(None, None) is None


def make_mha(hidden=12, heads=4, kv_heads=None, bias=True):
    mha = MultiHeadAttention(hidden, heads, num_kv_heads=kv_heads, bias=bias)
    return mha


def test_mha_equals_per_head_attention_concat_times_wo():
    hidden, heads = 12, 4
    head_dim = hidden // heads
    mha = make_mha(hidden, heads)
    x = mx.random.normal((B, L, hidden))
    mask = mx.array(numpy_masks()["causal+padding"])
    output = np.array(mha(x, mask=mask))

    x_np = np.array(x, dtype=np.float64)
    params = {name: np.array(p, dtype=np.float64) for name, p in
              [("wq", mha.q_proj.weight), ("bq", mha.q_proj.bias), ("wk", mha.k_proj.weight),
               ("bk", mha.k_proj.bias), ("wv", mha.v_proj.weight), ("bv", mha.v_proj.bias),
               ("wo", mha.o_proj.weight), ("bo", mha.o_proj.bias)]}
    heads_out = []
    for h in range(heads):
        rows = slice(h * head_dim, (h + 1) * head_dim)
        q = x_np @ params["wq"][rows].T + params["bq"][rows]
        k = x_np @ params["wk"][rows].T + params["bk"][rows]
        v = x_np @ params["wv"][rows].T + params["bv"][rows]
        head, _ = reference_attention(q[:, None], k[:, None], v[:, None], np.array(mask))
        heads_out.append(head[:, 0])
    expected = np.concatenate(heads_out, axis=-1) @ params["wo"].T + params["bo"]
    np.testing.assert_allclose(output, expected, atol=1e-5)


@pytest.mark.parametrize("kv_heads, bias", [(None, True), (2, False)])
def test_fused_qkv_equals_separate_projections_with_stacked_rows(kv_heads, bias):
    hidden, heads = 16, 4
    separate = MultiHeadAttention(hidden, heads, num_kv_heads=kv_heads, bias=bias)
    fused = MultiHeadAttention(hidden, heads, num_kv_heads=kv_heads, bias=bias, fused_qkv=True)
    assert "q_proj" not in fused and fused.qkv_proj.weight.shape == (hidden + 2 * hidden * (kv_heads or heads) // heads,
                                                                     hidden)
    parts = [separate.q_proj, separate.k_proj, separate.v_proj]
    fused.qkv_proj.weight = mx.concatenate([part.weight for part in parts])
    if bias:
        fused.qkv_proj.bias = mx.concatenate([part.bias for part in parts])
    fused.o_proj = separate.o_proj
    x = mx.random.normal((B, L, hidden))
    np.testing.assert_allclose(np.array(fused(x, mask="causal")), np.array(separate(x, mask="causal")), atol=1e-6)
    for got, expected in zip(fused.project(x), separate.project(x)):
        np.testing.assert_allclose(np.array(got), np.array(expected), atol=1e-6)
    # Step by step through a cache, as in generation.
    cache_fused, cache_separate = KVCache(), KVCache()
    for start in range(L):
        step = x[:, start:start + 1]
        np.testing.assert_allclose(np.array(fused(step, cache=cache_fused)),
                                   np.array(separate(step, cache=cache_separate)), atol=1e-6)


def test_fused_qkv_is_self_attention_only():
    with pytest.raises(ValueError, match="key_value_size=8 differs from hidden_size=16; use separate projections"):
        MultiHeadAttention(16, 4, key_value_size=8, fused_qkv=True)
    fused = MultiHeadAttention(16, 4, fused_qkv=True)
    with pytest.raises(ValueError, match="fused qkv_proj and cannot attend to key_value_states"):
        fused(mx.zeros((1, 2, 16)), key_value_states=mx.zeros((1, 3, 16)))


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_grouped_query_attention_equals_mha_with_repeated_kv_heads(kv_heads):
    hidden, heads = 16, 4
    head_dim = hidden // heads
    gqa = MultiHeadAttention(hidden, heads, num_kv_heads=kv_heads, bias=False)
    mha = MultiHeadAttention(hidden, heads, bias=False)
    repeats = heads // kv_heads

    def repeat_heads(weight):  # (kv_heads * head_dim, in) -> (heads * head_dim, in)
        w = weight.reshape(kv_heads, head_dim, -1)
        return mx.repeat(w, repeats, axis=0).reshape(heads * head_dim, -1)

    mha.q_proj.weight = gqa.q_proj.weight
    mha.o_proj.weight = gqa.o_proj.weight
    mha.k_proj.weight = repeat_heads(gqa.k_proj.weight)
    mha.v_proj.weight = repeat_heads(gqa.v_proj.weight)
    assert gqa.k_proj.weight.shape == (kv_heads * head_dim, hidden)
    x = mx.random.normal((B, L, hidden))
    np.testing.assert_allclose(np.array(gqa(x, mask="causal")), np.array(mha(x, mask="causal")), atol=1e-5)


def test_cross_attention_and_key_value_size():
    mha = MultiHeadAttention(8, 2, key_value_size=6, bias=True)
    queries = mx.random.normal((B, 3, 8))
    memory = mx.random.normal((B, 7, 6))
    memory_mask = padding_mask(mx.array([[1] * 7, [1] * 4 + [0] * 3]))
    output = mha(queries, memory, mask=memory_mask)
    assert output.shape == (B, 3, 8)
    # Padding in the memory does not matter.
    changed = memory.at[1, 5].add(100.0)
    np.testing.assert_allclose(
        np.array(mha(queries, changed, mask=memory_mask))[1], np.array(output)[1], atol=1e-6
    )


@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16])
def test_half_precision_attention_close_to_float32(dtype):
    mha = make_mha(16, 4, kv_heads=2)
    x = mx.random.normal((B, L, 16))
    mask = mx.array(numpy_masks()["causal+padding"])
    reference = np.array(mha(x, mask=mask))
    mha.set_dtype(dtype)
    output = mha(x.astype(dtype), mask=mask)
    assert output.dtype == dtype
    tolerance = 2e-2 if dtype == mx.float16 else 8e-2
    np.testing.assert_allclose(to_numpy(output), reference, atol=tolerance)
    additive = mx.where(mask, 0.0, -1e4)  # float32 additive mask is cast to the compute dtype
    assert mha(x.astype(dtype), mask=additive).dtype == dtype


def test_bad_inputs_raise_value_error_naming_values():
    with pytest.raises(ValueError, match="hidden_size=10 is not divisible by num_heads=4"):
        MultiHeadAttention(10, 4)
    with pytest.raises(ValueError, match="num_heads=6 is not divisible by num_kv_heads=4"):
        MultiHeadAttention(12, 6, num_kv_heads=4)
    mha = MultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match=r"\(batch, length, 8\), got \(2, 5, 6\)"):
        mha(mx.zeros((2, 5, 6)))
    with pytest.raises(ValueError, match=r"mask of shape \(3, 3\) does not broadcast.*\(2, 2, 5, 5\)"):
        mha(mx.zeros((2, 5, 8)), mask=mx.ones((3, 3), dtype=mx.bool_))
    with pytest.raises(ValueError, match="mismatched attention shapes"):
        scaled_dot_product_attention(mx.zeros((1, 2, 3, 4)), mx.zeros((1, 2, 3, 5)), mx.zeros((1, 2, 3, 5)))
    with pytest.raises(ValueError, match="3 query heads cannot share 2"):
        scaled_dot_product_attention(mx.zeros((1, 3, 3, 4)), mx.zeros((1, 2, 3, 4)), mx.zeros((1, 2, 3, 4)))
    with pytest.raises(ValueError, match=r"queries \(B, H, L, D\)"):
        scaled_dot_product_attention(mx.zeros((3, 4)), mx.zeros((3, 4)), mx.zeros((3, 4)))
    with pytest.raises(ValueError, match="only string mask is 'causal'"):
        scaled_dot_product_attention(*random_qkv(), mask="full")
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(batch, length\)"):
        padding_mask(mx.ones((2, 1, 5)))
    with pytest.raises(ValueError, match="covers 4 positions but attention sees 5 keys"):
        create_attention_mask(5, mx.ones((1, 4)), causal=True)


def test_default_scale_is_inverse_sqrt_head_dim():
    q, k, v = random_qkv()
    explicit = scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(D))
    np.testing.assert_array_equal(np.array(scaled_dot_product_attention(q, k, v)), np.array(explicit))
    unscaled, _ = reference_attention(to_numpy(q), to_numpy(k), to_numpy(v), scale=1.0)
    np.testing.assert_allclose(to_numpy(scaled_dot_product_attention(q, k, v, scale=1.0)), unscaled, atol=1e-5)


def test_attention_dropout_drops_probabilities_in_training_only():
    mx.random.seed(0)
    attention = MultiHeadAttention(16, 4, num_kv_heads=2, dropout=0.25)
    hidden = mx.random.normal((2, 5, 16))
    mask = mx.array([[True] * 5, [True] * 3 + [False] * 2])[:, None, None, :]
    attention.eval()
    plain = MultiHeadAttention(16, 4, num_kv_heads=2)
    from mlx.utils import tree_flatten

    plain.load_weights(tree_flatten(attention.parameters()))
    np.testing.assert_allclose(np.array(attention(hidden, mask=mask)), np.array(plain(hidden, mask=mask)), atol=1e-6)
    attention.train()
    mx.random.seed(7)
    output = attention(hidden, mask=mask)
    # The same computation by hand: probabilities, a Bernoulli keep mask scaled by 1 / (1 - p), then V and W^O.
    queries = attention._split_heads(attention.q_proj(hidden), 4)
    keys = attention._split_heads(attention.k_proj(hidden), 2)
    values = mx.repeat(attention._split_heads(attention.v_proj(hidden), 2), 2, axis=1)
    weights = attention_weights(queries, keys, mask=mask, scale=attention.scale)
    mx.random.seed(7)
    keep = mx.random.bernoulli(0.75, weights.shape)
    expected = ((weights * keep / 0.75) @ values).transpose(0, 2, 1, 3).reshape(2, 5, 16)
    np.testing.assert_allclose(np.array(output), np.array(attention.o_proj(expected)), atol=1e-5)
    assert not np.allclose(np.array(output), np.array(plain(hidden, mask=mask)), atol=1e-3)
    with pytest.raises(ValueError, match=r"attention dropout must be in \[0, 1\)"):
        MultiHeadAttention(16, 4, dropout=1.0)
