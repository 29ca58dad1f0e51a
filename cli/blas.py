"""Linux: MKL in place of MLX's reference BLAS, for the ``mlx-llm`` command.

MLX's Linux wheel computes float32 matrix products with the reference (netlib)
BLAS it bundles; preloading MKL makes them many times faster (fine-tuning the
real MiniLM on 4,000 SST-2 sentences: about 3 minutes with MKL, unfinished
after 25 without). `mkl_reexec` decides, before a heavy command reads
anything, whether ``mlx-llm`` runs itself again with MKL preloaded: on Linux,
on the CPU, MKL installed in this environment (``pip install
'mlx-llm-kit[mkl]'``), not preloaded yet, not done once already
(``MLX_LLM_MKL_REEXEC`` guards against a loop), and not turned off with
``MLX_LLM_AUTO_MKL=0``. The decision is a pure function of its inputs;
`reexec_with_mkl` applies it to this process.

A run that starts on the reference BLAS all the same says so once its inputs
are checked: the library warns (`mlx_llm.cpu.tuning.warn_if_reference_blas`)
and `show_library_warnings` prints that as one line on stderr.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping, Sequence

import click

from mlx_llm.cpu.backend import switched_off
from mlx_llm.cpu.tuning import AUTO_MKL_VARIABLE as AUTO_VARIABLE  # noqa: F401
from mlx_llm.cpu.tuning import OPTIMIZED_BLAS, installed_mkl
from mlx_llm.cpu.tuning import slow_blas_hint  # noqa: F401  (re-exported: tests and scripts read it from here)

# Commands whose work is float32 matrix products (training and scoring whole data sets).
HEAVY_COMMANDS = frozenset({"train", "eval", "finetune", "distill", "evaluate", "predict"})
GUARD_VARIABLE = "MLX_LLM_MKL_REEXEC"  # set in the re-executed process: never twice


def show_library_warnings() -> None:
    """Print warnings that mlx_llm raises as one line on stderr (their message),
    and any other warning as Python does."""
    default = warnings.showwarning
    if getattr(default, "mlx_llm_one_line", False):
        return  # installed already (each CliRunner invocation runs Main.main)

    def show(message, category, filename, lineno, file=None, line=None):
        if category.__module__.startswith("mlx_llm"):
            click.echo(str(message), err=True)
        else:
            default(message, category, filename, lineno, file, line)

    show.mlx_llm_one_line = True
    warnings.showwarning = show


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
            or switched_off(environ.get(AUTO_VARIABLE)) or GUARD_VARIABLE in environ
            or any(argument in ("-h", "--help", "--version") for argument in arguments)):
        return None
    preload = environ.get("LD_PRELOAD", "")
    if any(name in preload.lower() for name in OPTIMIZED_BLAS):
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
    from mlx_llm.cpu.backend import on_cpu

    updates = mkl_reexec(arguments, os.environ, sys.platform, on_cpu(), installed_mkl())
    if updates is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    # The interpreter with its own options (-m, -X ...) and the same arguments.
    os.execve(sys.executable, [sys.executable, *original[1:]], {**os.environ, **updates})
