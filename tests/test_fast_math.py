"""The CPU approximations of exp, erf, GELU and SiLU against float64 references,
values and gradients, in every dtype the models use; and MLX's own ops where the
CPU branches are off (MLX_LLM_CPU_KERNELS=0, as on Metal)."""

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_llm import backend, fast_math

GRID = np.linspace(-12, 12, 48001).astype(np.float32)


def erf64(x):
    return np.vectorize(math.erf)(x.astype(np.float64))


def gelu64(x):
    x = x.astype(np.float64)
    return 0.5 * x * (1 + erf64(x / math.sqrt(2)))


def gelu_tanh64(x):
    x = x.astype(np.float64)
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def silu64(x):
    x = x.astype(np.float64)
    return x / (1 + np.exp(-x))


@pytest.fixture(autouse=True)
def _cpu_kernels_on():
    """These tests check the CPU branch itself, so it runs even when the suite runs with MLX_LLM_CPU_KERNELS=0."""
    with backend.cpu_kernels(True):
        yield


def test_runs_on_the_cpu_here():
    assert backend.on_cpu() and backend.cpu_kernels_enabled()  # so the approximations are what this file checks


def test_exp_relative_error():
    x = np.linspace(-87, 88, 200001).astype(np.float32)
    got = np.array(fast_math.exp(mx.array(x))).astype(np.float64)
    expected = np.exp(x.astype(np.float64))
    assert (np.abs(got - expected) / expected).max() < 2e-7
    assert float(fast_math.exp(mx.array(0.0))) == 1.0


def test_erf_and_activations_match_float64():
    x = mx.array(GRID)
    assert np.abs(np.array(fast_math.erf(x)) - erf64(GRID)).max() < 5e-7
    for function, reference in ((fast_math.gelu, gelu64), (fast_math.gelu_tanh, gelu_tanh64),
                                (fast_math.silu, silu64)):
        got = np.array(function(x)).astype(np.float64)
        expected = reference(GRID)
        # Absolute near zero, relative for large outputs (float32 has 7 digits).
        assert (np.abs(got - expected) / np.maximum(1.0, np.abs(expected))).max() < 2e-6, function.__name__


@pytest.mark.parametrize("name", ["gelu", "gelu_tanh", "silu", "exp"])
def test_gradients_match_the_analytic_derivatives(name):
    x = np.linspace(-8, 8, 4001).astype(np.float32)
    x64 = x.astype(np.float64)
    pdf = np.exp(-0.5 * x64**2) / math.sqrt(2 * math.pi)
    u = math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3)
    sigmoid = 1 / (1 + np.exp(-x64))
    expected = {
        "gelu": 0.5 * (1 + erf64(x / math.sqrt(2))) + x64 * pdf,
        "gelu_tanh": 0.5 * (1 + np.tanh(u)) + 0.5 * x64 * (1 - np.tanh(u) ** 2)
        * math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * x64**2),
        "silu": sigmoid * (1 + x64 * (1 - sigmoid)),
        "exp": np.exp(x64),
    }[name]
    got = np.array(mx.grad(lambda v: getattr(fast_math, name)(v).sum())(mx.array(x))).astype(np.float64)
    assert (np.abs(got - expected) / np.maximum(1.0, np.abs(expected))).max() < 5e-6


@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16])
def test_half_precision_inputs_are_computed_in_float32(dtype):
    x = mx.array(GRID[::50]).astype(dtype)
    for function, native in ((fast_math.gelu, nn.gelu), (fast_math.silu, nn.silu),
                             (fast_math.gelu_tanh, nn.gelu_approx)):
        got = function(x)
        assert got.dtype == dtype
        expected = native(x.astype(mx.float32)).astype(dtype)
        np.testing.assert_allclose(np.array(got.astype(mx.float32)), np.array(expected.astype(mx.float32)),
                                   rtol=1e-2, atol=1e-2)


def test_saturation_is_finite():
    assert np.isfinite(np.array(fast_math.silu(mx.array([-200.0, 200.0])))).all()
    np.testing.assert_allclose(np.array(fast_math.gelu(mx.array([-30.0, 30.0]))), [0.0, 30.0], atol=1e-6)


@pytest.mark.parametrize("name, native", [("exp", mx.exp), ("erf", mx.erf), ("gelu", nn.gelu),
                                          ("gelu_tanh", nn.gelu_approx), ("silu", nn.silu)])
def test_small_inputs_use_mlx_and_large_ones_the_approximation(name, native):
    function = getattr(fast_math, name)
    small = mx.random.normal((1, 1, fast_math.NATIVE_BELOW - 1)) * 4
    large = mx.random.normal((1, 1, fast_math.NATIVE_BELOW)) * 4
    np.testing.assert_array_equal(np.array(function(small)), np.array(native(small)))  # a decoding step
    np.testing.assert_array_equal(np.array(function(large)), np.array(fast_math._CPU[name](large)))
    assert not np.array_equal(np.array(fast_math._CPU[name](large)), np.array(native(large)))  # they do differ


def test_gated_feed_forward_chooses_the_same_way():
    from mlx_llm.blocks.feed_forward import GATED_ACTIVATIONS

    for size in (fast_math.NATIVE_BELOW - 1, fast_math.NATIVE_BELOW):
        gate, up = mx.random.normal((1, size)) * 4, mx.random.normal((1, size))
        function = nn.silu if size < fast_math.NATIVE_BELOW else fast_math._CPU["silu"]
        np.testing.assert_array_equal(np.array(GATED_ACTIVATIONS["silu"](gate, up)), np.array(function(gate) * up))


@pytest.mark.parametrize("name, native", [("exp", mx.exp), ("erf", mx.erf), ("gelu", nn.gelu),
                                          ("gelu_tanh", nn.gelu_approx), ("silu", nn.silu)])
def test_with_the_cpu_kernels_off_every_size_uses_mlx(name, native):
    large = mx.random.normal((2, 3, fast_math.NATIVE_BELOW)) * 4
    with backend.cpu_kernels(False):
        got = getattr(fast_math, name)(large)
        gradient = mx.grad(lambda v: getattr(fast_math, name)(v).sum())(large)
    np.testing.assert_array_equal(np.array(got), np.array(native(large)))
    np.testing.assert_array_equal(np.array(gradient), np.array(mx.grad(lambda v: native(v).sum())(large)))


def test_with_the_cpu_kernels_off_the_gated_feed_forward_is_the_fused_mlx_kernel():
    from mlx_llm.blocks.feed_forward import _FUSED_GATES, GATED_ACTIVATIONS

    gate, up = mx.random.normal((4, fast_math.NATIVE_BELOW)) * 4, mx.random.normal((4, fast_math.NATIVE_BELOW))
    for name in ("silu", "gelu", "gelu_tanh"):
        with backend.cpu_kernels(False):
            got = GATED_ACTIVATIONS[name](gate, up)
        np.testing.assert_array_equal(np.array(got), np.array(_FUSED_GATES[name](gate, up)))
        on = GATED_ACTIVATIONS[name](gate, up)  # the switch back on: the approximation again
        np.testing.assert_array_equal(np.array(on), np.array(fast_math._CPU[name](gate) * up))
