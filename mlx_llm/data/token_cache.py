"""The token cache: a corpus tokenized once into a flat token file, reused while nothing changed.

`tokenize_corpus` writes ``cache_dir/corpus-<key>.bin`` (the ids of every
document, concatenated) and a JSON sidecar, keyed by the content of the inputs
and of the tokenizer; `TokenFile` opens one; `split_tokens` cuts off the last
part for validation.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..model_files.hub import TOKENIZER_FILE_NAMES, TOKENIZER_FILE_PATTERNS, write_json
from ..tokenization import Tokenizer
from .corpus_files import list_corpus_files
from .documents import PathLike, documents_of, tokenizing_progress

# Bump when the token file layout or the tokenization rules change: old caches are then ignored.
_CACHE_FORMAT = 1


@dataclass(frozen=True)
class TokenFile:
    """A tokenized corpus on disk: a flat ``.bin`` of token ids and a JSON sidecar.

    Attributes:
        path: The ``.bin`` file.
        tokens: All token ids, a read-only ``np.memmap`` (uint16 or uint32).
        document_offsets: Index in `tokens` where each document starts (int64).
        metadata: The JSON sidecar (dtype, counts, cache key, options).
    """

    path: Path
    tokens: np.ndarray
    document_offsets: np.ndarray
    metadata: dict = field(repr=False)

    @property
    def num_tokens(self) -> int:
        """Number of token ids in the file."""
        return int(self.tokens.shape[0])

    @property
    def num_documents(self) -> int:
        """Number of documents."""
        return int(self.document_offsets.shape[0])

    @property
    def metadata_path(self) -> Path:
        """The JSON sidecar next to the ``.bin`` file."""
        return self.path.with_suffix(".json")

    @classmethod
    def open(cls, path: PathLike) -> TokenFile:
        """Open a token file written by `tokenize_corpus`.

        Args:
            path: The ``.bin`` file or its ``.json`` sidecar.

        Returns:
            The token file, its tokens memory-mapped read-only.

        Raises:
            FileNotFoundError: The ``.bin`` or ``.json`` file is missing.
            ValueError: The sidecar does not describe the ``.bin`` file.
        """
        path = Path(path)
        bin_path, metadata_path = path.with_suffix(".bin"), path.with_suffix(".json")
        for required in (bin_path, metadata_path):
            if not required.is_file():
                raise FileNotFoundError(
                    f"token file {required} does not exist; run tokenize_corpus to create it"
                )
        try:
            metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
            dtype = np.dtype(metadata["dtype"])
            num_tokens = int(metadata["num_tokens"])
            offsets = np.asarray(metadata["document_offsets"], dtype=np.int64)
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"{metadata_path} is not a token file sidecar ({error}); delete it and tokenize again"
            ) from None
        expected = num_tokens * dtype.itemsize
        if bin_path.stat().st_size != expected:
            raise ValueError(
                f"{bin_path} has {bin_path.stat().st_size} bytes but its sidecar says {num_tokens} "
                f"{dtype} tokens ({expected} bytes); delete both files and tokenize again"
            )
        if num_tokens == 0:
            tokens = np.zeros(0, dtype=dtype)
        else:
            tokens = np.memmap(bin_path, dtype=dtype, mode="r", shape=(num_tokens,))
        return cls(path=bin_path, tokens=tokens, document_offsets=offsets, metadata=metadata)


def _sha256_file(path: Path, digest: Any) -> None:
    """Feed the size and the content of ``path`` into ``digest``."""
    digest.update(f"{path.stat().st_size}:".encode())
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)


def _tokenizer_fingerprint(tokenizer: Tokenizer, digest: Any) -> None:
    """Feed the tokenizer's files (or, without a folder, its vocabulary) into ``digest``."""
    folder = tokenizer.folder
    files: list[Path] = []
    if folder is not None and Path(folder).is_dir():
        folder = Path(folder)
        files = [folder / name for name in TOKENIZER_FILE_NAMES if (folder / name).is_file()]
        for pattern in TOKENIZER_FILE_PATTERNS:
            files += sorted(folder.glob(pattern))
    if files:
        for path in files:
            digest.update(path.name.encode())
            _sha256_file(path, digest)
    else:
        for index in range(tokenizer.vocab_size):
            digest.update(f"{tokenizer.id_to_token(index)}\0".encode())
    digest.update(f"vocab={tokenizer.vocab_size};eos={tokenizer.eos_token_id}".encode())


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def tokenize_corpus(
    paths: Sequence[PathLike] | PathLike,
    tokenizer: Tokenizer,
    cache_dir: PathLike,
    eos_between_documents: bool = True,
    split_on_blank_lines: bool = False,
    show_progress: bool = True,
) -> TokenFile:
    """Tokenize a corpus once into a flat token file, reusing a cached one when nothing changed.

    Each document is encoded without special tokens
    (``tokenizer.encode(document, add_special_tokens=False)``) and the
    documents are concatenated, with the eos id between consecutive ones if
    ``eos_between_documents``. The ids go into ``cache_dir/corpus-<key>.bin``
    (uint16 when the vocabulary fits, else uint32) with a JSON sidecar;
    ``<key>`` is a SHA-256 of the input files' contents, the tokenizer's files
    and the options, so a changed input or tokenizer gives a new file and an
    unchanged one reuses the old file untouched. Both files are written
    under temporary names and renamed when complete.

    Args:
        paths: Files and folders, as for `read_documents`.
        tokenizer: The tokenizer (ideally loaded with
            `Tokenizer.from_pretrained`, whose files key the cache).
        cache_dir: Folder for token files (created if missing).
        eos_between_documents: Put the eos id between documents.
        split_on_blank_lines: As for `read_documents`.
        show_progress: Show a progress bar on stderr (only for corpora of 1 MiB or more).

    Returns:
        The `TokenFile`.

    Raises:
        FileNotFoundError: An input path does not exist.
        ValueError: The corpus is empty or malformed (see `read_documents`),
            or ``eos_between_documents`` is set and the tokenizer has no eos token.
    """
    files = list_corpus_files(paths)
    eos_id = tokenizer.eos_token_id
    if eos_between_documents and eos_id is None:
        raise ValueError(
            "this tokenizer has no eos token, which GPT training puts between documents; use a tokenizer "
            "with one (mlx-llm tokenizer train makes one), or pass eos_between_documents=False"
        )
    dtype = _token_dtype(tokenizer.vocab_size)
    options = {
        "format": _CACHE_FORMAT,
        "eos_between_documents": eos_between_documents,
        "split_on_blank_lines": split_on_blank_lines,
        "dtype": dtype.name,
    }
    key = _cache_key(files, tokenizer, options)
    cache_dir = Path(cache_dir).expanduser()
    bin_path = cache_dir / f"corpus-{key[:16]}.bin"
    if bin_path.with_suffix(".json").is_file() and bin_path.is_file():
        try:
            cached = TokenFile.open(bin_path)
        except ValueError:
            cached = None  # damaged: tokenize again and replace it
        if cached is not None and cached.metadata.get("key") == key:
            return cached

    cache_dir.mkdir(parents=True, exist_ok=True)
    temporary = cache_dir / f".{bin_path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        documents = documents_of(files, paths, split_on_blank_lines)
        total_bytes = sum(path.stat().st_size for path in files)
        with temporary.open("wb") as handle, tokenizing_progress(total_bytes, show_progress) as progress:
            separator = eos_id if eos_between_documents else None
            offsets, num_tokens = _write_tokens(documents, tokenizer, separator, dtype, handle, progress)
        metadata = {
            **options,
            "key": key,
            "num_tokens": num_tokens,
            "num_documents": len(offsets),
            "vocab_size": tokenizer.vocab_size,
            "eos_token_id": eos_id if eos_between_documents else None,
            "tokenizer": None if tokenizer.folder is None else str(tokenizer.folder),
            "inputs": [str(path) for path in files],
            "document_offsets": offsets,
        }
        os.replace(temporary, bin_path)
    finally:
        temporary.unlink(missing_ok=True)
    write_json(metadata, bin_path.with_suffix(".json"))
    return TokenFile.open(bin_path)


