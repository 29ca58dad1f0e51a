"""The run folder (``--out``) of ``train``, ``finetune`` and ``distill``: one rule for all three.

- A fresh run needs a new or empty folder. ``overwrite`` first deletes what
  the folder holds (an earlier run), so that the checkpoints, ``best/`` and
  ``metrics.jsonl`` of two runs never mix; ``resume`` continues the run in the
  folder and needs one of its checkpoints.
- Whatever the flags, a run never writes into one of its inputs (model,
  teacher, tokenizer, data): not into an input's folder, a folder inside it,
  or a folder that holds it. Paths are compared resolved (links, ``..``).
- A failed run is a fresh run that raises (any exception, Ctrl-C included)
  before its first checkpoint is complete. It leaves nothing behind: a folder
  it created is removed, a folder that was there is emptied again (it was
  empty, or emptied by ``overwrite``), so that the corrected rerun needs no
  flag. From its first checkpoint on, a run is kept: ``--resume`` continues it
  (a diverged run keeps its last good checkpoint). A resumed run never removes
  anything. A killed process cleans nothing: its folder then needs
  ``--overwrite`` (or ``--resume``, once it holds a checkpoint).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterable, Mapping, Union

import mlx.core as mx

PathLike = Union[str, Path]
# What a run reads, by the option that names it: a path, several, or None.
Inputs = Mapping[str, Union[PathLike, Iterable[PathLike], None]]


def has_checkpoint(out: PathLike) -> bool:
    """Whether ``out`` holds a complete trainer checkpoint (one that ``--resume`` continues)."""
    return any((Path(out) / "checkpoints").glob("step-*/trainer_state.json"))


def _input_paths(inputs: Inputs | None) -> Iterable[tuple[str, Path]]:
    for option, value in (inputs or {}).items():
        values = [value] if isinstance(value, (str, Path)) or value is None else list(value)
        for path in values:
            # A Hub id is no local path: its cache folder is checked once it is resolved.
            if path is not None and Path(path).expanduser().exists():
                yield option, Path(path).expanduser()


def check_not_an_input(out: PathLike, inputs: Inputs | None) -> None:
    """Refuse an output folder that is one of the inputs, lies inside one or holds one:
    nothing of mlx_llm writes into what it reads, not even with ``overwrite``.

    Args:
        out: The output folder.
        inputs: What the command reads, by the option that names it (paths
            that do not exist locally, such as Hub ids, are skipped).

    Raises:
        ValueError: naming the option and the relation.
    """
    out = Path(out).expanduser()
    resolved = out.resolve()
    for option, path in _input_paths(inputs):
        source = path.resolve()
        kind = "folder" if source.is_dir() else "file"
        if resolved == source:
            relation = f"is the {option} {kind}"
        elif source in resolved.parents:
            relation = f"is inside the {option} {kind} {path}"
        elif resolved in source.parents:
            relation = f"holds the {option} {kind} {path}"
        else:
            continue
        raise ValueError(
            f"--out {out} {relation}: a run never writes into its inputs, not even with --overwrite; "
            "choose another --out folder"
        )


def check_run_folder(out: PathLike, *, resume: bool = False, overwrite: bool = False,
                     inputs: Inputs | None = None) -> Path:
    """Refuse a run folder that this run may not write into; writes nothing.

    Args:
        out: The run folder (``--out``).
        resume: Continue the run in ``out`` (needs a checkpoint there).
        overwrite: Start afresh in an ``out`` that holds files (deleted first).
        inputs: What the run reads, by option name (``{"--model": path}``);
            ``None`` and names that are no local path (Hub ids) are skipped.

    Returns:
        ``out`` as a `Path`.

    Raises:
        ValueError: Both flags; or ``out`` is, is inside or holds an input.
        FileExistsError: ``out`` is a file, or holds files and neither flag is given.
        FileNotFoundError: ``resume`` and ``out`` holds no checkpoint.
    """
    out = Path(out).expanduser()
    if resume and overwrite:
        raise ValueError(f"pass --resume (continue the run in {out}) or --overwrite (start afresh in it), not both")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder; choose another path")
    check_not_an_input(out, inputs)
    if resume:
        if not has_checkpoint(out):
            raise FileNotFoundError(
                f"--resume: {out} holds no checkpoint to continue from; start the run afresh without --resume "
                "(with --overwrite if the folder holds files)"
            )
    elif out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"--out {out} already holds files; pass --resume to continue the run in it, --overwrite to delete "
            "them and start afresh, or choose another folder"
        )
    return out


def _empty(folder: Path) -> None:
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


class RunFolder:
    """A checked run folder, prepared just before the run's first write and
    cleaned up when the fresh run fails (see the module docstring)::

        with RunFolder(out, resume=resume, overwrite=overwrite, inputs={"--model": model}) as run_folder:
            ...  # read and check the inputs: nothing is written yet
            out = run_folder.prepare()  # created, or emptied with overwrite
            ...  # train into out

    Args:
        out, resume, overwrite, inputs: As in `check_run_folder` (checked at once).
        writer: Whether this process writes; by default the first of several
            data-parallel ones (the others only check).
    """

    def __init__(self, out: PathLike, *, resume: bool = False, overwrite: bool = False,
                 inputs: Inputs | None = None, writer: bool | None = None):
        self.path = check_run_folder(out, resume=resume, overwrite=overwrite, inputs=inputs)
        world = mx.distributed.init()
        if world.size() > 1:  # every process has checked the folder before the first one writes to it
            mx.eval(mx.distributed.all_sum(mx.array(1.0), group=world))
        self.resume = resume
        self.overwrite = overwrite
        self.inputs = dict(inputs or {})
        self.writer = world.rank() == 0 if writer is None else writer
        self.prepared = False
        self._created: Path | None = None  # the topmost folder this run made (parents included)

    def add_inputs(self, inputs: Inputs) -> None:
        """Check inputs known only later (a Hub model's cache folder) against the folder too."""
        check_not_an_input(self.path, inputs)
        self.inputs.update(inputs)

    def prepare(self) -> Path:
        """Make the folder ready for writing: created (with missing parents) or,
        with ``overwrite``, emptied; left as it is when resuming. Checks again
        first (time has passed since). Idempotent.

        Returns:
            The folder.
        """
        if self.prepared or not self.writer:
            self.prepared = True
            return self.path
        check_run_folder(self.path, resume=self.resume, overwrite=self.overwrite, inputs=self.inputs)
        if not self.resume:
            if self.path.is_dir():
                if self.overwrite:
                    _empty(self.path)
            else:
                missing = self.path
                while not missing.parent.exists():
                    missing = missing.parent
                self.path.mkdir(parents=True)
                self._created = missing
        self.prepared = True
        return self.path

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if error is None or not self.prepared or not self.writer or self.resume or has_checkpoint(self.path):
            return  # success, nothing written, not ours to clean, or a run that --resume continues
        if self._created is not None:
            shutil.rmtree(self._created, ignore_errors=True)
        elif self.path.is_dir():
            _empty(self.path)  # it was empty when this run began (or emptied by overwrite)
