"""What the CPU's BLAS is, and which weight order it reads fastest.

Serves only MLX's CPU backend (`mlx_llm.blocks.layers` asks it through
`mlx_llm.cpu.backend.cpu_kernels_enabled`):

- `reference_blas` tells whether MLX's float32 products run on the reference
  (netlib) BLAS that MLX's Linux wheel bundles, from the libraries the process
  maps and ``LD_PRELOAD`` (`reference_blas_in` decides from those two);
- `warn_if_reference_blas` says so when training or evaluation starts there,
  with the exact fix (`slow_blas_hint`);
- `weight_orders` gives, with an optimized BLAS, the memory order each weight
  shape is read fastest in by a decoding step's one-row product: timed once
  per machine and BLAS (`in_out_is_faster`) and kept in `weight_order_file`.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import sys
import time
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from .backend import switched_off

# Names of optimized BLAS libraries, looked for in LD_PRELOAD and in the path of a mapped libblas.
OPTIMIZED_BLAS = ("openblas", "mkl", "blis", "accelerate", "armpl", "flexiblas", "atlas")


def reference_blas_in(mapped_paths: list[str], preload: str = "") -> bool:
    """Whether MLX's BLAS is the reference one: a reference ``libblas`` is mapped
    (MLX's Linux wheel bundles one) and no optimized BLAS is preloaded over it.
    A preloaded library counts only if it is mapped too (``ld.so`` skips one it
    cannot load), and other libraries' own BLAS (numpy's OpenBLAS, say) do not
    count: MLX does not call them.

    Args:
        mapped_paths: Paths of the files the process maps (``/proc/self/maps``).
        preload: The value of ``LD_PRELOAD`` (paths separated by colons or spaces).

    Returns:
        ``True`` for the reference BLAS.
    """
    mapped_names = {os.path.basename(path) for path in mapped_paths}
    for entry in re.split(r"[:\s]+", preload):
        names = {os.path.basename(entry), os.path.basename(os.path.realpath(entry))} if entry else set()
        if any(name in entry.lower() for name in OPTIMIZED_BLAS) and names & mapped_names:
            return False
    return any(
        os.path.basename(path).startswith("libblas") and not any(name in path for name in OPTIMIZED_BLAS)
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
def reference_blas() -> bool:
    """Whether this process's MLX computes float32 products on the reference BLAS
    (Linux only; cached: the libraries a process maps do not change).

    Returns:
        ``True`` on Linux when `reference_blas_in` says so for this process.
    """
    if not sys.platform.startswith("linux"):
        return False  # macOS links Accelerate
    return reference_blas_in(_mapped_libraries(), os.environ.get("LD_PRELOAD", ""))


# --- The reference BLAS says so: a warning when heavy float32 work starts on it -----------------

MKL_LIBRARY = "libmkl_rt.so.3"
AUTO_MKL_VARIABLE = "MLX_LLM_AUTO_MKL"  # the mlx-llm command preloads MKL itself unless this is 0
HINT_VARIABLE = "MLX_LLM_BLAS_HINT"  # 0: no warning about the reference BLAS
_MKL_PLATFORMS = ("x86_64", "amd64")  # the mkl wheels exist for Linux x86-64 only


class SlowBLASWarning(UserWarning):
    """Float32 matrix products run on MLX's bundled reference BLAS (Linux), many times slower than MKL."""


def installed_mkl(prefix: str | None = None) -> str | None:
    """Path of MKL's runtime library installed in this environment (``pip install mkl`` puts it in
    ``<prefix>/lib``), or ``None``.

    Args:
        prefix: The environment's root; ``sys.prefix`` by default.

    Returns:
        The absolute path, or ``None`` when the file is absent.
    """
    path = Path(prefix or sys.prefix) / "lib" / MKL_LIBRARY
    return str(path) if path.is_file() else None