def _cache_key(files: list[Path], tokenizer: Tokenizer, options: dict) -> str:
    """SHA-256 of the options, the input files' sizes and contents, and the tokenizer."""
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    for path in files:
        _sha256_file(path, digest)
    _tokenizer_fingerprint(tokenizer, digest)
    return digest.hexdigest()


def _write_tokens(
    documents: Iterator[str], tokenizer: Tokenizer, separator: int | None, dtype: np.dtype, handle: Any, progress: Any
) -> tuple[list[int], int]:
    """Encode each document and append its ids to ``handle`` as ``dtype``, ``separator`` (if any) between documents.

    Returns:
        ``(document_offsets, num_tokens)``: where each document starts, and the ids written.
    """
    offsets: list[int] = []
    num_tokens = 0
    limit = np.iinfo(dtype).max
    for document in documents:
        ids = tokenizer.encode(document, add_special_tokens=False)
        if separator is not None and offsets:
            ids = [separator, *ids]
            offsets.append(num_tokens + 1)
        else:
            offsets.append(num_tokens)
        array = np.asarray(ids, dtype=np.int64)
        if array.size and (array.min() < 0 or array.max() > limit):
            raise ValueError(
                f"the tokenizer produced id {int(array.max())}, outside {dtype.name}; "
                f"its vocab_size ({tokenizer.vocab_size}) is wrong"
            )
        array.astype(dtype).tofile(handle)
        num_tokens += array.size
        progress.update(len(document.encode("utf-8")))
    return offsets, num_tokens


def split_tokens(
    token_file: TokenFile | np.ndarray, validation_fraction: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Split a token stream into training and validation parts, without copying.

    Args:
        token_file: A `TokenFile` or a 1-D array of token ids.
        validation_fraction: Share of the stream, at its end, kept for
            validation (rounded to whole tokens); ``0`` gives an empty validation part.

    Returns:
        ``(train, validation)``: slices (views) of the token stream.
    """
    tokens = token_file.tokens if isinstance(token_file, TokenFile) else token_file
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    num_validation = int(round(len(tokens) * validation_fraction))
    boundary = len(tokens) - num_validation
    return tokens[:boundary], tokens[boundary:]
