"""``Linear`` and ``Embedding`` whose matrix products suit the BLAS they run on.

MLX computes a float32 linear layer, ``x @ W.T`` with ``W`` stored
``(out, in)``, through the BLAS it links. On Linux, MLX's CPU wheel links the
reference (netlib) BLAS, whose ``sgemm`` is 2.3-2.4x slower when its second
operand is transposed, which is exactly that product (measured on this
project's 2-core x86 machine: a ``(1024, 384) x (384, 1536)`` product took
456 ms against 196 ms with the weight stored ``(in, out)``; a decode-time
matrix-vector product 712 against 300 us). Optimized BLAS libraries (MKL,
OpenBLAS, Accelerate) have no such penalty for batched products (see below
for one-row ones), and the GPU does not use a BLAS.

So, where the reference BLAS computes on the CPU ("input-major" mode):

- `relayout` stores loaded float32 weights ``(in, out)`` in memory (the array
  is still the ``(out, in)`` matrix, as a transposed view), so inference reads
  them in the fast order without any copy;
- `Linear` and `Embedding.as_linear` multiply by ``contiguous(W.T)`` (free for
  a relaid-out weight, one cheap transposition per call otherwise), and their
  gradients are computed as ``dy @ W`` and ``dy.T @ x``, the two fast forms.

Everywhere else they are MLX's own ``nn.Linear`` and ``nn.Embedding``, with
the same parameters, and results equal up to float32 summation order. Every
branch here runs only where `mlx_llm.cpu.backend.cpu_kernels_enabled` (the CPU,
and ``MLX_LLM_CPU_KERNELS`` not ``0``); elsewhere the products are ``x @ W.T``
and weights stay as stored, as on Metal.

On the CPU with an optimized BLAS the faster order depends on the library and
the shape, by up to 2x either way. Decoding reads every weight once per token
in a one-row product, from memory rather than cache. Measured so on this
machine, with the weights cycled so that they came from memory:

- MKL read ``(in, out)`` faster for a ``(49152, 576)`` output layer (4.4 against
  8.5 ms) and ``(out, in)`` faster for ``(768, 3072)`` (0.43 against 0.59 ms);
- OpenBLAS did the opposite for those two (8.2 against 16.3 ms; 0.61 against
  0.86 ms).

So `relayout` times both orders of each weight shape once per machine and BLAS
(`mlx_llm.cpu.tuning`, whose `weight_order_file` keeps the result) and stores each weight in the faster
one. Lookups (an embedding that is not also the output layer) always keep
their rows contiguous.
"""

from __future__ import annotations

import os
from collections import defaultdict

import mlx.core as mx
import mlx.nn as nn

from ..cpu import tuning as cpu_tuning
from ..cpu.backend import cpu_kernels_enabled

# Also importable from here, where they used to live.
from ..cpu.tuning import in_out_is_faster, reference_blas_in, weight_order_file  # noqa: F401

# MLX_LLM_INPUT_MAJOR=1 or 0 forces the mode on or off (e.g. a BLAS preloaded under the name libblas).
_override: bool | None = {"1": True, "0": False}.get(os.environ.get("MLX_LLM_INPUT_MAJOR", ""))


def input_major() -> bool:
    """Whether float32 products should read weights ``(in, out)``.

    Returns:
        ``True`` where the CPU branches run (`mlx_llm.cpu.backend.cpu_kernels_enabled`:
        the default device is the CPU and ``MLX_LLM_CPU_KERNELS`` is not ``0``)
        and the BLAS is the reference one, or `set_input_major` says so.
    """
    if not cpu_kernels_enabled():
        return False
    return _override if _override is not None else cpu_tuning.reference_blas()


def set_input_major(enabled: bool | None) -> None:
    """Force input-major mode on or off where the CPU branches run; ``None`` goes back to detecting it.

    Args:
        enabled: ``True``, ``False`` or ``None``.
    """
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
        # Called for every layer of every decoding step: kept to the fewest Python operations.
        weight = self["weight"]
        if weight.dtype == mx.float32 and input_major():
            output = _input_major_product(x, weight)
            return output + self["bias"] if "bias" in self else output
        return mx.addmm(self["bias"], x, weight.T) if "bias" in self else x @ weight.T


