"""Linux: MLX's float32 products on the reference BLAS, and MKL in its place.

MLX's Linux wheel computes float32 matrix products with the reference (netlib)
BLAS it bundles; preloading MKL makes them many times faster (fine-tuning the
real MiniLM on 4,000 SST-2 sentences: about 3 minutes with MKL, unfinished
after 25 without). So:

- `mkl_reexec` decides, before a heavy command reads anything, whether
  ``mlx-llm`` runs itself again with MKL preloaded: on Linux, on the CPU, MKL
  installed in this environment (``pip install 'mlx-llm-kit[mkl]'``), not
  preloaded yet, not done once already (``MLX_LLM_MKL_REEXEC`` guards against
  a loop), and not turned off with ``MLX_LLM_AUTO_MKL=0``;
- `slow_blas_hint` is the line a heavy command prints on stderr when it
  starts on the reference BLAS all the same, with the exact fix
  (``MLX_LLM_BLAS_HINT=0`` silences it).

The decisions are pure functions of their inputs; `reexec_with_mkl` and
`warn_if_slow_blas` apply them to this process.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import click

# Commands whose work is float32 matrix products (training and scoring whole data sets).
HEAVY_COMMANDS = frozenset({"train", "eval", "finetune", "distill", "evaluate", "predict"})
AUTO_VARIABLE = "MLX_LLM_AUTO_MKL"
GUARD_VARIABLE = "MLX_LLM_MKL_REEXEC"  # set in the re-executed process: never twice
HINT_VARIABLE = "MLX_LLM_BLAS_HINT"  # 0: no line about the reference BLAS
MKL_LIBRARY = "libmkl_rt.so.3"
_OPTIMIZED_BLAS = ("mkl", "openblas", "blis", "flexiblas", "armpl", "atlas")
_OFF_VALUES = {"0", "false", "no", "off"}
_MKL_PLATFORMS = ("x86_64", "amd64")  # the mkl wheels exist for Linux x86-64 only


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


def _command(arguments: Sequence[str]) -> str | None:
    # The group itself takes only --help and --version, so the first word that is not an option
    # names the command.
    return next((argument for argument in arguments if not argument.startswith("-")), None)


def mkl_reexec(
    arguments: Sequence[str], environ: Mapping[str, str], system: str, on_cpu: bool, mkl: str | None
) -> dict[str, str] | None:
    """Whether ``mlx-llm`` should run itself again with MKL preloaded, and with what environment.

    Args:
        arguments: The command line after the program (``sys.argv[1:]``).
        environ: The environment.
        system: ``sys.platform``.
        on_cpu: Whether MLX's default device is the CPU.
        mkl: `installed_mkl`.

    Returns:
        The environment variables to set for the new process, or ``None`` to
        go on in this one.
    """
    command = _command(arguments)
    if (not system.startswith("linux") or not on_cpu or mkl is None or command not in HEAVY_COMMANDS
            or environ.get(AUTO_VARIABLE, "1").strip().lower() in _OFF_VALUES or GUARD_VARIABLE in environ
            or any(argument in ("-h", "--help", "--version") for argument in arguments)):
        return None
    preload = environ.get("LD_PRELOAD", "")
    if any(name in preload.lower() for name in _OPTIMIZED_BLAS):
        return None  # the user preloads a BLAS already
    return {
        "LD_PRELOAD": f"{mkl}:{preload}" if preload.strip() else mkl,  # other preloads (a malloc) stay
        # MKL's own OpenMP runtime, which `pip install mkl` brings, and no clash with libgomp.
        "MKL_THREADING_LAYER": environ.get("MKL_THREADING_LAYER") or "INTEL",
        GUARD_VARIABLE: "1",
    }


def reexec_with_mkl() -> None:
    """Replace this process with ``mlx-llm`` run again with MKL preloaded, when `mkl_reexec` says so.

    Called by the ``mlx-llm`` entry point before a command reads anything (its
    input, stdin included, is untouched). Only for a command line run as is:
    when ``sys.argv`` was rewritten in the process (a program calling the
    entry point itself), running ``sys.orig_argv`` again would not repeat it.
    """
    arguments = sys.argv[1:]
    original = getattr(sys, "orig_argv", None)
    if not original or (arguments and list(original[-len(arguments):]) != arguments):
        return
    from mlx_llm.backend import on_cpu

    updates = mkl_reexec(arguments, os.environ, sys.platform, on_cpu(), installed_mkl())
    if updates is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    # The interpreter with its own options (-m, -X ...) and the same arguments.
    os.execve(sys.executable, [sys.executable, *original[1:]], {**os.environ, **updates})


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
            (`mlx_llm.cpu_tuning.reference_blas`).
        mkl: `installed_mkl`.
        environ: The environment (``MLX_LLM_BLAS_HINT=0`` silences the line).
        python: The interpreter to name in the pip command.

    Returns:
        The line, or ``None`` where the products run on an optimized BLAS or a
        GPU, or where it is silenced.
    """
    if (not system.startswith("linux") or not on_cpu or not reference_blas
            or environ.get(HINT_VARIABLE, "1").strip().lower() in _OFF_VALUES):
        return None
    start = ("mlx-llm: MLX computes float32 matrix products on its bundled reference BLAS here, "
             "up to 10x slower than MKL")
    preload = f"LD_PRELOAD={mkl} MKL_THREADING_LAYER=INTEL"
    if mkl is not None and environ.get(AUTO_VARIABLE, "1").strip().lower() in _OFF_VALUES:
        return f"{start}; MKL is installed: run with {preload} (or unset {AUTO_VARIABLE} and mlx-llm preloads it)"
    if mkl is not None:  # installed, but the automatic preload did not take (a program calling main())
        return f"{start}; MKL is installed: run with {preload}"
    if machine.lower() not in _MKL_PLATFORMS:
        return (f"{start}; preload an optimized BLAS, e.g. LD_PRELOAD=/path/to/libopenblas.so.0 "
                "(OpenBLAS, from your system's packages)")
    return (f"{start}; fix: {python} -m pip install mkl (or pip install 'mlx-llm-kit[mkl]'), and mlx-llm "
            "preloads it by itself (set MLX_LLM_AUTO_MKL=0 not to)")


def warn_if_slow_blas() -> None:
    """Print `slow_blas_hint` for this process on stderr, if there is one (first process of a
    distributed run only). Called at the top of each heavy command."""
    if os.environ.get("MLX_RANK", "0") != "0":
        return
    from mlx_llm.backend import on_cpu
    from mlx_llm.cpu_tuning import reference_blas

    line = slow_blas_hint(sys.platform, platform.machine(), on_cpu(), reference_blas(), installed_mkl(),
                          os.environ, sys.executable)
    if line is not None:
        click.echo(line, err=True)
