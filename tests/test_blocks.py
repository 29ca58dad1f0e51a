"""Feed-forward, positions, norms and layers against NumPy; gradients against
finite differences; half precision."""

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from reference import attention as reference_attention
from reference import gelu_exact, gelu_tanh, layer_norm, rotate_half_rope, silu, to_numpy

from mlx_llm import (
    EncoderDecoder,
    FeedForward,
    GatedFeedForward,
    LearnedPositionalEmbedding,
    MultiHeadAttention,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    SwiGLU,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
    get_activation,
    make_norm,
    scaled_dot_product_attention,
    sinusoidal_table,
)
from mlx_llm import backend


def linear(x, layer):
    out = x @ np.array(layer.weight, dtype=np.float64).T
    return out + np.array(layer.bias, dtype=np.float64) if "bias" in layer else out


@pytest.mark.parametrize(
    "activation, reference",
    [("relu", lambda x: np.maximum(x, 0)), ("gelu", gelu_exact), ("gelu_tanh", gelu_tanh), ("silu", silu)],
)
def test_feed_forward_equals_numpy(activation, reference):
    ffn = FeedForward(8, 32, activation=activation)
    x = mx.random.normal((2, 3, 8)) * 2
    x_np = np.array(x, dtype=np.float64)
    expected = linear(reference(linear(x_np, ffn.up_proj)), ffn.down_proj)
    np.testing.assert_allclose(np.array(ffn(x)), expected, atol=1e-5)


def test_swiglu_equals_numpy():
    ffn = SwiGLU(8, 24)
    assert isinstance(ffn, GatedFeedForward) and "bias" not in ffn.up_proj
    x = mx.random.normal((2, 3, 8))
    x_np = np.array(x, dtype=np.float64)
    expected = linear(silu(linear(x_np, ffn.gate_proj)) * linear(x_np, ffn.up_proj), ffn.down_proj)
    np.testing.assert_allclose(np.array(ffn(x)), expected, atol=1e-5)


@pytest.mark.parametrize("gated", [False, True])
def test_feed_forward_dropout_acts_between_the_products_in_training_only(gated):
    """``down(m * inner / (1 - p))`` with a 0/1 mask ``m``: undoing the (square, invertible) down
    projection of a training-mode output gives each inner activation either 0 or scaled by 1 / (1 - p)."""
    mx.random.seed(3)
    ffn = (GatedFeedForward(16, 16, activation="gelu_tanh", dropout=0.25) if gated
           else FeedForward(16, 16, activation="relu", dropout=0.25))
    x = mx.random.normal((4, 8, 16))
    x_np = np.array(x, dtype=np.float64)
    if gated:
        inner = gelu_tanh(linear(x_np, ffn.gate_proj)) * linear(x_np, ffn.up_proj)
    else:
        inner = np.maximum(linear(x_np, ffn.up_proj), 0)
    ffn.train()  # (modules start in training mode; said here for the reader)
    output = np.array(ffn(x), dtype=np.float64)
    bias = np.array(ffn.down_proj.bias, dtype=np.float64) if "bias" in ffn.down_proj else 0.0
    recovered = (output - bias) @ np.linalg.inv(np.array(ffn.down_proj.weight, dtype=np.float64)).T
    kept = np.abs(recovered - inner / 0.75) < 1e-3
    dropped = np.abs(recovered) < 1e-3
    assert np.all(kept | dropped)
    nonzero = np.abs(inner) > 1e-2  # (ReLU zeros are both)
    assert 0.15 < dropped[nonzero].mean() < 0.35  # about p of them
    ffn.eval()
    np.testing.assert_allclose(np.array(ffn(x)), linear(inner, ffn.down_proj), atol=1e-5)
    assert FeedForward(16, 16).dropout is None  # no dropout at all by default


def test_unknown_activation_and_norm_are_named():
    with pytest.raises(ValueError, match="unknown activation 'swish2'.*'gelu'"):
        get_activation("swish2")
    with pytest.raises(ValueError, match="unknown norm 'batchnorm'"):
        make_norm("batchnorm", 8, 1e-5)


