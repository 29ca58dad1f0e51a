"""One switch for every code path that serves only MLX's CPU backend.

Some speed-ups pay off only where MLX computes on the CPU: the vectorized
approximations of `mlx_llm.cpu.fast_math`, the weight order of
`mlx_llm.blocks.layers.relayout` and its input-major products, and the cos/sin table
of `mlx_llm.blocks.positions.RotaryEmbedding`. On Metal and CUDA the library runs
MLX's own ops instead. Each of those places asks `cpu_kernels_enabled`, and
nothing else, whether to take its CPU branch.

``MLX_LLM_CPU_KERNELS=0`` (also ``false``, ``no`` or ``off``) turns every such
branch off, so the CPU runs exactly the code a Mac's GPU runs: the test suite
runs once that way to cover the code path users on Metal take. The variable
is read once, when this module is imported; `set_cpu_kernels` changes the
setting afterwards (tests use it).

``MLX_LLM_TUNE_ORDER=0`` is narrower: with the switch on and an optimized
BLAS, it only skips timing the weight orders (weights stay ``(out, in)``);
the other CPU branches still run. ``MLX_LLM_INPUT_MAJOR`` forces the
reference-BLAS choice of `mlx_llm.blocks.layers` within the CPU branch; with the
switch off it has no effect.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import mlx.core as mx

ENVIRONMENT_VARIABLE = "MLX_LLM_CPU_KERNELS"
OFF_VALUES = frozenset({"0", "false", "no", "off"})
_CPU_DEVICE = mx.Device(mx.cpu)


def switched_off(value: str | None) -> bool:
    """Whether the value of one of mlx_llm's on/off environment variables turns it off
    (``0``, ``false``, ``no`` or ``off``); unset means on."""
    return value is not None and value.strip().lower() in OFF_VALUES


def _from_environment() -> bool:
    return not switched_off(os.environ.get(ENVIRONMENT_VARIABLE))


_switch: bool = _from_environment()


def on_cpu() -> bool:
    """Whether MLX's default device is the CPU, whatever the switch says."""
    return mx.default_device() == _CPU_DEVICE


def cpu_kernels_enabled() -> bool:
    """Whether the CPU-only branches run: the switch is on and MLX computes on the CPU.

    Called on every linear layer and activation, so kept to a global read and
    a device comparison.

    Returns:
        ``True`` where the library should take its CPU branch.
    """
    return _switch and mx.default_device() == _CPU_DEVICE


def cpu_kernels_switch() -> bool:
    """The switch itself (``MLX_LLM_CPU_KERNELS``, or what `set_cpu_kernels` set), whatever the device."""
    return _switch


def set_cpu_kernels(enabled: bool | None) -> None:
    """Turn the CPU-only branches on or off for this process.

    Args:
        enabled: ``True`` or ``False``; ``None`` reads ``MLX_LLM_CPU_KERNELS``
            from the environment again.
    """
    global _switch
    _switch = _from_environment() if enabled is None else bool(enabled)


@contextmanager
def cpu_kernels(enabled: bool) -> Iterator[None]:
    """Run a block with the switch set to ``enabled``, then restore the previous setting.

    Args:
        enabled: The setting inside the block.
    """
    global _switch
    previous = _switch
    _switch = bool(enabled)
    try:
        yield
    finally:
        _switch = previous
