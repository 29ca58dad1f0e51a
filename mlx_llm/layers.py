"""``Linear`` and ``Embedding`` whose matrix products suit the BLAS they run on.

MLX computes a float32 linear layer, ``x @ W.T`` with ``W`` stored
``(out, in)``, through the BLAS it links. On Linux, MLX's CPU wheel links the
reference (netlib) BLAS, whose ``sgemm`` is 2.3-2.4x slower when its second
operand is transposed, which is exactly that product (measured on this
project's 2-core x86 machine: a ``(1024, 384) x (384, 1536)`` product took
456 ms against 196 ms with the weight stored ``(in, out)``; a decode-time
matrix-vector product 712 against 300 us). Optimized BLAS libraries (MKL,
OpenBLAS, Accelerate) have no such penalty, and the GPU does not use a BLAS.

So, where the reference BLAS computes on the CPU ("input-major" mode):

- `relayout` stores loaded float32 weights ``(in, out)`` in memory (the array
  is still the ``(out, in)`` matrix, as a transposed view), so inference reads
  them in the fast order without any copy;
- `Linear` and `Embedding.as_linear` multiply by ``contiguous(W.T)`` (free for
  a relaid-out weight, one cheap transposition per call otherwise), and their
  gradients are computed as ``dy @ W`` and ``dy.T @ x``, the two fast forms.

Everywhere else they are MLX's own ``nn.Linear`` and ``nn.Embedding``, with
the same parameters, and results equal up to float32 summation order; on the
CPU with an optimized BLAS, `relayout` stores weights ``(out, in)``.
"""

from __future__ import annotations

import functools
import os
import sys

import mlx.core as mx
import mlx.nn as nn

# Names of optimized BLAS libraries, looked for in LD_PRELOAD and in the path of a mapped libblas.
_OPTIMIZED_BLAS = ("openblas", "mkl", "blis", "accelerate", "armpl", "flexiblas", "atlas")
# MLX_LLM_INPUT_MAJOR=1 or 0 forces the mode on or off (e.g. a BLAS preloaded under the name libblas).
_override: bool | None = {"1": True, "0": False}.get(os.environ.get("MLX_LLM_INPUT_MAJOR", ""))


def reference_blas_in(mapped_paths: list[str], preload: str = "") -> bool:
    """Whether MLX's BLAS is the reference one, given the process's mapped libraries
    and ``LD_PRELOAD``: a reference ``libblas`` is mapped (MLX's Linux wheel bundles
    one) and no optimized BLAS is preloaded over it. Other libraries' own BLAS
    (numpy's OpenBLAS, say) do not count: MLX does not call them."""
    if any(name in preload.lower() for name in _OPTIMIZED_BLAS):
        return False
    return any(
        os.path.basename(path).startswith("libblas") and not any(name in path for name in _OPTIMIZED_BLAS)
        for path in (path.lower() for path in mapped_paths)
    )


@functools.cache
def _reference_blas() -> bool:
    if not sys.platform.startswith("linux"):
        return False  # macOS links Accelerate
    mx.eval(mx.ones((2, 2)) @ mx.ones((2, 2)))  # make sure the BLAS is loaded
    try:
        with open("/proc/self/maps") as maps:
            paths = [line.split()[-1] for line in maps if "/" in line]
    except OSError:
        return False
    return reference_blas_in(paths, os.environ.get("LD_PRELOAD", ""))


def input_major() -> bool:
    """Whether float32 products should read weights ``(in, out)``: the default
    device is the CPU and its BLAS is the reference one (or `set_input_major` says so)."""
    if _override is not None:
        return _override
    return mx.default_device().type == mx.cpu and _reference_blas()


def set_input_major(enabled: bool | None) -> None:
    """Force input-major mode on or off; ``None`` goes back to detecting it."""
    global _override
    _override = enabled


@mx.custom_function
def _input_major_product(x: mx.array, weight: mx.array) -> mx.array:
    return x @ mx.contiguous(weight.T)


@_input_major_product.vjp
def _input_major_product_vjp(primals, cotangent, output):
    x, weight = primals
    rows = cotangent.reshape(-1, cotangent.shape[-1])
    grad_weight = rows.T @ x.reshape(-1, x.shape[-1])  # (out, in): a transposed first operand is fast
    # A relaid-out (frozen, say) weight is copied back to (out, in) order first: cheap next to the product.
    return cotangent @ mx.contiguous(weight), grad_weight


def linear_product(x: mx.array, weight: mx.array) -> mx.array:
    """``x @ weight.T`` for an ``(out, in)`` weight, in the BLAS's fast form."""
    if weight.dtype == mx.float32 and input_major():
        return _input_major_product(x, weight)
    return x @ weight.T


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same init) whose product is formed as in `linear_product`."""

    def __call__(self, x: mx.array) -> mx.array:
        if self.weight.dtype != mx.float32 or not input_major():
            return super().__call__(x)
        output = _input_major_product(x, self.weight)
        return output + self.bias if "bias" in self else output


class Embedding(nn.Embedding):
    """``nn.Embedding`` whose ``as_linear`` (a tied output layer) uses `linear_product`."""

    def as_linear(self, x: mx.array) -> mx.array:
        return linear_product(x, self.weight)


def relayout(model: nn.Module) -> int:
    """Store the float32 weights of ``model``'s linear and embedding layers in
    the memory order the CPU's BLAS reads fastest (values unchanged); returns
    how many weights it placed.

    In input-major mode that is ``(in, out)``; with an optimized BLAS it is
    ``(out, in)``, the order ``nn.Linear`` assumes (checkpoints stored the other
    way, such as GPT-2's ``Conv1D`` weights, are copied: with OpenBLAS, in one
    process, GPT-2 decoded 2.7% and read its prompt 5.5% faster that way).
    On a GPU, or with ``MLX_LLM_INPUT_MAJOR=0``, weights stay as stored.
    """
    if _override is False or mx.default_device().type != mx.cpu:
        return 0
    in_out = input_major()
    placed = 0
    for _, module in model.named_modules():
        if type(module) in (nn.Linear, nn.Embedding, Linear, Embedding) and module.weight.dtype == mx.float32:
            # A copy only where the stored order is the other one.
            module.weight = mx.contiguous(module.weight.T).T if in_out else mx.contiguous(module.weight)
            mx.eval(module.weight)  # one matrix at a time: the old memory is freed before the next copy
            placed += 1
    return placed
