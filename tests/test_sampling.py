"""Samplers and logits processors against hand-computed examples."""

import math

import mlx.core as mx
import numpy as np
import pytest

from mlx_llm.generation.sampling import (
    SamplingConfig,
    SamplingError,
    TokenPicker,
    apply_min_p,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    pick_tokens,
    process_logits,
    sample,
    sampling_config,
)


def probabilities(values):
    values = np.array(values, dtype=np.float64)
    exp = np.exp(values - values.max())
    return exp / exp.sum()


def test_repetition_penalty_matches_ctrl_definition():
    logits = mx.array([[2.0, -1.0, 0.5, 3.0]])
    penalized = np.array(apply_repetition_penalty(logits, mx.array([[0, 1, 1]]), 2.0))
    np.testing.assert_allclose(penalized, [[1.0, -2.0, 0.5, 3.0]])  # 2/2 and -1*2; repeats count once
    assert np.array_equal(np.array(apply_repetition_penalty(logits, mx.array([[3]]), 1.0)), np.array(logits))


def test_top_k_keeps_exactly_the_k_most_likely():
    logits = mx.array([[0.1, 2.0, -1.0, 1.5, 0.3], [5.0, 4.0, 3.0, 2.0, 1.0]])
    filtered = np.array(apply_top_k(logits, 2))
    np.testing.assert_array_equal(np.isfinite(filtered), [[0, 1, 0, 1, 0], [1, 1, 0, 0, 0]])
    # Sampling with top-k never leaves the top k.
    config = SamplingConfig(temperature=1.5, top_k=2)
    draws = np.array(sample(process_logits(mx.repeat(logits[:1], 2000, axis=0), config), config,
                            key=mx.random.key(1)))
    assert set(np.unique(draws)) == {1, 3}


def test_top_p_keeps_smallest_set_reaching_p():
    values = [math.log(p) for p in (0.5, 0.3, 0.15, 0.05)]
    logits = mx.array([values])
    keep = lambda p: np.isfinite(np.array(apply_top_p(logits, p)))[0].tolist()  # noqa: E731
    assert keep(0.5) == [True, False, False, False]  # 0.5 alone reaches 0.5
    assert keep(0.51) == [True, True, False, False]
    assert keep(0.8) == [True, True, False, False]  # 0.5 + 0.3 = 0.8 reaches it
    assert keep(0.81) == [True, True, True, False]
    assert keep(1.0) == [True, True, True, True]
    # Order in the vocabulary does not matter.
    shuffled = mx.array([[values[2], values[0], values[3], values[1]]])
    assert np.isfinite(np.array(apply_top_p(shuffled, 0.8)))[0].tolist() == [False, True, False, True]


def test_min_p_relative_threshold():
    logits = mx.array([[math.log(0.6), math.log(0.25), math.log(0.1), math.log(0.05)]])
    kept = np.isfinite(np.array(apply_min_p(logits, 0.2)))[0].tolist()
    assert kept == [True, True, False, False]  # threshold 0.2 * 0.6 = 0.12
    assert np.isfinite(np.array(apply_min_p(logits, 0.1)))[0].tolist() == [True, True, True, False]


def test_temperature_zero_is_greedy_and_seed_reproducible():
    logits = mx.array([[0.2, 1.9, 1.8, -3.0]])
    greedy = SamplingConfig(temperature=0.0)
    assert int(sample(process_logits(logits, greedy), greedy)[0]) == 1
    hot = SamplingConfig(temperature=1.0)
    processed = process_logits(mx.repeat(logits, 50, axis=0), hot)
    first = np.array(sample(processed, hot, key=mx.random.key(7)))
    second = np.array(sample(processed, hot, key=mx.random.key(7)))
    np.testing.assert_array_equal(first, second)
    # Temperature sampling follows softmax(logits / T): check frequencies.
    config = SamplingConfig(temperature=2.0)
    draws = np.array(sample(process_logits(mx.repeat(logits, 20000, axis=0), config), config, key=mx.random.key(3)))
    frequencies = np.bincount(draws, minlength=4) / draws.size
    np.testing.assert_allclose(frequencies, probabilities(np.array([0.2, 1.9, 1.8, -3.0]) / 2.0), atol=0.015)


