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
the same parameters, and results equal up to float32 summation order.

On the CPU with an optimized BLAS the faster order depends on the library and
the shape, by up to 2x either way. Decoding reads every weight once per token
in a one-row product, from memory rather than cache. Measured so on this
machine, with the weights cycled so that they came from memory:

- MKL read ``(in, out)`` faster for a ``(49152, 576)`` output layer (4.4 against
  8.5 ms) and ``(out, in)`` faster for ``(768, 3072)`` (0.43 against 0.59 ms);
- OpenBLAS did the opposite for those two (8.2 against 16.3 ms; 0.61 against
  0.86 ms).

So `relayout` times both orders of each weight shape once per machine and BLAS
(`weight_order_file` keeps the result) and stores each weight in the faster
one. Lookups (an embedding that is not also the output layer) always keep
their rows contiguous.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from .fast_math import on_cpu

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


def _mapped_libraries() -> list[str]:
    """Paths of the files this process has mapped (Linux), once MLX's BLAS is loaded."""
    mx.eval(mx.ones((2, 2)) @ mx.ones((2, 2)))
    try:
        with open("/proc/self/maps") as maps:
            return sorted({line.split()[-1] for line in maps if "/" in line})
    except OSError:
        return []


@functools.cache
def _reference_blas() -> bool:
    if not sys.platform.startswith("linux"):
        return False  # macOS links Accelerate
    return reference_blas_in(_mapped_libraries(), os.environ.get("LD_PRELOAD", ""))


def input_major() -> bool:
    """Whether float32 products should read weights ``(in, out)``: the default
    device is the CPU and its BLAS is the reference one (or `set_input_major` says so)."""
    if _override is not None:
        return _override
    return on_cpu() and _reference_blas()


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


# --- Weight order with an optimized BLAS: measured once per machine -----------------------------

_ORDER_MARGIN = 0.95  # the (in, out) order is kept only when it is at least 5% faster
# Smaller models stay (out, in): their weights stay in the caches and their products take microseconds.
_UNTIMED_MODEL_BYTES = 64 * 2**20
_UNTIMED_SHAPE_BYTES = 2**20  # likewise a shape with less weight in all, in a larger model
_TIMED_BYTES = 128 * 2**20  # at most this much of a shape's weights is copied and timed
_FLUSH_BYTES = 64 * 2**20  # read before every timed pass, so that the weights come from memory
_PASSES = 4  # per order, alternating; the first of each warms up


def weight_order_file() -> Path:
    """Where measured weight orders are kept: ``weight_order.json`` in ``MLX_LLM_CACHE``,
    which defaults to ``$XDG_CACHE_HOME/mlx_llm`` or ``~/.cache/mlx_llm``."""
    root = os.environ.get("MLX_LLM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "mlx_llm"
    )
    return Path(os.path.expandvars(root)).expanduser() / "weight_order.json"


