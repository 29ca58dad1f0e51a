"""Turn library exceptions into Click errors: a one-line message on stderr and an
exit code, never a traceback."""

from __future__ import annotations

import functools
from typing import Callable

import click


class InputError(click.ClickException):
    """Bad input (a file, a model, a value): exit code 2, as for usage errors."""

    exit_code = 2


def library_errors(command: Callable) -> Callable:
    """Report ValueError / FileNotFoundError / FileExistsError / PermissionError
    as input errors (exit 2) and ConnectionError as a failure (exit 1)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError) as error:
            raise InputError(str(error)) from None
        except ConnectionError as error:
            raise click.ClickException(str(error)) from None

    return wrapper