def slow_blas_hint(
    system: str, machine: str, on_cpu: bool, reference_blas: bool, mkl: str | None, environ: Mapping[str, str],
    python: str = "python",
) -> str | None:
    """The line that says a command runs on the reference BLAS, and how to fix it.

    Args:
        system: ``sys.platform``.
        machine: ``platform.machine()``.
        on_cpu: Whether MLX's default device is the CPU.
        reference_blas: Whether MLX computes on the reference BLAS
            (`mlx_llm.cpu.tuning.reference_blas`).
        mkl: `installed_mkl`.
        environ: The environment (``MLX_LLM_BLAS_HINT=0`` silences the line).
        python: The interpreter to name in the pip command.

    Returns:
        The line, or ``None`` where the products run on an optimized BLAS or a
        GPU, or where it is silenced.
    """
    if (not system.startswith("linux") or not on_cpu or not reference_blas
            or switched_off(environ.get(HINT_VARIABLE))):
        return None
    start = ("mlx-llm: MLX computes float32 matrix products on its bundled reference BLAS here, "
             "up to 10x slower than MKL")
    preload = f"LD_PRELOAD={mkl} MKL_THREADING_LAYER=INTEL"
    if mkl is not None and switched_off(environ.get(AUTO_MKL_VARIABLE)):
        return f"{start}; MKL is installed: run with {preload} (or unset {AUTO_MKL_VARIABLE} and mlx-llm preloads it)"
    if mkl is not None:  # installed, but the automatic preload did not take (a program calling main())
        return f"{start}; MKL is installed: run with {preload}"
    if machine.lower() not in _MKL_PLATFORMS:
        return (f"{start}; preload an optimized BLAS, e.g. LD_PRELOAD=/path/to/libopenblas.so.0 "
                "(OpenBLAS, from your system's packages)")
    return (f"{start}; fix: {python} -m pip install mkl (or pip install 'mlx-llm-kit[mkl]'), and mlx-llm "
            "preloads it by itself (set MLX_LLM_AUTO_MKL=0 not to)")


_warned = False


def warn_if_reference_blas() -> None:
    """Warn (`SlowBLASWarning`, once per process, first process of a distributed
    run only) that heavy float32 work is starting on the reference BLAS, with the
    fix. Called where training and evaluation start, after their inputs were
    checked, so that a refused run prints only its error."""
    global _warned
    if _warned or os.environ.get("MLX_RANK", "0") != "0":
        return
    _warned = True
    from .backend import on_cpu

    line = slow_blas_hint(sys.platform, platform.machine(), on_cpu(), reference_blas(), installed_mkl(),
                          os.environ, sys.executable)
    if line is not None:
        warnings.warn(line, SlowBLASWarning, stacklevel=2)


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


def in_out_is_faster(weights: list[mx.array], rows: int = 1) -> bool:
    """Whether products ``x @ W.T`` with ``rows``-row inputs (one row: a decoding
    step) and these same-shape ``(out, in)`` weights run faster with them stored ``(in, out)``.

    Both orders are timed, alternately, with the weights coming from memory
    (as in decoding, where a model does not fit in the caches): timing one
    matrix in a loop measures a cache-resident product and picks wrongly.

    Args:
        weights: Same-shape ``(out, in)`` float32 weights.
        rows: Rows of ``x``: 1 for a decoding step, more for a batch decoded
            together (a server), where MKL's small-``M`` ``sgemm`` reads a
            transposed weight much slower.

    Returns:
        ``True`` when ``(in, out)`` is at least 5% faster.
    """
    row = mx.ones((rows, weights[0].shape[1]), mx.float32)
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


def weight_orders(groups: dict[tuple[int, int], list[nn.Module]]) -> dict[tuple[int, int], bool]:
    """The memory order for each shape of float32 weights that multiply, with an optimized BLAS.

    Models with under 64 MB of such weights, shapes with under 1 MB, and every
    shape when ``MLX_LLM_TUNE_ORDER=0``, stay ``(out, in)`` (they are absent
    from the result); the others get the order measured faster on this
    machine, read from `weight_order_file` or timed and written there.

    Args:
        groups: ``(out, in)`` shape -> the modules whose ``weight`` has it.

    Returns:
        ``(out, in)`` shape -> whether its weights are stored ``(in, out)``.
    """
    sizes = {shape: sum(module.weight.nbytes for module in modules) for shape, modules in groups.items()}
    tuned = {shape: groups[shape] for shape, size in sizes.items() if size >= _UNTIMED_SHAPE_BYTES}
    if sum(sizes.values()) < _UNTIMED_MODEL_BYTES or switched_off(os.environ.get("MLX_LLM_TUNE_ORDER")):
        return {}
    return _measured_orders(tuned) if tuned else {}
