"""Turn library exceptions into Click errors: a one-line message on stderr and an
exit code, never a traceback."""

from __future__ import annotations

import functools
from typing import Callable

import click

# A run whose loss became NaN/inf: not bad input (the same command may work with other
# settings) and not a crash, so neither 2 nor 1; scripts can tell it apart (README, "Exit codes").
EXIT_DIVERGED = 3


class InputError(click.ClickException):
    """Bad input (a file, a model, a value): exit code 2, as for usage errors."""

    exit_code = 2


class DivergedError(click.ClickException):
    """The training loss became NaN or infinite: exit code 3."""

    exit_code = EXIT_DIVERGED


def _diverged_message(error: Exception) -> str:
    """One line for a `TrainingDiverged`: the step, the kept checkpoint, and the
    options of the running command worth changing."""
    options: dict[str, object] = {}
    context = click.get_current_context(silent=True)
    if context is not None:
        options = {param.name: context.params.get(param.name) for param in context.command.params}
    hints = ["a lower --lr"]
    if "warmup" in options:
        hints.append("a longer --warmup")
    elif "warmup_ratio" in options:
        hints.append("a larger --warmup-ratio")
    if options.get("dtype") == "bfloat16":
        hints.append("--dtype float32")
    step = getattr(error, "step", None)
    checkpoint = getattr(error, "checkpoint", None)
    kept = f"the last good checkpoint {checkpoint} is kept" if checkpoint else "no checkpoint was written yet"
    loss = getattr(error, "loss", float("nan"))
    return (f"training diverged: the loss became {loss} at step {step}; {kept}. Try {', '.join(hints)} "
            "(gradients are already clipped to norm 1), or check the data")


def library_errors(command: Callable) -> Callable:
    """Report ValueError / FileNotFoundError / FileExistsError / PermissionError
    as input errors (exit 2), a diverged training run (`TrainingDiverged`) as
    exit 3, and ConnectionError as a failure (exit 1)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError) as error:
            raise InputError(str(error)) from None
        except BrokenPipeError:  # a ConnectionError, but the reader left: mlx_llm_cli.main exits quietly
            raise
        except ConnectionError as error:
            raise click.ClickException(str(error)) from None
        except RuntimeError as error:
            # Imported here: mlx_llm.training.trainer loads MLX, which --help should not wait for.
            from mlx_llm.training.trainer import TrainingDiverged

            if isinstance(error, TrainingDiverged):
                raise DivergedError(_diverged_message(error)) from None
            raise

    return wrapper
