"""Documents of a pretraining corpus: files and folders of text read as strings, and their sentences.

Document rules (`read_documents`):

* ``.jsonl``: one document per line, from its ``"text"`` field.
* Any other file (``.txt``, ``.md``, ...): the whole file is one document, so
  that a play or a book (tinyshakespeare) stays in one piece. With
  ``split_on_blank_lines=True``, blocks separated by blank lines are separate
  documents instead (the input format of the original BERT:
  one sentence per line, a blank line between documents).
* A folder: its ``.txt`` and ``.jsonl`` files (not its ``README.md``), recursively,
  in sorted order of their paths; hidden files and folders (``.name``) are
  skipped (`mlx_llm.data.corpus_files`; a glob pattern picks other files).
* Documents that are empty or only whitespace are skipped.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .corpus_files import CORPUS_SUFFIXES, list_corpus_files

# Corpora smaller than this tokenize without a progress bar.
_PROGRESS_MIN_BYTES = 1 << 20
# A line break followed by one or more lines that are empty or only spaces/tabs.
_BLANK_LINES = re.compile(r"\n(?:[^\S\n]*\n)+")

PathLike = str | Path


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
    return documents_of(files, paths, split_on_blank_lines)


def documents_of(files: list[Path], paths: Any, split_on_blank_lines: bool) -> Iterator[str]:
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


def tokenizing_progress(total_bytes: int, show_progress: bool) -> tqdm:
    """A progress bar on stderr over the bytes of a corpus, shown only for corpora of 1 MiB or more."""
    return tqdm(
        total=total_bytes,
        unit="B",
        unit_scale=True,
        desc="tokenizing",
        file=sys.stderr,
        disable=not show_progress or total_bytes < _PROGRESS_MIN_BYTES,
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
