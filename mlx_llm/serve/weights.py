"""Weight order for decoding a batch on the CPU.

`mlx_llm.blocks.layers.relayout` stores each float32 weight in the order one-row
products (a single sequence's decoding step) read fastest. A server decodes
several rows at once, and there the order matters more: with MKL on a 2-core
x86 machine, the 210 products of a SmolLM-135M-shaped Llama's decoding step
took 45 ms for 4 rows with the weights stored ``(out, in)`` against 30 ms
stored ``(in, out)`` (21 ms either way for one row); a whole 4-row step went
from about 53 to 48 ms. So the server times both orders with a few-row input
once per loaded model and keeps the faster.
"""

from __future__ import annotations

import mlx.nn as nn

from ..blocks.layers import input_major, place_weight, product_groups
from ..cpu.backend import cpu_kernels_enabled
from ..cpu.tuning import in_out_is_faster

BATCH_ROWS = 8  # rows of the timed product: a typical running batch
_SMALL_BYTES = 2**20  # a shape with less weight in all stays in the caches: its order hardly matters
_TIMED_BYTES = 64 * 2**20  # at most this much of one shape's weights is copied and timed


def place_for_batches(model: nn.Module, rows: int = BATCH_ROWS) -> int:
    """Store ``model``'s float32 product weights in the order ``rows``-row products read fastest.

    Only on the CPU with an optimized BLAS (`mlx_llm.blocks.layers.input_major` is
    off): on a GPU there is no BLAS, and under the reference BLAS every such
    weight is already stored ``(in, out)``. Values are unchanged.

    Args:
        model: A loaded model (changed in place).
        rows: Rows of the timed product.

    Returns:
        How many weights were stored ``(in, out)``.
    """
    if not cpu_kernels_enabled() or input_major():
        return 0
    placed = 0
    for modules in product_groups(model).values():
        size = modules[0].weight.nbytes
        if size * len(modules) < _SMALL_BYTES:
            continue
        timed = [module.weight for module in modules[: max(1, _TIMED_BYTES // size)]]
        if not in_out_is_faster(timed, rows=rows):
            continue
        for module in modules:
            place_weight(module, True)
        placed += len(modules)
    return placed
