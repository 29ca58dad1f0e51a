"""Pretraining data from local text: documents, token files, and batches for GPT and BERT.

The path from text to batches:

1. `read_documents` turns files and folders into documents (strings).
2. `tokenize_corpus` tokenizes them once into a flat token file (``.bin`` +
   JSON sidecar) in a cache folder, keyed by the content of the inputs and of
   the tokenizer; `split_tokens` cuts off the last part for validation.
3. `CausalLMBatches` packs the token stream into fixed-length blocks for
   next-token prediction (GPT).
4. For BERT, `tokenize_documents_for_bert` keeps documents and sentences
   apart, and `BertPretrainingBatches` builds next-sentence pairs with
   dynamic masked-language-model masking.

Both batch iterators are infinite, seeded, and resumable: ``state()`` after
``k`` batches, then ``restore(state)`` on a fresh iterator, gives the very same
batch ``k + 1`` onwards.

Document rules (`read_documents`):

* ``.jsonl``: one document per line, from its ``"text"`` field.
* Any other file (``.txt``, ``.md``, ...): the whole file is one document, so
  that a play or a book (tinyshakespeare) stays in one piece. With
  ``split_on_blank_lines=True``, blocks separated by blank lines are separate
  documents instead (the input format of the original BERT:
  one sentence per line, a blank line between documents).
* A folder: its ``.txt`` and ``.jsonl`` files (not its ``README.md``), recursively,
  in sorted order of their paths; hidden files and folders (``.name``) are
  skipped (`mlx_llm.corpus_files`; a glob pattern picks other files).
* Documents that are empty or only whitespace are skipped.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import re
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from tqdm import tqdm

from .corpus_files import CORPUS_SUFFIXES, describe_files, list_corpus_files  # noqa: F401 (re-exported)
from .hub import TOKENIZER_FILE_NAMES, TOKENIZER_FILE_PATTERNS, write_json
from .tokenizer import Tokenizer

IGNORE_INDEX = -100
# Bump when the token file layout or the tokenization rules change: old caches are then ignored.
_CACHE_FORMAT = 1
# Corpora smaller than this tokenize without a progress bar.
_PROGRESS_MIN_BYTES = 1 << 20
# A line break followed by one or more lines that are empty or only spaces/tabs.
_BLANK_LINES = re.compile(r"\n(?:[^\S\n]*\n)+")

PathLike = str | Path


# ---------------------------------------------------------------------------
# Documents
# ---------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        # utf-8-sig drops a byte-order mark; universal newlines turn \r\n into \n.
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not UTF-8 text ({error}); convert it to UTF-8 or leave it out of the corpus"
        ) from None


def not_utf8(path: Path, line: int, error: UnicodeDecodeError) -> ValueError:
    """The error for a text file that is not UTF-8, naming where reading stopped."""
    return ValueError(f"{path}, after line {line}: not UTF-8 text ({error}); convert the file to UTF-8")


def jsonl_records(path: Path) -> Iterator[tuple[int, dict]]:
    """``(line, object)`` for each non-blank line of a .jsonl file.

    Raises:
        ValueError: naming ``FILE:LINE`` for a line that is not a JSON object,
            or where the file stops being UTF-8.
    """
    line = 0
    try:
        with path.open(encoding="utf-8-sig") as handle:
            for line, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as error:
                    raise ValueError(
                        f"{path}:{line}: not valid JSON ({error.msg}, column {error.colno}); "
                        "each line of a .jsonl file must be one JSON object"
                    ) from None
                if not isinstance(record, dict):
                    raise ValueError(f"{path}:{line}: expected a JSON object, got {type(record).__name__}")
                yield line, record
    except UnicodeDecodeError as error:
        raise not_utf8(path, line, error) from None


def _jsonl_documents(path: Path) -> Iterator[str]:
    for line, record in jsonl_records(path):
        if not isinstance(record.get("text"), str):
            raise ValueError(
                f'{path}:{line}: no "text" string field (found keys {sorted(record)}); each line '
                'of a .jsonl corpus must be an object like {"text": "..."}'
            )
        if record["text"].strip():
            yield record["text"]


def _file_documents(path: Path, split_on_blank_lines: bool) -> Iterator[str]:
    if path.suffix.lower() == ".jsonl":
        yield from _jsonl_documents(path)
        return
    text = _read_text(path)
    blocks = _BLANK_LINES.split(text) if split_on_blank_lines else [text]
    for block in blocks:
        if block.strip():
            yield block


def read_documents(paths: Sequence[PathLike] | PathLike, split_on_blank_lines: bool = False) -> Iterator[str]:
    """The documents of a corpus, one string each, in a fixed order.

    Args:
        paths: Text files, ``.jsonl`` files, and folders (see the module
            docstring for how each becomes documents).
        split_on_blank_lines: Treat blank-line-separated blocks of a text
            file as separate documents instead of the whole file as one.

    Returns:
        An iterator over the documents (files are read as it advances).

    Raises:
        FileNotFoundError: A path does not exist.
        ValueError: A ``.jsonl`` line is not a JSON object with a ``"text"``
            string (the message names the file and line), a file is not
            UTF-8, or the corpus holds no text at all.
    """
    files = list_corpus_files(paths)
    return _documents_of(files, paths, split_on_blank_lines)


def _documents_of(files: list[Path], paths: Any, split_on_blank_lines: bool) -> Iterator[str]:
    # A separate generator so that missing paths raise when read_documents is called, not later.
    count = 0
    for path in files:
        for document in _file_documents(path, split_on_blank_lines):
            count += 1
            yield document
    if count == 0:
        shown = [str(path) for path in ([paths] if isinstance(paths, (str, Path)) else paths)]
        raise ValueError(
            f"the corpus is empty: {shown} hold no text (folders are searched for "
            f"{', '.join(CORPUS_SUFFIXES)} files; empty and whitespace-only documents are skipped)"
        )


# ---------------------------------------------------------------------------
# Sentences (for BERT's next-sentence pairs)
# ---------------------------------------------------------------------------

# Sentence-final punctuation, closing quotes/brackets, then whitespace. CJK full stops need no space.
_SENTENCE_END = re.compile(r"""[.!?…]+["'”’»)\]]*(?=\s)|[。！？]+["'”’」』)\]]*""")
# Words whose trailing period does not end a sentence.
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e cf fig no vol pp approx dept est inc ltd co".split()
)