def test_infinite_logits_are_handled():
    logits = mx.array([[-mx.inf, 0.0, -mx.inf, 1.0]])
    config = SamplingConfig(temperature=1.0, top_p=0.9, min_p=0.05)
    processed = np.array(process_logits(logits, config))
    assert not np.isnan(processed).any()
    draws = np.array(sample(mx.repeat(mx.array(processed), 500, axis=0), config, key=mx.random.key(0)))
    assert set(np.unique(draws)) <= {1, 3}


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(temperature=-0.5), "temperature must be a finite number >= 0, got -0.5"),
        (dict(top_p=0.0), r"top_p must be a finite number in \(0, 1\], got 0.0"),
        (dict(top_p=1.2), r"top_p must be a finite number in \(0, 1\], got 1.2"),
        (dict(top_k=-1), "top_k must be a finite number >= 0"),
        (dict(min_p=1.0), r"min_p must be a finite number in \[0, 1\)"),
        (dict(repetition_penalty=0.0), "repetition_penalty must be a finite number > 0"),
    ],
)
def test_bad_sampling_settings(options, message):
    with pytest.raises(SamplingError, match=message) as raised:
        SamplingConfig(**options)
    name = next(iter(options))
    assert raised.value.name == name and str(raised.value) == f"{name} {raised.value.problem}"


def test_sampling_config_from_either_form():
    config = SamplingConfig(temperature=0.7, top_k=3)
    assert sampling_config(config) is config
    assert sampling_config(temperature=0.7, top_k=3) == config
    assert sampling_config() == SamplingConfig()
    with pytest.raises(ValueError, match=r"give sampling=SamplingConfig\(...\) or the keywords top_k, not both"):
        sampling_config(config, top_k=3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'temprature'"):
        sampling_config(temprature=0.7)
    with pytest.raises(SamplingError, match="min_p must be a finite number in"):
        sampling_config(min_p=2.0)


def test_pick_tokens_and_the_penalty_history():
    logits = mx.array([[1.0, 3.0, 2.0, -1.0], [0.5, 0.1, 0.2, 4.0]])
    tokens, logprobs = pick_tokens(logits, SamplingConfig())
    log_softmax = np.log(np.stack([probabilities(row) for row in np.array(logits)]))
    assert tokens.tolist() == [1, 3]
    np.testing.assert_allclose(np.array(logprobs), log_softmax[[0, 1], [1, 3]], rtol=1e-6)
    # Penalty 100 with a 2-token history: a token leaves the history after two more picks.
    config = SamplingConfig(repetition_penalty=100.0, repetition_context_size=2)
    picker = TokenPicker(config, mx.array([[0, 0, 0]]))
    row = mx.array([[3.0, 2.9, 2.8, -5.0]])
    assert [int(picker(row)[0][0]) for _ in range(4)] == [1, 2, 0, 1]
    assert picker.history.tolist() == [[0, 1]]
    # Seeded draws: the same key gives the same tokens, and the logprob is the model's, not the filtered one.
    hot = SamplingConfig(temperature=1.0, top_k=2)
    first, first_logprobs = pick_tokens(mx.repeat(logits[:1], 64, axis=0), hot, key=mx.random.key(4))
    second, _ = pick_tokens(mx.repeat(logits[:1], 64, axis=0), hot, key=mx.random.key(4))
    assert first.tolist() == second.tolist() and set(first.tolist()) == {1, 2}
    np.testing.assert_allclose(np.array(first_logprobs), log_softmax[0][np.array(first)], rtol=1e-6)
