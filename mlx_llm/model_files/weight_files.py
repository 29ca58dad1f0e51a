"""Weight files of a checkpoint folder: find its safetensors files (refusing
pickle-only checkpoints), load them, save them (sharded, with an index), and
read a file's header without loading it."""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, overload

import mlx.core as mx

from .hub import PICKLE_PATTERNS, read_json, write_json

SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
SINGLE_WEIGHTS_NAME = "model.safetensors"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_SHARD_NAME = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds only pickle weights, which mlx_llm refuses to load."""


# ---------------------------------------------------------------------------
# Finding weight files


def find_weight_files(folder: str | Path) -> list[Path]:
    """The safetensors weight files of a checkpoint folder.

    With a ``model.safetensors.index.json`` present, exactly the shards its
    ``weight_map`` lists (in name order); otherwise every ``*.safetensors``
    file in the folder (hidden temporary files excluded).

    Args:
        folder: A checkpoint folder.

    Returns:
        The weight files, sorted by name.

    Raises:
        FileNotFoundError: The folder does not exist, a shard listed in the
            index is missing, or the folder holds no weights at all.
        UnsafeCheckpointError: The folder holds only pickle weights
            (``pytorch_model*.bin``, ``*.pt``, ...).
        ValueError: The index file is malformed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist or is not a folder")

    index_path = folder / SAFETENSORS_INDEX_NAME
    if index_path.is_file():
        shard_names = _shards_of_index(index_path)
        missing = [name for name in shard_names if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{index_path} lists shard(s) missing from {folder}: {', '.join(missing)}; the download or "
                "conversion is incomplete, download or convert the model again"
            )
        return [folder / name for name in shard_names]

    weights = sorted(path for path in folder.glob("*.safetensors") if not path.name.startswith("."))
    if weights:
        return weights

    pickles = sorted({path.name for pattern in PICKLE_PATTERNS for path in folder.glob(pattern)})
    if pickles:
        raise UnsafeCheckpointError(
            f"{folder} holds only pickle weights ({', '.join(pickles)}). Pickle files can run arbitrary "
            "code when loaded, so mlx_llm only loads safetensors. Convert them once with transformers: "
            "`AutoModel.from_pretrained(path).save_pretrained(out, safe_serialization=True)`, or use a "
            "repo revision that has *.safetensors files"
        )
    raise FileNotFoundError(
        f"no weights found in {folder}: looked for {SAFETENSORS_INDEX_NAME} and *.safetensors (and for "
        f"pickle files {', '.join(PICKLE_PATTERNS)}). Pass the folder that holds the model weights"
    )