def split_sentences(text: str) -> list[str]:
    """Split text into sentences with simple rules (no language model).

    Rules: every line break ends a sentence (so verse, lists and
    one-sentence-per-line files split per line); within a line, a sentence
    ends after ``.``, ``!``, ``?`` or ``…`` (plus closing quotes or brackets)
    followed by whitespace, unless the next character is a lowercase letter,
    or the period follows a single letter (an initial) or a common
    abbreviation (Mr., Dr., e.g., etc.); ``。！？`` always end one. Sentences
    are stripped of surrounding whitespace; empty ones are dropped.

    Args:
        text: The text of one document.

    Returns:
        The sentences, in order.
    """
    sentences: list[str] = []
    for line in text.splitlines():
        start = 0
        for match in _SENTENCE_END.finditer(line):
            end = match.end()
            rest = line[end:].lstrip()
            if rest[:1].islower():
                continue
            if match.group().startswith(".") and len(match.group().rstrip("\"'”’»)]")) == 1:
                word = line[start : match.start()].split()[-1:] or [""]
                word = word[0].lstrip("\"'“‘«([").lower()
                if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
                    continue
            sentences.append(line[start:end])
            start = end
        sentences.append(line[start:])
    return [sentence.strip() for sentence in sentences if sentence.strip()]


