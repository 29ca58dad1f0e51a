"""`transformer.run_layers` (the one layer loop of every stack and decoder backbone) and
`masks.decoder_masks` (one mask per layer, made once per sliding window), against NumPy."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_llm.blocks.cache import make_decoder_cache
from mlx_llm.blocks.masks import causal_mask, decoder_mask, decoder_masks
from mlx_llm.blocks.transformer import TransformerDecoder, TransformerEncoder, run_layers


class AffineLayer(nn.Module):
    """``h * scale + mask + memory`` (the mask a number here), recording the cache it got."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale
        self.seen_cache = None

    def __call__(self, hidden_states, mask=None, cache=None, memory=0.0):
        self.seen_cache = cache
        return hidden_states * self.scale + mask + memory


def test_run_layers_order_masks_norm_and_hidden_states():
    layers = [AffineLayer(2.0), AffineLayer(3.0), AffineLayer(-1.0)]
    start = mx.array([[1.0, -2.0]])
    collected = []
    output = run_layers(layers, start, [0.5, 1.0, 2.0], ["c0", "c1", "c2"], collected,
                        norm=lambda states: states / 10.0, memory=mx.array(0.25))
    expected, inputs = np.array([[1.0, -2.0]]), []
    for scale, mask in ((2.0, 0.5), (3.0, 1.0), (-1.0, 2.0)):
        inputs.append(expected)
        expected = expected * scale + mask + 0.25
    expected = expected / 10.0
    np.testing.assert_allclose(np.array(output), expected, rtol=1e-6)
    assert len(collected) == len(layers) + 1
    for got, want in zip(collected, [*inputs, expected]):
        np.testing.assert_allclose(np.array(got), want, rtol=1e-6)
    assert [layer.seen_cache for layer in layers] == ["c0", "c1", "c2"]


def test_run_layers_without_cache_or_norm_and_wrong_cache_length():
    layers = [AffineLayer(2.0), AffineLayer(2.0)]
    output = run_layers(layers, mx.array([1.0]), [0.0, 1.0])
    np.testing.assert_allclose(np.array(output), [5.0])  # (1 * 2 + 0) * 2 + 1
    assert layers[0].seen_cache is None
    with pytest.raises(ValueError, match="cache has 1 entries for 2 layers"):
        run_layers(layers, mx.array([1.0]), [0.0, 0.0], cache=["only one"])


def test_stacks_equal_their_layers_in_turn():
    mx.random.seed(0)
    encoder = TransformerEncoder(2, 16, 2, 32, norm_first=True)
    decoder = TransformerDecoder(2, 16, 2, 32, norm_first=True)
    hidden_states, memory = mx.random.normal((2, 5, 16)), mx.random.normal((2, 3, 16))
    mask = causal_mask(5)
    expected = hidden_states
    for layer in encoder.layers:
        expected = layer(expected, mask=mask)
    np.testing.assert_allclose(np.array(encoder(hidden_states, mask)), np.array(encoder.norm(expected)), atol=1e-6)
    expected = hidden_states
    for layer in decoder.layers:
        expected = layer(expected, memory, mask=mask)
    np.testing.assert_allclose(np.array(decoder(hidden_states, memory, mask)), np.array(decoder.norm(expected)),
                               atol=1e-6)
    with pytest.raises(ValueError, match="num_layers must be >= 1"):
        TransformerEncoder(0, 16, 2, 32)


def test_decoder_masks_one_per_window_without_cache():
    attention_mask = mx.array([[0, 1, 1, 1, 1, 1]])
    masks = decoder_masks(6, attention_mask, None, [None, 2, None, 2])
    assert masks[0] is masks[2] and masks[1] is masks[3] and masks[0] is not masks[1]
    for mask, window in ((masks[0], None), (masks[1], 2)):
        np.testing.assert_array_equal(np.array(mask), np.array(decoder_mask(6, attention_mask, window_size=window)))
    # Boolean masks, True = attend. A window of 2: position 5 sees keys 4 and 5 only;
    # the padding key 0 is never seen.
    np.testing.assert_array_equal(np.array(masks[1])[0, 0, 5], [False, False, False, False, True, True])
    np.testing.assert_array_equal(np.array(masks[0])[0, 0, 5], [False, True, True, True, True, True])
    assert not np.array(masks[0])[0, 0, :, 0].any()


def test_decoder_masks_made_by_each_windows_first_cache():
    caches = make_decoder_cache(3, windows=[3, None, 3])
    keys = mx.zeros((1, 1, 5, 4))
    for cache in caches:
        cache.update_and_fetch(keys, keys)  # 5 positions held; the windowed caches keep the last 3
    masks = decoder_masks(2, None, caches, [3, None, 3])  # 2 new queries after 5 held positions
    assert masks[0] is masks[2] and masks[1] == "causal"  # the full cache's causal shortcut
    # Columns: the held keys 2-4, then the new 5-6; window 3: query 5 sees keys 3-5, query 6 keys 4-6.
    np.testing.assert_array_equal(np.array(masks[0]), [[False, True, True, True, False],
                                                       [False, False, True, True, True]])
    np.testing.assert_array_equal(np.array(masks[0]), np.array(caches[0].make_mask(2, None, window_size=3)))