@functools.cache
def _machine_key() -> str:
    """What a measured order holds for: CPU, BLAS library, its thread settings and MLX's version."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    # MLX calls the libblas it links, or what LD_PRELOAD puts in its place (numpy's own BLAS does not count).
    libraries = [os.path.realpath(path) for path in _mapped_libraries() if os.path.basename(path).startswith("libblas")]
    threads = [f"{name}={os.environ[name]}" for name in
               ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_THREADING_LAYER")
               if name in os.environ]
    return " | ".join([cpu, f"{os.cpu_count()} cpus", ",".join(libraries) or sys.platform,
                       os.environ.get("LD_PRELOAD", ""), " ".join(threads), f"mlx {mx.__version__}"])


def _read_orders() -> dict[str, dict[str, str]]:
    try:
        orders = json.loads(weight_order_file().read_text())
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: measure again and rewrite it
    return orders if isinstance(orders, dict) else {}


def _write_orders(orders: dict[str, dict[str, str]]) -> None:
    path = weight_order_file()
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(orders, indent=1, sort_keys=True))
        os.replace(temporary, path)
    except OSError:  # a read-only or missing home: measure again next time
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            pass


def _pass_seconds(weights: list[mx.array], row: mx.array, flush: mx.array) -> float:
    mx.eval(flush.sum())  # evicts the weights from the caches
    start = time.perf_counter()
    mx.eval([row @ weight.T for weight in weights])
    return time.perf_counter() - start


def in_out_is_faster(weights: list[mx.array]) -> bool:
    """Whether one-row products ``x @ W.T`` (a decoding step) with these
    same-shape ``(out, in)`` weights run faster with them stored ``(in, out)``.

    Both orders are timed, alternately, with the weights coming from memory
    (as in decoding, where a model does not fit in the caches): timing one
    matrix in a loop measures a cache-resident product and picks wrongly.
    """
    row = mx.ones((1, weights[0].shape[1]), mx.float32)
    flush = mx.zeros((_FLUSH_BYTES // 4,), mx.float32)
    orders = {False: [mx.contiguous(w) for w in weights], True: [mx.contiguous(w.T).T for w in weights]}
    mx.eval(row, flush, orders)
    seconds = {False: [], True: []}
    for _ in range(_PASSES):
        for in_out, placed in orders.items():
            seconds[in_out].append(_pass_seconds(placed, row, flush))
    return min(seconds[True][1:]) < _ORDER_MARGIN * min(seconds[False][1:])


def _measured_orders(groups: dict[tuple[int, int], list[nn.Module]]) -> dict[tuple[int, int], bool]:
    """``(out, in)`` shape -> whether its weights go ``(in, out)``: read from
    `weight_order_file`, or measured (`in_out_is_faster`) and written there."""
    key = _machine_key()
    saved = _read_orders()
    known = dict(saved.get(key, {}))
    orders = {}
    for shape, modules in groups.items():
        name = f"{shape[0]}x{shape[1]}"
        if name not in known:
            timed, total = [], 0
            for module in modules:
                if total >= _TIMED_BYTES:
                    break
                timed.append(module.weight)
                total += module.weight.nbytes
            known[name] = "in_out" if in_out_is_faster(timed) else "out_in"
        orders[shape] = known[name] == "in_out"
    if known != saved.get(key):
        saved[key] = known
        _write_orders(saved)
    return orders


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


def _place(module: nn.Module, in_out: bool) -> None:
    # A copy only where the stored order is the other one; one matrix at a time, so the old memory
    # is freed before the next copy.
    module.weight = mx.contiguous(module.weight.T).T if in_out else mx.contiguous(module.weight)
    mx.eval(module.weight)


def relayout(model: nn.Module) -> int:
    """Store the float32 weights of ``model``'s linear and embedding layers in
    the memory order the CPU's BLAS reads fastest (values unchanged); returns
    how many weights it placed.

    - In input-major mode (the reference BLAS), weights that multiply are
      stored ``(in, out)``.
    - With an optimized BLAS, each weight shape gets the order measured faster
      on this machine for one-row products, the products of decoding
      (`in_out_is_faster`, once per machine and BLAS, kept in
      `weight_order_file`). Models with under 64 MB of such weights, shapes
      with under 1 MB, and every shape when ``MLX_LLM_TUNE_ORDER=0``, are
      stored ``(out, in)``, the order ``nn.Linear`` assumes.
    - Embeddings that are only looked up keep their rows contiguous.

    Checkpoints stored the other way (GPT-2's ``Conv1D`` weights) are copied.
    On a GPU, or with ``MLX_LLM_INPUT_MAJOR=0``, weights stay as stored.
    """
    if _override is False or not on_cpu():
        return 0
    products, lookups = _float32_layers(model)
    for module in lookups:
        _place(module, False)
    if input_major():
        for module in products:
            _place(module, True)
        return len(products) + len(lookups)
    groups: dict[tuple[int, int], list[nn.Module]] = defaultdict(list)
    for module in products:
        groups[tuple(module.weight.shape)].append(module)
    sizes = {shape: sum(module.weight.nbytes for module in modules) for shape, modules in groups.items()}
    tuned = {shape: groups[shape] for shape, size in sizes.items() if size >= _UNTIMED_SHAPE_BYTES}
    if sum(sizes.values()) < _UNTIMED_MODEL_BYTES or os.environ.get("MLX_LLM_TUNE_ORDER", "1") == "0":
        tuned = {}
    orders = _measured_orders(tuned) if tuned else {}
    for shape, modules in groups.items():
        for module in modules:
            _place(module, orders.get(shape, False))
    return len(products) + len(lookups)