# ---------------------------------------------------------------------------
# Token files
# ---------------------------------------------------------------------------


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
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    total_bytes = 0
    for path in files:
        _sha256_file(path, digest)
        total_bytes += path.stat().st_size
    _tokenizer_fingerprint(tokenizer, digest)
    key = digest.hexdigest()

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
    offsets: list[int] = []
    num_tokens = 0
    limit = np.iinfo(dtype).max
    try:
        with (
            temporary.open("wb") as handle,
            tqdm(
                total=total_bytes,
                unit="B",
                unit_scale=True,
                desc="tokenizing",
                file=sys.stderr,
                disable=not show_progress or total_bytes < _PROGRESS_MIN_BYTES,
            ) as progress,
        ):
            for document in _documents_of(files, paths, split_on_blank_lines):
                ids = tokenizer.encode(document, add_special_tokens=False)
                if eos_between_documents and offsets:
                    ids = [eos_id, *ids]
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


# ---------------------------------------------------------------------------
# Causal language modelling (GPT)
# ---------------------------------------------------------------------------


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_seed(seed: int) -> None:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _restore_position(name: str, state: dict, expected: dict, batches_per_epoch: int) -> tuple[int, int]:
    """Validate a saved iterator state; returns ``(epoch, position)``."""
    if not isinstance(state, dict) or not {"epoch", "position"} <= state.keys():
        raise ValueError(
            f"{name}.restore needs a dict with 'epoch' and 'position' (from state()), got {state!r}"
        )
    for key, value in expected.items():
        if key in state and state[key] != value:
            raise ValueError(
                f"the saved {name} state has {key}={state[key]!r} but this iterator has {value!r}; "
                "resume with the same data and settings as the checkpointed run"
            )
    epoch, position = state["epoch"], state["position"]
    if not all(isinstance(value, int) and value >= 0 for value in (epoch, position)):
        raise ValueError(f"epoch and position must be non-negative integers, got {epoch!r}, {position!r}")
    if position >= max(batches_per_epoch, 1):
        raise ValueError(f"position {position} is past the {batches_per_epoch} batches of an epoch")
    return epoch, position


