"""Transcendental functions from multiplies and adds, for MLX's CPU backend.

On the CPU, MLX evaluates ``exp``, ``erf`` and ``tanh`` one element at a
time, while multiplies, adds and divides are vectorized and fused by
`mx.compile`: a GELU over a ``(32, 48, 1536)`` tensor took 93 ms natively
and 14 ms as the rational approximation below (2-core x86). On Metal and
CUDA the native kernels are fast already, so every function here asks
`mlx_llm.cpu.backend.cpu_kernels_enabled` (the CPU, and ``MLX_LLM_CPU_KERNELS``
not ``0``) and uses MLX's own op otherwise, as it does on the CPU for inputs
under `NATIVE_BELOW` elements.

Accuracy (float32, checked in ``tests/test_fast_math.py``): ``exp`` within
2e-7 relative on [-87, 88]; ``erf`` within 5e-7 absolute; the activations
built on them within 2e-6 absolute of MLX's.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from .backend import cpu_kernels_enabled

_LOG2_E = 1.4426950408889634
# ln 2 split in two (Cody-Waite), so that n * ln2 is exact in float32 for the reduction.
_LN2_HIGH, _LN2_LOW = 0.693359375, -2.12194440e-4
# exp(r) - 1 - r = r^2 * P(r) on [-ln2/2, ln2/2] (Cephes' expf coefficients).
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
             5.0000001201e-1)
# erf(x) = x * P(x^2) / Q(x^2) on [-4, 4] (the rational form TensorFlow and Eigen use for float32).
_ERF_NUMERATOR = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
                  -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
_ERF_DENOMINATOR = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
                    -7.37332916720468e-03, -1.42647390514189e-02)
_SQRT_HALF = 0.7071067811865476
_SQRT_2_OVER_PI = 0.7978845608028654


def _horner(coefficients: tuple[float, ...], x: mx.array) -> mx.array:
    result = coefficients[0]
    for coefficient in coefficients[1:]:
        result = result * x + coefficient
    return result


def _exp_of(x: mx.array) -> mx.array:
    # exp(x) = 2^n * exp(r), n = round(x / ln 2), |r| <= ln2 / 2; 2^n is built from its exponent bits.
    x = mx.clip(x, -87.0, 88.0)
    n = mx.stop_gradient(mx.floor(x * _LOG2_E + 0.5))
    r = x - n * _LN2_HIGH - n * _LN2_LOW
    exp_r = _horner(_EXP_POLY, r) * (r * r) + r + 1.0
    two_to_n = mx.stop_gradient(mx.left_shift(n.astype(mx.int32) + 127, 23).view(mx.float32))
    return exp_r * two_to_n


@mx.custom_function
def _exp(x: mx.array) -> mx.array:
    return _exp_of(x)


@_exp.vjp
def _exp_vjp(x, cotangent, output):
    return cotangent * output


def _erf(x: mx.array) -> mx.array:
    x = mx.clip(x, -4.0, 4.0)  # erf(4) = 1 - 1.5e-8: 1 in float32
    x2 = x * x
    return x * _horner(_ERF_NUMERATOR, x2) / _horner(_ERF_DENOMINATOR, x2)


_INV_SQRT_2PI = 0.3989422804014327


@mx.custom_function
def _gelu(x: mx.array) -> mx.array:
    return 0.5 * x * (1.0 + _erf(x * _SQRT_HALF))


@_gelu.vjp
def _gelu_vjp(x, cotangent, output):
    # d/dx x Phi(x) = Phi(x) + x phi(x): one erf and one exp, instead of differentiating the rational form.
    derivative = 0.5 * (1.0 + _erf(x * _SQRT_HALF)) + x * _INV_SQRT_2PI * _exp_of(-0.5 * x * x)
    return cotangent * derivative


def _tanh(x: mx.array) -> mx.array:
    return 1.0 - 2.0 / (_exp_of(2.0 * x) + 1.0)


@mx.custom_function
def _gelu_tanh(x: mx.array) -> mx.array:
    return 0.5 * x * (1.0 + _tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))


@_gelu_tanh.vjp
def _gelu_tanh_vjp(x, cotangent, output):
    # d/dx 0.5 x (1 + tanh(u)) = 0.5 (1 + t) + 0.5 x (1 - t^2) u', u = sqrt(2/pi) (x + 0.044715 x^3).
    t = _tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x))
    du = _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * x * x)
    return cotangent * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du)


@mx.custom_function
def _silu(x: mx.array) -> mx.array:
    return x / (1.0 + _exp_of(-x))


@_silu.vjp
def _silu_vjp(x, cotangent, output):
    # d/dx x s(x) = s(x) (1 + x (1 - s(x))), with s the sigmoid.
    sigmoid = 1.0 / (1.0 + _exp_of(-x))
    return cotangent * sigmoid * (1.0 + x * (1.0 - sigmoid))


# Compiled per input shape (the bit cast in _exp cannot be shapeless). MLX fuses each into a few
# kernels, not one: intermediates read by several later ops end a fused group.
_CPU = {name: mx.compile(function) for name, function in
        (("exp", _exp), ("erf", _erf), ("gelu", _gelu), ("gelu_tanh", _gelu_tanh), ("silu", _silu))}

# MLX's own ops, one kernel each.
_NATIVE = {"exp": mx.exp, "erf": mx.erf, "gelu": nn.gelu, "gelu_tanh": nn.gelu_approx, "silu": nn.silu}
# Below this many elements (a decoding step's activations, say) MLX's own ops are faster: the
# approximations compile to several kernels, each with its fixed cost. Measured on the 2-core x86
# machine: SiLU(gate) * up took 49 us as approximated against 18 us natively for 768 elements, and
# 32 against 47 us for 3,072.
NATIVE_BELOW = 2048


def _computed_in_float32(name: str, x: mx.array) -> mx.array:
    if x.size < NATIVE_BELOW:
        return _NATIVE[name](x)
    if x.dtype == mx.float32:
        return _CPU[name](x)
    return _CPU[name](x.astype(mx.float32)).astype(x.dtype)


def exp(x: mx.array) -> mx.array:
    """``e^x``."""
    return _computed_in_float32("exp", x) if cpu_kernels_enabled() else mx.exp(x)


def erf(x: mx.array) -> mx.array:
    """The error function."""
    return _computed_in_float32("erf", x) if cpu_kernels_enabled() else mx.erf(x)


def gelu(x: mx.array) -> mx.array:
    """Exact GELU, ``x * Phi(x)`` (BERT)."""
    return _computed_in_float32("gelu", x) if cpu_kernels_enabled() else nn.gelu(x)


def gelu_tanh(x: mx.array) -> mx.array:
    """GELU's tanh approximation (GPT-2's ``gelu_new``)."""
    return _computed_in_float32("gelu_tanh", x) if cpu_kernels_enabled() else nn.gelu_approx(x)


def silu(x: mx.array) -> mx.array:
    """``x * sigmoid(x)`` (Llama's SwiGLU)."""
    return _computed_in_float32("silu", x) if cpu_kernels_enabled() else nn.silu(x)