def test_sinusoidal_table_formula():
    dims, positions = 16, 50
    table = np.array(sinusoidal_table(positions, dims))
    pos = np.arange(positions)[:, None]
    i = np.arange(dims // 2)[None]
    np.testing.assert_allclose(table[:, 0::2], np.sin(pos / 10000 ** (2 * i / dims)), atol=2e-5)
    np.testing.assert_allclose(table[:, 1::2], np.cos(pos / 10000 ** (2 * i / dims)), atol=2e-5)
    encoding = SinusoidalPositionalEncoding(dims, max_positions=positions)
    assert len(encoding.parameters()) == 0  # fixed, not trained
    np.testing.assert_array_equal(np.array(encoding(5, offset=7)), table[7:12])
    with pytest.raises(ValueError, match="covers 50 positions.*up to 50"):
        encoding(4, offset=47)
    with pytest.raises(ValueError, match="even width"):
        sinusoidal_table(4, 7)


def test_learned_positions():
    positions = LearnedPositionalEmbedding(10, 4)
    np.testing.assert_array_equal(np.array(positions(3, offset=2)), np.array(positions.embedding.weight[2:5]))
    ids = mx.array([[0, 9]])
    np.testing.assert_array_equal(np.array(positions(0, position_ids=ids))[0, 1], np.array(positions.embedding.weight[9]))
    with pytest.raises(ValueError, match="covers 10 positions"):
        positions(11)


@pytest.mark.parametrize("offset", [0, 5])
def test_rope_equals_rotate_half_formula_and_preserves_relative_scores(offset):
    rope = RotaryEmbedding(8, base=10000.0)
    x = mx.random.normal((1, 2, 6, 8))
    np.testing.assert_allclose(np.array(rope(x, offset=offset)), rotate_half_rope(np.array(x), offset=offset), atol=1e-5)
    # Explicit inverse frequencies give the same rotation as the base.
    inverse = 1.0 / 10000.0 ** (mx.arange(0, 8, 2) / 8)
    np.testing.assert_allclose(np.array(RotaryEmbedding(8, freqs=inverse)(x, offset=offset)),
                               np.array(rope(x, offset=offset)), atol=1e-5)
    # Scores depend on relative position only.
    q, k = mx.random.normal((1, 1, 1, 8)), mx.random.normal((1, 1, 1, 8))
    def score(i, j):
        return float((rope(q, offset=i) * rope(k, offset=j)).sum())
    assert score(3, 1) == pytest.approx(score(10, 8), abs=1e-4)
    # Partial rotary leaves the tail untouched.
    partial = RotaryEmbedding(4)(x, offset=offset)
    np.testing.assert_array_equal(np.array(partial[..., 4:]), np.array(x[..., 4:]))


def _rope64(x, dims, traditional, scale, inverse, offset):
    """Rotary embedding in float64 NumPy on the first ``dims`` features of (..., L, D)."""
    x = np.asarray(x, dtype=np.float64)
    length = x.shape[-2]
    angles = (np.arange(offset, offset + length) * scale)[:, None] * np.asarray(inverse, np.float64)[None]
    cos, sin = np.cos(angles), np.sin(angles)
    rotated, rest = x[..., :dims], x[..., dims:]
    if traditional:
        first, second = rotated[..., 0::2], rotated[..., 1::2]
        out = np.stack([first * cos - second * sin, second * cos + first * sin], axis=-1).reshape(rotated.shape)
    else:
        first, second = rotated[..., : dims // 2], rotated[..., dims // 2:]
        out = np.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    return np.concatenate([out, rest], axis=-1)


@pytest.mark.parametrize("traditional", [False, True])
@pytest.mark.parametrize("dims, scale, explicit", [(8, 1.0, False), (4, 1.0, False), (8, 0.5, False), (8, 1.0, True)])
@backend.cpu_kernels(True)  # the CPU branch itself, also when the suite runs with MLX_LLM_CPU_KERNELS=0
def test_rope_on_the_cpu_reads_a_table_equal_to_float64_and_to_mx_fast_rope(traditional, dims, scale, explicit):
    assert backend.cpu_kernels_enabled()
    inverse = 1.0 / 500.0 ** (np.arange(0, dims, 2) / dims)
    if explicit:  # given as a float32 array (Llama 3's scaled frequencies): those values are the frequencies
        inverse = np.array(mx.array(inverse * 0.7, mx.float32)).astype(np.float64)
        rope = RotaryEmbedding(dims, traditional=traditional, scale=scale, freqs=mx.array(inverse, mx.float32))
    else:
        rope = RotaryEmbedding(dims, base=500.0, traditional=traditional, scale=scale)
    x = mx.random.normal((2, 3, 5, 8))
    for offset in (0, 7, 6000):  # 6000: past the first table of 4096 positions, which then grows
        expected = _rope64(np.array(x), dims, traditional, scale, inverse, offset)
        np.testing.assert_allclose(np.array(rope(x, offset=offset)), expected, atol=2e-6)
        # mx.fast.rope (an array offset takes that path) agrees as far as its float32 angles allow.
        fast = np.array(rope(x, offset=mx.array(offset)))
        np.testing.assert_allclose(fast, expected, atol=2e-6 if offset < 100 else 2e-3)
    assert rope._table(1)[0].shape[0] == 8192
    half = rope(x.astype(mx.bfloat16), offset=7)
    assert half.dtype == mx.bfloat16
    np.testing.assert_allclose(np.array(half.astype(mx.float32)),
                               _rope64(np.array(x.astype(mx.bfloat16).astype(mx.float32)), dims, traditional, scale,
                                       inverse, 7), atol=3e-2)


@backend.cpu_kernels(True)
def test_rope_table_path_has_the_gradient_of_mx_fast_rope():
    rope = RotaryEmbedding(8, base=10000.0)
    x, cotangent = mx.random.normal((1, 2, 4, 8)), mx.random.normal((1, 2, 4, 8))
    table = mx.grad(lambda x: (rope(x, offset=3) * cotangent).sum())(x)
    assert rope._cos_sin is not None  # the table path did run
    fast = mx.grad(lambda x: (rope(x, offset=mx.array(3)) * cotangent).sum())(x)
    np.testing.assert_allclose(np.array(table), np.array(fast), atol=1e-5)


@pytest.mark.parametrize("traditional", [False, True])
def test_rope_with_the_cpu_kernels_off_is_mx_fast_rope(traditional):
    rope = RotaryEmbedding(4, base=500.0, traditional=traditional)
    x = mx.random.normal((2, 3, 5, 8))
    with backend.cpu_kernels(False):
        got = rope(x, offset=7)
    expected = mx.fast.rope(x, 4, traditional=traditional, base=500.0, scale=1.0, offset=7)
    np.testing.assert_array_equal(np.array(got), np.array(expected))
    assert rope._cos_sin is None  # no table was built


def reference_encoder_layer(layer, x, mask, norm_first):
    """The textbook layer in NumPy from the MLX layer's weights."""
    attn = layer.self_attn
    heads, head_dim = attn.num_heads, attn.head_dim

    def mha(h):
        q, k, v = (linear(h, p).reshape(*h.shape[:2], heads, head_dim).transpose(0, 2, 1, 3)
                   for p in (attn.q_proj, attn.k_proj, attn.v_proj))
        out, _ = reference_attention(q, k, v, mask)
        return linear(out.transpose(0, 2, 1, 3).reshape(*h.shape[:2], -1), attn.o_proj)

    def ffn(h):
        return linear(np.maximum(linear(h, layer.feed_forward.up_proj), 0), layer.feed_forward.down_proj)

    def norm(module, h):
        return layer_norm(h, np.array(module.weight, dtype=np.float64), np.array(module.bias, dtype=np.float64), module.eps)

    if norm_first:
        x = x + mha(norm(layer.self_attn_norm, x))
        return x + ffn(norm(layer.feed_forward_norm, x))
    x = norm(layer.self_attn_norm, x + mha(x))
    return norm(layer.feed_forward_norm, x + ffn(x))


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_layer_equals_textbook(norm_first):
    layer = TransformerEncoderLayer(12, 3, 24, norm_first=norm_first)
    x = mx.random.normal((2, 5, 12))
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=bool)[:, None, None, :]
    expected = reference_encoder_layer(layer, np.array(x, dtype=np.float64), mask, norm_first)
    np.testing.assert_allclose(np.array(layer(x, mask=mx.array(mask))), expected, atol=1e-5)


def test_layer_norm_layers_are_the_textbook_layer_sized_by_args():
    from types import SimpleNamespace

    from mlx_llm.blocks.transformer import layer_norm_layers

    args = SimpleNamespace(num_layers=2, hidden_size=12, num_heads=3, intermediate_size=24, activation="relu",
                           layer_norm_eps=1e-5, dropout=0.0, attention_dropout=0.0)
    layers = layer_norm_layers(args, norm_first=True)
    assert len(layers) == 2 and all("bias" in layer.self_attn.q_proj for layer in layers)
    x = mx.random.normal((1, 4, 12))
    expected = reference_encoder_layer(layers[1], np.array(x, dtype=np.float64), None, norm_first=True)
    np.testing.assert_allclose(np.array(layers[1](x)), expected, atol=1e-5)


def test_decoder_layer_structure_and_post_ln():
    layer = TransformerDecoderLayer(8, 2, 16, memory_size=6, bias=False, norm="rmsnorm")
    assert layer.cross_attn.key_value_size == 6 and "bias" not in layer.cross_attn.q_proj
    assert isinstance(layer.cross_attn_norm, nn.RMSNorm)
    x, memory = mx.random.normal((2, 4, 8)), mx.random.normal((2, 3, 6))
    out = layer(x, memory, mask="causal")
    assert out.shape == (2, 4, 8)
    # Post-LN with RMSNorm: every output row has unit RMS (norm weight is 1).
    np.testing.assert_allclose(np.sqrt((np.array(out) ** 2).mean(-1)), 1.0, atol=1e-3)
    # Causality: changing the last target position leaves earlier outputs unchanged.
    changed = layer(x.at[:, -1].add(5.0), memory, mask="causal")
    np.testing.assert_allclose(np.array(changed)[:, :-1], np.array(out)[:, :-1], atol=1e-6)


def test_pre_ln_stack_has_final_norm_and_llama_style_options():
    rope = RotaryEmbedding(4)
    stack = TransformerEncoder(2, 16, 4, 24, num_kv_heads=2, gated=True, activation="silu", bias=False,
                               norm="rmsnorm", norm_first=True, rope=rope)
    assert isinstance(stack.norm, nn.RMSNorm)
    assert isinstance(stack.layers[0].feed_forward, GatedFeedForward)
    assert stack.layers[0].self_attn.num_kv_heads == 2
    assert TransformerEncoder(1, 8, 2, 16).norm is None  # post-LN ends in a norm already
    assert stack(mx.random.normal((1, 3, 16)), mask="causal").shape == (1, 3, 16)


# --- gradients: analytic float32 gradients against central differences ------------------

def central_difference(function, x: np.ndarray, step: float = 5e-2) -> np.ndarray:
    """Central differences in float32 with one Richardson extrapolation step:
    (4 D(h/2) - D(h)) / 3 has O(h^4) truncation error, so a step large enough to
    keep float32 rounding noise near 1e-5 still gives an accurate derivative."""
    def difference(index, h):
        plus, minus = x.copy(), x.copy()
        plus[index] += h
        minus[index] -= h
        return (function(plus) - function(minus)) / (2 * h)

    grad = np.zeros(x.shape, dtype=np.float64)
    for index in np.ndindex(x.shape):
        grad[index] = (4 * difference(index, step / 2) - difference(index, step)) / 3
    return grad


def test_attention_gradients_match_finite_differences():
    q, k, v = (mx.random.normal((1, 2, 3, 4)) for _ in range(3))
    mask = mx.array(np.tril(np.ones((3, 3), dtype=bool)))
    weights = mx.random.normal((1, 2, 3, 4))

    def loss(q_, k_, v_):
        return (scaled_dot_product_attention(q_, k_, v_, mask=mask) * weights).sum()

    grads = mx.grad(loss, argnums=(0, 1, 2))(q, k, v)
    arrays = [np.array(a) for a in (q, k, v)]
    for position in range(3):
        def f(value, position=position):
            inputs = [mx.array(a) for a in arrays]
            inputs[position] = mx.array(value)
            output = scaled_dot_product_attention(*inputs, mask=mask)
            return float((np.array(output, dtype=np.float64) * np.array(weights)).sum())  # sum in float64
        numeric = central_difference(f, arrays[position])
        np.testing.assert_allclose(np.array(grads[position]), numeric, atol=5e-5, rtol=1e-3)


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_layer_gradients_match_finite_differences(norm_first):
    layer = TransformerEncoderLayer(8, 2, 12, activation="gelu", norm_first=norm_first)
    x = mx.random.normal((1, 3, 8))
    mask = mx.array([[True, True, False]])[:, None, None, :]
    weights = mx.random.normal((1, 3, 8))

    def loss(inputs):
        return (layer(inputs, mask=mask) * weights).sum()

    def numeric_loss(inputs):  # the same functional, reduced in float64 to keep rounding out
        return float((np.array(layer(inputs, mask=mask), dtype=np.float64) * np.array(weights)).sum())

    input_grad = mx.grad(loss)(x)
    numeric = central_difference(lambda value: numeric_loss(mx.array(value)), np.array(x))
    np.testing.assert_allclose(np.array(input_grad), numeric, atol=5e-5, rtol=1e-3)

    # Parameters: the query projection and the first feed-forward weights.
    parameter_grads = nn.value_and_grad(layer, loss)(x)[1]
    for module, analytic in (
        (layer.self_attn.q_proj, parameter_grads["self_attn"]["q_proj"]["weight"]),
        (layer.feed_forward.up_proj, parameter_grads["feed_forward"]["up_proj"]["weight"]),
    ):
        original = module.weight
        def f(value, module=module):
            module.weight = mx.array(value)
            return numeric_loss(x)
        numeric = central_difference(f, np.array(original))
        module.weight = original
        np.testing.assert_allclose(np.array(analytic), numeric, atol=5e-5, rtol=1e-3)


# --- precision -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [mx.float32, mx.float16, mx.bfloat16])
def test_encoder_decoder_runs_in_every_float_dtype(dtype):
    model = EncoderDecoder(20, 20, hidden_size=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                           dropout=0.0)
    model.eval()
    source = mx.array([[3, 4, 5, 6], [7, 8, 9, 1]])
    target = mx.array([[1, 2, 3], [1, 4, 5]])
    source_mask = mx.array([[1, 1, 1, 1], [1, 1, 0, 0]])
    reference = np.array(model(source, target, source_mask))
    model.set_dtype(dtype)
    logits = model(source, target, source_mask)
    assert logits.dtype == dtype
    tolerance = {mx.float32: 1e-6, mx.float16: 3e-2, mx.bfloat16: 2e-1}[dtype]
    np.testing.assert_allclose(to_numpy(logits), reference, atol=tolerance * max(1.0, np.abs(reference).max()))


def test_encoder_decoder_padding_does_not_change_real_rows():
    model = EncoderDecoder(20, 20, hidden_size=16, num_heads=2, num_encoder_layers=2, num_decoder_layers=2,
                           dropout=0.0)
    source_short = mx.array([[3, 4]])
    target = mx.array([[1, 5, 6]])
    alone = np.array(model(source_short, target))
    padded = np.array(model(mx.array([[3, 4, 0, 0]]), target, source_mask=mx.array([[1, 1, 0, 0]])))
    np.testing.assert_allclose(padded, alone, atol=1e-5)
    assert math.isfinite(float(np.abs(padded).sum()))
    with pytest.raises(ValueError, match=r"token ids must have shape \(batch, length\)"):
        model.encode(mx.array([1, 2, 3]))


def test_stack_rejects_bad_configuration():
    with pytest.raises(ValueError, match="num_layers must be >= 1, got 0"):
        TransformerEncoder(0, 8, 2, 16)
    with pytest.raises(ValueError, match="hidden_size=9 is not divisible by num_heads=2"):
        TransformerEncoder(1, 9, 2, 16)
    with pytest.raises(ValueError, match="cache has 1 entries for 2 layers"):
        TransformerEncoder(2, 8, 2, 16)(mx.zeros((1, 2, 8)), cache=[None])
    with pytest.raises(ValueError, match="hidden_size, num_heads and num_kv_heads must be positive"):
        MultiHeadAttention(8, 0)