class CausalLMBatches:
    """Shuffled, packed fixed-length blocks of a token stream, for next-token prediction.

    Block ``i`` is ``tokens[i * seq_len : i * seq_len + seq_len + 1]``: its
    first ``seq_len`` ids are the inputs and its last ``seq_len`` the targets
    (blocks share one boundary token, so no token is lost as a target). Each
    epoch visits the blocks in the order ``np.random.default_rng(seed +
    epoch).permutation(num_blocks)``, in batches of ``batch_size``; the
    ``num_blocks % batch_size`` blocks left over at the end of that order are
    skipped in that epoch (a different few each epoch), so that every batch
    has the same shape.

    The object is an infinite iterator (epoch after epoch); stop after as many
    steps as you train. ``state()`` / ``restore()`` resume it exactly.

    Args:
        tokens: 1-D token ids (e.g. ``split_tokens(...)[0]``) or a `TokenFile`.
        seq_len: Tokens per input sequence.
        batch_size: Sequences per batch.
        seed: Seed of the shuffling.

    Raises:
        ValueError: The stream is shorter than one block (``seq_len + 1`` tokens).
    """

    def __init__(self, tokens: np.ndarray | TokenFile, seq_len: int, batch_size: int, seed: int = 0):
        tokens = tokens.tokens if isinstance(tokens, TokenFile) else tokens
        if not isinstance(tokens, np.ndarray) or tokens.ndim != 1:
            raise ValueError(f"tokens must be a 1-D NumPy array of ids, got {type(tokens).__name__}")
        _check_positive(seq_len=seq_len, batch_size=batch_size)
        _check_seed(seed)
        if len(tokens) < seq_len + 1:
            raise ValueError(
                f"the token stream has {len(tokens)} tokens, but one block of seq_len={seq_len} needs "
                f"{seq_len + 1} (the inputs plus one target); use a smaller seq_len (--seq-len) or more text"
            )
        self.tokens = tokens
        self.seq_len = int(seq_len)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.num_blocks = (len(tokens) - 1) // self.seq_len
        self.batches_per_epoch = self.num_blocks // self.batch_size
        self._epoch = 0
        self._position = 0
        self._order: tuple[int, np.ndarray] | None = None

    @property
    def epoch(self) -> int:
        """The epoch the next batch comes from (0-based)."""
        return self._epoch

    def _order_of(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng(self.seed + epoch).permutation(self.num_blocks))
        return self._order[1]

    def _blocks(self, block_indices: np.ndarray) -> tuple[mx.array, mx.array]:
        starts = np.asarray(block_indices, dtype=np.int64) * self.seq_len
        window = starts[:, None] + np.arange(self.seq_len + 1)  # (B, seq_len + 1)
        blocks = np.asarray(self.tokens[window], dtype=np.int32)
        return mx.array(np.ascontiguousarray(blocks[:, :-1])), mx.array(np.ascontiguousarray(blocks[:, 1:]))

    def __iter__(self) -> CausalLMBatches:
        return self

    def __next__(self) -> tuple[mx.array, mx.array]:
        """The next ``(inputs, targets)``, int32 arrays of shape ``(batch_size, seq_len)``."""
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"the token stream makes {self.num_blocks} blocks of {self.seq_len + 1} tokens, fewer than "
                f"batch_size={self.batch_size}; use a smaller batch_size (--batch-size) or seq_len (--seq-len), or more text"
            )
        order = self._order_of(self._epoch)
        start = self._position * self.batch_size
        batch = self._blocks(order[start : start + self.batch_size])
        self._position += 1
        if self._position == self.batches_per_epoch:
            self._epoch, self._position = self._epoch + 1, 0
        return batch

    def state(self) -> dict:
        """Where the iterator stands: pass to `restore` to continue from here.

        Returns:
            ``{"epoch", "position"}`` (the next batch) plus the settings
            (``seed``, ``seq_len``, ``batch_size``, ``num_blocks``) that
            `restore` checks.
        """
        return {"epoch": self._epoch, "position": self._position, **self._settings()}

    def _settings(self) -> dict:
        """What a saved position is only valid for."""
        return {"seed": self.seed, "seq_len": self.seq_len, "batch_size": self.batch_size, "num_blocks": self.num_blocks}

    def restore(self, state: dict) -> None:
        """Continue from a `state`: the next batch is the one that followed it.

        Raises:
            ValueError: The state is malformed or comes from other data or settings.
        """
        self._epoch, self._position = _restore_position(
            "CausalLMBatches", state, self._settings(), self.batches_per_epoch
        )

    def evaluation_batches(self) -> Iterator[tuple[mx.array, mx.array]]:
        """Every block once, in order, for validation; the last batch may be smaller.

        Does not touch the training position.

        Returns:
            An iterator of ``(inputs, targets)`` int32 arrays of shape ``(b, seq_len)``.
        """
        for start in range(0, self.num_blocks, self.batch_size):
            yield self._blocks(np.arange(start, min(start + self.batch_size, self.num_blocks)))


# ---------------------------------------------------------------------------
# BERT pretraining: next-sentence pairs and masked language modelling
# ---------------------------------------------------------------------------


def tokenize_documents_for_bert(
    paths: Sequence[PathLike] | PathLike,
    tokenizer: Tokenizer,
    split_on_blank_lines: bool = False,
    show_progress: bool = True,
) -> list[list[list[int]]]:
    """Read a corpus and tokenize it sentence by sentence, keeping documents apart.

    Args:
        paths: Files and folders, as for `read_documents`.
        tokenizer: The tokenizer; each sentence is encoded without special tokens.
        split_on_blank_lines: As for `read_documents`.
        show_progress: Show a progress bar on stderr (only for corpora of 1 MiB or more).

    Returns:
        Documents → sentences (see `split_sentences`) → token ids; sentences
        that encode to no ids are dropped.
    """
    files = list_corpus_files(paths)
    total_bytes = sum(path.stat().st_size for path in files)
    documents: list[list[list[int]]] = []
    with tqdm(
        total=total_bytes,
        unit="B",
        unit_scale=True,
        desc="tokenizing",
        file=sys.stderr,
        disable=not show_progress or total_bytes < _PROGRESS_MIN_BYTES,
    ) as progress:
        for document in _documents_of(files, paths, split_on_blank_lines):
            sentences = [
                tokenizer.encode(sentence, add_special_tokens=False) for sentence in split_sentences(document)
            ]
            documents.append([ids for ids in sentences if ids])
            progress.update(len(document.encode("utf-8")))
    return documents