class Embedding(nn.Embedding):
    """``nn.Embedding`` whose ``as_linear`` (a tied output layer) uses `linear_product`.

    ``output_layer`` says that the model also multiplies by it (tied input and
    output embeddings), so `relayout` places it for that product; otherwise it
    only serves lookups and keeps its rows contiguous.
    """

    def __init__(self, num_embeddings: int, dims: int, output_layer: bool = False):
        super().__init__(num_embeddings, dims)
        self.output_layer = output_layer

    def as_linear(self, x: mx.array) -> mx.array:
        return linear_product(x, self.weight)


def _float32_layers(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """The model's float32 linear layers and output embeddings (weights that
    multiply), and its other embeddings (weights that are looked up)."""
    products, lookups = [], []
    for _, module in model.named_modules():
        if type(module) not in (nn.Linear, nn.Embedding, Linear, Embedding) or module.weight.dtype != mx.float32:
            continue
        if isinstance(module, nn.Linear) or getattr(module, "output_layer", False):
            products.append(module)
        else:
            lookups.append(module)
    return products, lookups


def product_groups(model: nn.Module) -> dict[tuple[int, int], list[nn.Module]]:
    """The model's float32 weights that multiply (linear layers, output embeddings), by ``(out, in)`` shape."""
    groups: dict[tuple[int, int], list[nn.Module]] = defaultdict(list)
    for module in _float32_layers(model)[0]:
        groups[tuple(module.weight.shape)].append(module)
    return groups


def place_weight(module: nn.Module, in_out: bool) -> None:
    """Store ``module.weight`` ``(in, out)`` (``in_out``) or ``(out, in)`` in memory, values unchanged
    (for stacked ``(E, out, in)`` expert weights, each expert's matrix)."""
    # A copy only where the stored order is the other one; one matrix at a time, so the old memory
    # is freed before the next copy.
    weight = module.weight
    module.weight = mx.contiguous(weight.swapaxes(-1, -2)).swapaxes(-1, -2) if in_out else mx.contiguous(weight)
    mx.eval(module.weight)


def relayout(model: nn.Module) -> int:
    """Store the float32 weights of ``model``'s linear and embedding layers in
    the memory order the CPU's BLAS reads fastest (values unchanged); returns
    how many weights it placed.

    - In input-major mode (the reference BLAS), weights that multiply are
      stored ``(in, out)``, stacked experts' ``(E, out, in)`` weights (the
      float `mlx_llm.blocks.moe.SwitchLinear`) as ``(E, in, out)``.
    - With an optimized BLAS, each weight shape gets the order measured faster
      on this machine for one-row products, the products of decoding
      (`in_out_is_faster`, once per machine and BLAS, kept in
      `weight_order_file`). Models with under 64 MB of such weights, shapes
      with under 1 MB, and every shape when ``MLX_LLM_TUNE_ORDER=0``, are
      stored ``(out, in)``, the order ``nn.Linear`` assumes.
    - Embeddings that are only looked up keep their rows contiguous.

    Checkpoints stored the other way (GPT-2's ``Conv1D`` weights) are copied.
    Where the CPU branches do not run (a GPU, or ``MLX_LLM_CPU_KERNELS=0``; see
    `mlx_llm.cpu.backend`), or with ``MLX_LLM_INPUT_MAJOR=0``, weights stay as stored.

    Args:
        model: The model whose weights are placed (in place).

    Returns:
        The number of weights placed (0 where nothing is done).
    """
    if _override is False or not cpu_kernels_enabled():
        return 0
    products, lookups = _float32_layers(model)
    for module in lookups:
        place_weight(module, False)
    if input_major():
        # Stacked experts (`mlx_llm.blocks.moe.SwitchLinear`) too: their gather_mm is also 2-4x slower
        # with (out, in) matrices on the reference BLAS.
        experts = [module for _, module in model.named_modules()
                   if hasattr(module, "to_quantized") and "weight" in module and module.weight.ndim == 3
                   and module.weight.dtype == mx.float32]
        for module in products + experts:
            place_weight(module, True)
        return len(products) + len(experts) + len(lookups)
    groups = product_groups(model)
    orders = cpu_tuning.weight_orders(groups)
    for shape, modules in groups.items():
        for module in modules:
            place_weight(module, orders.get(shape, False))
    return len(products) + len(lookups)
