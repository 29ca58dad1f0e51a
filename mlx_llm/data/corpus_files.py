"""Which files a text corpus is made of: files named directly, and the text and
JSONL files of folders (``mlx-llm train --data``, ``eval --data``).

A folder contributes only ``.txt`` and ``.jsonl`` files by default, so that a
data folder's ``README.md``, licence or scripts are not trained on; a glob
pattern (``--data-glob``) picks other files. Files named directly are read
whatever their suffix.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from pathlib import Path

CORPUS_SUFFIXES = (".txt", ".jsonl")

PathLike = str | Path


def _folder_files(folder: Path, pattern: str | None) -> list[Path]:
    """The corpus files under ``folder``, recursively, sorted by relative path."""
    found = []
    for candidate in folder.rglob("*"):
        relative = candidate.relative_to(folder)
        if not candidate.is_file() or any(part.startswith(".") for part in relative.parts):
            continue  # hidden files and folders (.git, editor swap files) are never text to learn
        if pattern is None:
            wanted = candidate.suffix.lower() in CORPUS_SUFFIXES
        else:
            # A pattern with a slash matches the path inside the folder, else the file name.
            wanted = fnmatch.fnmatch(relative.as_posix() if "/" in pattern else candidate.name, pattern)
        if wanted:
            found.append(candidate)
    return sorted(found, key=lambda path: path.relative_to(folder).as_posix())


def list_corpus_files(paths: Sequence[PathLike] | PathLike, pattern: str | None = None) -> list[Path]:
    """The files a corpus is made of, in reading order.

    Args:
        paths: Files (any suffix) and folders; a folder contributes its
            ``.txt`` and ``.jsonl`` files (or those matching ``pattern``),
            recursively, sorted by path, skipping hidden files and folders.
        pattern: A glob such as ``"*.txt"`` or ``"books/*.md"`` choosing a
            folder's files by name (or by path inside the folder, if it has a
            slash); ``None`` for the default suffixes.

    Returns:
        The files, in the order given (folders expanded in place).

    Raises:
        FileNotFoundError: A path does not exist.
        ValueError: A folder holds no matching file.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = _folder_files(path, pattern)
            if not found:
                wanted = f"files matching {pattern!r}" if pattern else f"{' or '.join(CORPUS_SUFFIXES)} files"
                raise ValueError(
                    f"corpus folder {path} holds no {wanted}; name the files, or choose them with a "
                    "pattern (pattern=..., --data-glob on the command line)"
                )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(
                f"corpus path {path} does not exist; pass text files (.txt, .md, ...), .jsonl files "
                "or folders of them"
            )
    return files


def describe_files(files: Sequence[Path], shown: int = 5) -> str:
    """``"3 files: a.txt, b.txt, c.txt"``, naming at most ``shown`` of them.

    Args:
        files: The files read.
        shown: How many names to list before ``"and N more"``.

    Returns:
        One line for a progress report.
    """
    names = ", ".join(str(path) for path in files[:shown])
    more = f" and {len(files) - shown} more" if len(files) > shown else ""
    return f"{len(files)} file{'s' if len(files) != 1 else ''}: {names}{more}"