def _shards_of_index(index_path: Path) -> list[str]:
    """Unique shard file names of a safetensors index, validated to stay inside its folder."""
    index = read_json(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(
            f"{index_path} has no 'weight_map' object of tensor names to shard files; "
            "download or convert the model again"
        )
    shard_names = sorted(set(weight_map.values()))
    for name in shard_names:
        if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
            raise ValueError(
                f"{index_path} lists the shard {name!r}, which is not a plain file name in its folder; "
                "the index is corrupt, download or convert the model again"
            )
    return shard_names


# ---------------------------------------------------------------------------
# Loading and saving safetensors


@overload
def load_safetensors(
    files: Sequence[str | Path] | str | Path, return_metadata: Literal[False] = False
) -> dict[str, mx.array]: ...


@overload
def load_safetensors(
    files: Sequence[str | Path] | str | Path, return_metadata: Literal[True]
) -> tuple[dict[str, mx.array], dict[str, str]]: ...


def load_safetensors(
    files: Sequence[str | Path] | str | Path, return_metadata: bool = False
) -> dict[str, mx.array] | tuple[dict[str, mx.array], dict[str, str]]:
    """Load the tensors of one or more safetensors files with ``mx.load``.

    Args:
        files: The files (e.g. from `find_weight_files`), or a single file.
        return_metadata: Also return the files' string metadata (the
            ``__metadata__`` header), merged; the first file wins on conflicts.

    Returns:
        Tensor name to array (dtypes as stored, bfloat16 included), and with
        ``return_metadata`` the metadata dict as well.

    Raises:
        FileNotFoundError: A file does not exist.
        UnsafeCheckpointError: A file is a pickle checkpoint.
        ValueError: A file is damaged or incomplete, is not a safetensors
            file, or two files hold a tensor of the same name.
    """
    if isinstance(files, (str, Path)):
        files = [files]
    if not files:
        raise ValueError("no weight files given; use find_weight_files(folder) to list a checkpoint's files")
    weights: dict[str, mx.array] = {}
    source_of: dict[str, Path] = {}
    metadata: dict[str, str] = {}
    for file in map(Path, files):
        if file.suffix in _PICKLE_SUFFIXES:
            raise UnsafeCheckpointError(
                f"{file} is a pickle checkpoint, which can run arbitrary code when loaded; mlx_llm only "
                "loads safetensors. Convert it once with transformers: "
                "`AutoModel.from_pretrained(path).save_pretrained(out, safe_serialization=True)`"
            )
        if file.suffix != ".safetensors":
            raise ValueError(f"{file} is not a .safetensors file; mlx_llm loads weights only from safetensors")
        if not file.is_file():
            raise FileNotFoundError(f"weight file {file} does not exist")
        if not os.access(file, os.R_OK):
            raise PermissionError(f"weight file {file} is not readable; check its permissions")
        try:
            tensors, file_metadata = mx.load(str(file), return_metadata=True)
        except (RuntimeError, ValueError) as error:
            raise ValueError(
                f"{file} is damaged or incomplete and cannot be read as safetensors ({error}); "
                "download it again or convert the model again"
            ) from None
        for name, array in tensors.items():
            if name in weights:
                raise ValueError(
                    f"tensor {name!r} is stored in both {source_of[name]} and {file}; the checkpoint "
                    "mixes files of different saves, keep only one set of weight files"
                )
            weights[name] = array
            source_of[name] = file
        for key, value in file_metadata.items():
            metadata.setdefault(key, value)
    return (weights, metadata) if return_metadata else weights


def save_safetensors(
    weights: dict[str, mx.array],
    folder: str | Path,
    max_shard_size: int = 5 * 2**30,
    metadata: dict[str, str] | None = None,
) -> list[Path]:
    """Save tensors as safetensors, sharded in Hugging Face layout when large.

    One ``model.safetensors`` when everything fits in ``max_shard_size``
    bytes; otherwise ``model-00001-of-0000N.safetensors`` shards (tensors kept
    whole, in the given order; a tensor larger than the limit gets a shard of
    its own) plus ``model.safetensors.index.json`` with ``metadata.total_size``
    and ``weight_map``. Every file is written under a hidden temporary name and
    renamed when complete; the index is renamed last. Weight files of an
    earlier save in ``folder`` (``model.safetensors``, ``model-*-of-*`` shards,
    the index) that this save does not overwrite are removed, so the folder
    holds one consistent checkpoint.

    Args:
        weights: Tensor name to array.
        folder: Output folder, created if missing.
        max_shard_size: Most bytes of tensor data per file.
        metadata: String metadata stored in every file's header, on top of
            ``{"format": "mlx"}``.

    Returns:
        The weight files written, in shard order (the index is not included).
    """
    if not weights:
        raise ValueError("no tensors to save: weights is empty")
    if max_shard_size < 1:
        raise ValueError(f"max_shard_size must be >= 1 byte, got {max_shard_size}")
    for name, array in weights.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"tensor names must be non-empty strings, got {name!r}")
        if not isinstance(array, mx.array):
            raise TypeError(f"tensor {name!r} is a {type(array).__name__}, expected an mx.array")
    header = {"format": "mlx", **(metadata or {})}
    for key, value in header.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"safetensors metadata must map strings to strings, got {key!r}: {value!r}")

    # Greedy packing in the given order, so shards follow the model's layer order.
    shards: list[dict[str, mx.array]] = [{}]
    shard_bytes = 0
    for name, array in weights.items():
        if shards[-1] and shard_bytes + array.nbytes > max_shard_size:
            shards.append({})
            shard_bytes = 0
        shards[-1][name] = array
        shard_bytes += array.nbytes
    if len(shards) == 1:
        names = [SINGLE_WEIGHTS_NAME]
    else:
        names = [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name for name in names]
    temporaries = [path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp") for path in paths]
    try:
        for temporary, shard in zip(temporaries, shards):
            with open(temporary, "wb") as handle:
                mx.save_safetensors(handle, shard, metadata=header)
        for temporary, path in zip(temporaries, paths):
            os.replace(temporary, path)
    finally:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)

    index_path = folder / SAFETENSORS_INDEX_NAME
    if len(shards) > 1:
        weight_map = {name: path.name for path, shard in zip(paths, shards) for name in shard}
        total_size = sum(array.nbytes for array in weights.values())
        write_json(
            {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))},
            index_path,
        )
    else:
        index_path.unlink(missing_ok=True)
    written = set(names)
    for stale in folder.iterdir():
        if stale.name not in written and (
            stale.name == SINGLE_WEIGHTS_NAME or _SHARD_NAME.fullmatch(stale.name)
        ):
            stale.unlink()
    return paths


def read_safetensors_header(file: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor names with their stored dtype and shape, read from the file header
    only (no tensor data is loaded).

    Returns:
        ``{name: (dtype, shape)}`` with safetensors dtype names (``"F32"``, ``"BF16"``, ``"U32"``...).
    """
    file = Path(file)
    try:
        with open(file, "rb") as handle:
            header_length = int.from_bytes(handle.read(8), "little")
            if header_length <= 0 or header_length > file.stat().st_size - 8:
                raise ValueError("bad header length")
            header = json.loads(handle.read(header_length))
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{file} is damaged or incomplete and cannot be read as safetensors ({error}); "
            "download it again or convert the model again"
        ) from None
    return {
        name: (entry["dtype"], tuple(entry["shape"]))
        for name, entry in header.items()
        if name != "__metadata__"
    }