def split_documents(
    documents: Sequence[Any], validation_fraction: float = 0.1
) -> tuple[list[Any], list[Any]]:
    """Split documents into training and validation sets: the last documents validate.

    Args:
        documents: The documents (e.g. from `tokenize_documents_for_bert`).
        validation_fraction: Share of the documents kept for validation (rounded).

    Returns:
        ``(train, validation)`` lists.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    boundary = len(documents) - int(round(len(documents) * validation_fraction))
    return list(documents[:boundary]), list(documents[boundary:])


@dataclass(frozen=True)
class _SentencePair:
    """One next-sentence-prediction example before masking."""

    first: np.ndarray  # segment A ids (int32)
    second: np.ndarray  # segment B ids (int32)
    next_sentence_label: int  # 0: B follows A in the document; 1: B comes from another document


def _truncate_pair(first: np.ndarray, second: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut a pair to ``budget`` ids in all, one id at a time from the longer segment.

    A loses ids at its start and B at its end, so that when B continues A the
    two still meet where they met in the document.
    """
    length_first, length_second = len(first), len(second)
    excess = length_first + length_second - budget
    if excess <= 0:
        return first, second
    # Shrink the longer down to the shorter, then alternate (B first on a tie), as one id at a time would.
    gap = min(excess, abs(length_first - length_second))
    if length_first > length_second:
        length_first -= gap
    else:
        length_second -= gap
    remaining = excess - gap
    length_second -= (remaining + 1) // 2
    length_first -= remaining // 2
    return first[len(first) - length_first :], second[:length_second]


class BertPretrainingBatches:
    """BERT pretraining batches: next-sentence pairs with dynamic masked-language-model masking.

    Pairs are built once, as in BERT's ``create_pretraining_data.py``: walking
    through each document with 2+ sentences, consecutive sentences gather
    until they reach a target length (``max_length - 3`` ids, or with
    ``short_sequence_probability`` a random shorter one); segment A is the
    first one or more of them. With ``next_sentence_probability`` B is the
    rest of them, the actual continuation (``next_sentence_label`` 0, as in
    Hugging Face); otherwise B is sentences from a random other document
    (label 1) and the unused sentences start the next pair. A pair longer
    than ``max_length - 3`` is cut one id at a time from the longer segment:
    A from its start, B from its end, so a continuation stays adjacent. A
    lone last sentence of a document does not start a pair. Documents with
    one sentence serve only as the source of random Bs.

    Each batch is ``[CLS] A [SEP] B [SEP]`` right-padded to ``max_length``
    with ``token_type_ids`` 0 for ``[CLS] A [SEP]`` and 1 for ``B [SEP]``.
    Masking is drawn fresh for every batch (so each epoch masks differently):
    each non-special, non-padding id is chosen with ``mask_probability``; a
    chosen id becomes ``[MASK]`` with ``mask_token_fraction``, a random
    non-special id with ``random_token_fraction``, else stays; ``mlm_labels``
    holds the original id at chosen positions and -100 elsewhere.

    Pair order is shuffled each epoch with ``np.random.default_rng(seed +
    epoch)``; the ``num_pairs % batch_size`` pairs left over are skipped in
    that epoch. The object is an infinite iterator; ``state()`` /
    ``restore()`` resume it exactly.

    Args:
        documents_tokens: Documents → sentences → token ids (from
            `tokenize_documents_for_bert`).
        tokenizer: Gives the ``[CLS]``, ``[SEP]``, ``[MASK]`` and ``[PAD]``
            ids, the special ids and the vocabulary size.
        max_length: Length of every sequence, special tokens included (>= 5).
        batch_size: Sequences per batch.
        seed: Seed of pairing, shuffling and masking.
        mask_probability: Chance that an eligible id is chosen for prediction.
        mask_token_fraction: Share of chosen ids replaced by ``[MASK]``.
        random_token_fraction: Share of chosen ids replaced by a random id.
        next_sentence_probability: Chance that B is the actual continuation.
        short_sequence_probability: Chance that a pair aims at a random
            length shorter than ``max_length`` (so the model also sees short inputs).

    Raises:
        ValueError: A setting is out of range, the tokenizer lacks a needed
            special token, no document has 2+ sentences, or random Bs are
            needed and there are fewer than 2 non-empty documents.
    """

    def __init__(
        self,
        documents_tokens: Sequence[Sequence[Sequence[int]]],
        tokenizer: Tokenizer,
        max_length: int,
        batch_size: int,
        seed: int = 0,
        mask_probability: float = 0.15,
        mask_token_fraction: float = 0.8,
        random_token_fraction: float = 0.1,
        next_sentence_probability: float = 0.5,
        short_sequence_probability: float = 0.1,
    ):
        _check_positive(max_length=max_length, batch_size=batch_size)
        _check_seed(seed)
        if max_length < 5:
            raise ValueError(
                f"max_length must be at least 5 ([CLS], [SEP], [SEP] and one id per segment), got {max_length}"
            )
        probabilities = {
            "mask_probability": mask_probability,
            "mask_token_fraction": mask_token_fraction,
            "random_token_fraction": random_token_fraction,
            "next_sentence_probability": next_sentence_probability,
            "short_sequence_probability": short_sequence_probability,
        }
        for name, value in probabilities.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if mask_token_fraction + random_token_fraction > 1.0:
            raise ValueError(
                f"mask_token_fraction + random_token_fraction must be at most 1, got "
                f"{mask_token_fraction} + {random_token_fraction}"
            )
        special = {
            "cls": tokenizer.cls_token_id,
            "sep": tokenizer.sep_token_id,
            "mask": tokenizer.mask_token_id,
            "pad": tokenizer.pad_token_id,
        }
        missing = [f"[{name.upper()}]" for name, value in special.items() if value is None]
        if missing:
            raise ValueError(
                f"BERT pretraining needs {', '.join(missing)} token(s) the tokenizer lacks; train one "
                "with train_tokenizer(..., bert_special_tokens=True) (mlx-llm tokenizer train --bert) or use a "
                "BERT tokenizer"
            )
        self.cls_token_id, self.sep_token_id = special["cls"], special["sep"]
        self.mask_token_id, self.pad_token_id = special["mask"], special["pad"]
        self.special_ids = np.asarray(
            sorted(set(tokenizer.all_special_ids) | set(special.values())), dtype=np.int32
        )
        self.vocab_size = int(tokenizer.vocab_size)
        self.replacement_ids = np.setdiff1d(np.arange(self.vocab_size, dtype=np.int32), self.special_ids)
        if random_token_fraction > 0 and self.replacement_ids.size == 0:
            raise ValueError("the vocabulary has no non-special ids to use as random replacements")
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.mask_probability = float(mask_probability)
        self.mask_token_fraction = float(mask_token_fraction)
        self.random_token_fraction = float(random_token_fraction)
        self.next_sentence_probability = float(next_sentence_probability)
        self.short_sequence_probability = float(short_sequence_probability)

        self.pairs = self._build_pairs(documents_tokens)
        self.num_pairs = len(self.pairs)
        self.batches_per_epoch = self.num_pairs // self.batch_size
        self._epoch = 0
        self._position = 0
        self._order: tuple[int, np.ndarray] | None = None

    # -- pairs --------------------------------------------------------------

    def _build_pairs(self, documents_tokens: Sequence[Sequence[Sequence[int]]]) -> list[_SentencePair]:
        documents = [
            [np.asarray(sentence, dtype=np.int32) for sentence in document if len(sentence) > 0]
            for document in documents_tokens
        ]
        sources = [index for index, document in enumerate(documents) if document]
        if not any(len(document) >= 2 for document in documents):
            raise ValueError(
                f"no document of the {len(documents)} has 2 or more sentences; next-sentence pairs need "
                "consecutive sentences within a document (check the sentence splitting, or pass more text)"
            )
        if self.next_sentence_probability < 1.0 and len(sources) < 2:
            raise ValueError(
                "random next sentences come from other documents, and the corpus has only one; split "
                "the text into documents (a folder of files, a .jsonl file, or blank lines between documents "
                "with split_on_blank_lines=True, --split-on-blank-lines) or pass next_sentence_probability=1.0 "
                "(--nsp-probability 1)"
            )
        # Its own stream, independent of the epoch shuffles (seed + epoch) and the masking.
        rng = np.random.default_rng([self.seed, 0x4E5350])
        budget = self.max_length - 3
        pairs: list[_SentencePair] = []
        for document_index, document in enumerate(documents):
            if len(document) < 2:
                continue
            pairs.extend(self._document_pairs(document_index, documents, sources, budget, rng))
        return pairs

    def _target_length(self, budget: int, rng: np.random.Generator) -> int:
        if budget > 2 and rng.random() < self.short_sequence_probability:
            return int(rng.integers(2, budget + 1))
        return budget

    def _document_pairs(
        self,
        document_index: int,
        documents: list[list[np.ndarray]],
        sources: list[int],
        budget: int,
        rng: np.random.Generator,
    ) -> Iterator[_SentencePair]:
        document = documents[document_index]
        target = self._target_length(budget, rng)
        chunk: list[int] = []  # indices of the gathered sentences
        length = 0
        index = 0
        while index < len(document):
            chunk.append(index)
            length += len(document[index])
            at_end = index == len(document) - 1
            if at_end or length >= target:
                if len(chunk) == 1 and at_end:
                    break  # a lone last sentence starts no pair (whatever its label would be)
                is_next = rng.random() < self.next_sentence_probability
                if len(chunk) == 1 and is_next:
                    index += 1  # a continuation needs a second sentence: take the next one
                    chunk.append(index)
                split = int(rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
                first = np.concatenate([document[i] for i in chunk[:split]])
                if is_next:
                    second = np.concatenate([document[i] for i in chunk[split:]])
                else:
                    second = self._random_segment(document_index, documents, sources, target - len(first), rng)
                    index -= len(chunk) - split  # the unused sentences start the next pair
                first, second = _truncate_pair(first, second, budget)
                yield _SentencePair(first, second, 0 if is_next else 1)
                chunk, length = [], 0
                target = self._target_length(budget, rng)
            index += 1

    @staticmethod
    def _random_segment(
        document_index: int,
        documents: list[list[np.ndarray]],
        sources: list[int],
        target: int,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Consecutive sentences of a random other document, at least ``target`` ids if it has them."""
        # A uniform pick among the sources other than this document (sources is sorted).
        pick = int(rng.integers(len(sources) - 1))
        if pick >= bisect.bisect_left(sources, document_index):
            pick += 1
        other = documents[sources[pick]]
        start = int(rng.integers(len(other)))
        sentences: list[np.ndarray] = []
        length = 0
        for sentence in other[start:]:
            sentences.append(sentence)
            length += len(sentence)
            if length >= target:
                break
        return np.concatenate(sentences)

    # -- batches ------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The epoch the next batch comes from (0-based)."""
        return self._epoch

    def _order_of(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng(self.seed + epoch).permutation(self.num_pairs))
        return self._order[1]

    def _batch(self, pair_indices: np.ndarray, rng: np.random.Generator) -> dict[str, mx.array]:
        rows, length = len(pair_indices), self.max_length
        input_ids = np.full((rows, length), self.pad_token_id, dtype=np.int32)
        token_type_ids = np.zeros((rows, length), dtype=np.int32)
        attention_mask = np.zeros((rows, length), dtype=np.int32)
        next_sentence_label = np.zeros(rows, dtype=np.int32)
        for row, pair_index in enumerate(pair_indices):
            pair = self.pairs[int(pair_index)]
            ids = np.concatenate(
                [[self.cls_token_id], pair.first, [self.sep_token_id], pair.second, [self.sep_token_id]]
            )
            input_ids[row, : len(ids)] = ids
            token_type_ids[row, len(pair.first) + 2 : len(ids)] = 1
            attention_mask[row, : len(ids)] = 1
            next_sentence_label[row] = pair.next_sentence_label

        # Dynamic masking: (rows, length) draws, fresh per batch.
        eligible = (attention_mask == 1) & ~np.isin(input_ids, self.special_ids)
        chosen = eligible & (rng.random((rows, length)) < self.mask_probability)
        action = rng.random((rows, length))
        to_mask = chosen & (action < self.mask_token_fraction)
        to_random = (
            chosen
            & (action >= self.mask_token_fraction)
            & (action < self.mask_token_fraction + self.random_token_fraction)
        )
        mlm_labels = np.where(chosen, input_ids, IGNORE_INDEX).astype(np.int32)
        input_ids[to_mask] = self.mask_token_id
        if to_random.any():
            input_ids[to_random] = rng.choice(self.replacement_ids, size=int(to_random.sum()))
        return {
            "input_ids": mx.array(input_ids),
            "token_type_ids": mx.array(token_type_ids),
            "attention_mask": mx.array(attention_mask),
            "mlm_labels": mx.array(mlm_labels),
            "next_sentence_label": mx.array(next_sentence_label),
        }

    def __iter__(self) -> BertPretrainingBatches:
        return self

    def __next__(self) -> dict[str, mx.array]:
        """The next batch: ``input_ids``, ``token_type_ids``, ``attention_mask``,
        ``mlm_labels`` of shape ``(batch_size, max_length)`` and
        ``next_sentence_label`` of shape ``(batch_size,)``, all int32."""
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"the corpus makes {self.num_pairs} sentence pairs, fewer than batch_size={self.batch_size}; "
                "use a smaller batch_size (--batch-size) or max_length (--seq-len), or more text"
            )
        order = self._order_of(self._epoch)
        start = self._position * self.batch_size
        rng = np.random.default_rng([self.seed, self._epoch, self._position, 0x4D4C4D])
        batch = self._batch(order[start : start + self.batch_size], rng)
        self._position += 1
        if self._position == self.batches_per_epoch:
            self._epoch, self._position = self._epoch + 1, 0
        return batch

    def state(self) -> dict:
        """Where the iterator stands: pass to `restore` to continue from here.

        Returns:
            ``{"epoch", "position"}`` (the next batch) plus the settings
            (``seed``, ``max_length``, ``batch_size``, ``num_pairs``) that `restore` checks.
        """
        return {"epoch": self._epoch, "position": self._position, **self._settings()}

    def _settings(self) -> dict:
        """What a saved position is only valid for."""
        return {"seed": self.seed, "max_length": self.max_length, "batch_size": self.batch_size, "num_pairs": self.num_pairs}

    def restore(self, state: dict) -> None:
        """Continue from a `state`: the next batch is the one that followed it.

        Raises:
            ValueError: The state is malformed or comes from other data or settings.
        """
        self._epoch, self._position = _restore_position(
            "BertPretrainingBatches", state, self._settings(), self.batches_per_epoch
        )

    def evaluation_batches(self) -> Iterator[dict[str, mx.array]]:
        """Every pair once, in order, with the same masking on every call, for validation.

        The last batch may be smaller. Does not touch the training position.

        Returns:
            An iterator of batches shaped as in iteration, with ``b <= batch_size`` rows.
        """
        for batch_index, start in enumerate(range(0, self.num_pairs, self.batch_size)):
            rng = np.random.default_rng([self.seed, batch_index, 0x4556414C])
            yield self._batch(np.arange(start, min(start + self.batch_size, self.num_pairs)), rng)
