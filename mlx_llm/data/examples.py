"""Fine-tuning examples and the files they come from: text classification, token classification (NER),
instructions, input/target pairs.

Readers turn a file into examples that remember where they came from
(``path`` and 1-based ``line``): `read_classification` (.csv, .tsv, .jsonl),
`read_conll` (CoNLL columns or .jsonl), `read_instructions` (.jsonl records
of plain text, prompt/completion, or chat messages) and `read_seq2seq`
(.jsonl, .csv, .tsv input/target pairs). Every error about user
data names the file and the line, and says what to do.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .documents import PathLike, jsonl_records, not_utf8

# Columns tried, in order, when read_classification is given no text_column.
TEXT_COLUMNS = ("text", "sentence", "sentence1", "question")
INSTRUCTION_FORMATS = ('{"text"}', '{"prompt", "completion"}', '{"messages"}')


class _FromFile:
    """Where an example came from: ``where`` is ``"path:line"`` (1-based line), for messages."""

    path: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass
class ClassificationExample(_FromFile):
    """A text (or text pair) and its label: a string or number, a list of them
    (multi-label), or ``None`` when the data is unlabelled."""

    text: str
    text_pair: str | None
    label: Any
    line: int
    path: str = ""


@dataclass
class TaggingExample(_FromFile):
    """A sentence as words and one tag per word (``None`` when untagged); ``line`` is its first line."""

    words: list[str]
    tags: list[str] | None
    line: int
    path: str = ""


@dataclass
class InstructionExample(_FromFile):
    """One instruction-tuning record; exactly one of ``text``, ``prompt`` + ``completion``,
    ``messages`` is set."""

    text: str | None = None
    prompt: str | None = None
    completion: str | None = None
    messages: list[dict] | None = None
    line: int = 0
    path: str = ""


@dataclass
class Seq2SeqExample(_FromFile):
    """An input text and its target text (``None`` when the data has no targets)."""

    input: str
    target: str | None
    line: int
    path: str = ""


def _existing_file(path: PathLike, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist; check the path")
    return path


def _read_table(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and ``(line, {column: cell})`` rows of a .csv, or of a .tsv read with
    tabs and no quoting (GLUE's TSVs have unbalanced quotes inside sentences)."""
    tsv = path.suffix.lower() == ".tsv"
    options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if tsv else {}
    hint = "a tab inside a text splits it; remove it" if tsv else 'quote cells that hold commas: "a, b"'
    header: list[str] | None = None
    rows: list[tuple[int, dict[str, str]]] = []
    end = 0
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, **options)
            for cells in reader:
                # A quoted cell may span lines: a record starts after the previous one ended.
                start, end = end + 1, reader.line_num
                if not cells:
                    continue
                if header is None:
                    header = [cell.strip() for cell in cells]
                elif len(cells) != len(header):
                    raise ValueError(
                        f"{path}:{start}: expected {len(header)} columns (as in the header), "
                        f"found {len(cells)}; {hint}"
                    )
                else:
                    rows.append((start, dict(zip(header, cells))))
    except UnicodeDecodeError as error:
        raise not_utf8(path, end, error) from None
    except csv.Error as error:
        raise ValueError(f"{path}:{end + 1}: cannot parse the row ({error})") from None
    return header or [], rows


def _check_label_value(value: Any, where: str) -> Any:
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(item, (str, int, float)) for item in items):
        raise ValueError(f"{where}: a label must be a string, a number or a list of them, got {value!r}")
    return value


def read_classification(
    path: PathLike,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str = "label",
    require_labels: bool = True,
) -> list[ClassificationExample]:
    """Examples for text (or text-pair) classification or regression.

    Args:
        path: A ``.csv`` (header row), ``.tsv`` (header row, tab-separated,
            quotes taken literally) or ``.jsonl`` (one object per line) file.
        text_column: Column (or key) of the text; by default the first of
            ``text``, ``sentence``, ``sentence1``, ``question`` the file has.
        text_pair_column: Column of the second text for pair tasks (GLUE
            MRPC: ``text_column="#1 String", text_pair_column="#2 String",
            label_column="Quality"``).
        label_column: Column of the label. In JSONL a label may be a list
            (multi-label).
        require_labels: If ``False`` (prediction input), a missing label column
            or an empty label gives ``label=None``.

    Returns:
        The examples in file order; labels as read (strings from CSV/TSV).
    """
    path = _existing_file(path, "classification data")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        records = list(jsonl_records(path))
        columns = list(records[0][1]) if records else []
    elif suffix in (".csv", ".tsv"):
        columns, records = _read_table(path)
    else:
        raise ValueError(
            f"{path}: unsupported file type {suffix!r}; classification data must be .csv, .tsv or .jsonl"
        )
    if not records:
        raise ValueError(f"{path} holds no examples; it needs a header row (CSV/TSV) and one example per line")
    if text_column is None:
        text_column = next((name for name in TEXT_COLUMNS if name in columns), None)
        if text_column is None:
            raise ValueError(
                f"{path}: no text column: looked for {list(TEXT_COLUMNS)}, the columns are {columns}; "
                "pass text_column=<name> (--text-column)"
            )
    for option, name in (("text_column", text_column), ("text_pair_column", text_pair_column)):
        if name is not None and name not in columns:
            flag = "--" + option.replace("_", "-")
            raise ValueError(f"{path}: no column {name!r} ({option}, {flag}); the columns are {columns}")
    if require_labels and label_column not in columns:
        raise ValueError(
            f"{path}: no label column {label_column!r}; the columns are {columns}; pass "
            "label_column=<one of them> (--label-column); unlabelled data is for prediction "
            "(require_labels=False, mlx-llm predict)"
        )

    examples = []
    for line, record in records:
        where = f"{path}:{line}"
        texts = []
        for name in (text_column, text_pair_column):
            value = record.get(name) if name is not None else None
            if name is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(
                    f"{where}: missing text in {name!r} (got {value!r}); every example needs a "
                    "non-empty text: fix or delete the line"
                )
            texts.append(value)
        label = record.get(label_column)
        if isinstance(label, str):
            label = label.strip() or None
        if label is None and require_labels:
            raise ValueError(
                f"{where}: no label in {label_column!r}; label every example (unlabelled data is for "
                "prediction: require_labels=False, mlx-llm predict)"
            )
        label = None if label is None else _check_label_value(label, where)
        examples.append(ClassificationExample(texts[0], texts[1], label, line, str(path)))
    return examples


def read_conll(
    path: PathLike, token_column: int = 0, tag_column: int = -1, require_tags: bool = True
) -> list[TaggingExample]:
    """Sentences for token classification (NER, part-of-speech tagging).

    Args:
        path: A CoNLL file (whitespace-separated columns, one word per line,
            a blank line between sentences, ``-DOCSTART-`` lines skipped), or
            a ``.jsonl`` file of ``{"tokens": [...], "tags": [...]}`` objects
            (``ner_tags`` instead of ``tags`` works too).
        token_column: Column of the word.
        tag_column: Column of the tag (the last one by default).
        require_tags: If ``False`` (prediction input), files with one column
            (or records without tags) give ``tags=None``.

    Returns:
        The sentences in file order.
    """
    path = _existing_file(path, "tagging data")
    if path.suffix.lower() == ".jsonl":
        examples = _tagging_records(path, require_tags)
    else:
        examples = _conll_sentences(path, token_column, tag_column, require_tags)
    if not examples:
        raise ValueError(f"{path} holds no sentences; expected one word per line and blank lines between sentences")
    return examples


def _conll_sentences(path: Path, token_column: int, tag_column: int, require_tags: bool) -> list[TaggingExample]:
    examples: list[TaggingExample] = []
    words: list[str] = []
    tags: list[str] = []
    start = 0
    columns: tuple[int, int] | None = None  # (count, line that set it)
    line = 0
    try:
        with path.open(encoding="utf-8-sig") as handle:
            for line, text in enumerate(handle, start=1):
                cells = text.split()
                if not cells or cells[0] == "-DOCSTART-":
                    if words:
                        examples.append(TaggingExample(words, tags if columns[0] > 1 else None, start, str(path)))
                    words, tags = [], []
                    continue
                if columns is None:
                    columns = (len(cells), line)
                    _check_conll_columns(path, line, len(cells), token_column, tag_column, require_tags)
                elif len(cells) != columns[0]:
                    raise ValueError(
                        f"{path}:{line}: expected {columns[0]} columns, found {len(cells)} (line {columns[1]} "
                        f"has {columns[0]}); every word line needs the same columns, and sentences are "
                        "separated by blank lines"
                    )
                if not words:
                    start = line
                words.append(cells[token_column])
                if len(cells) > 1:
                    tags.append(cells[tag_column])
    except UnicodeDecodeError as error:
        raise not_utf8(path, line, error) from None
    if words:
        examples.append(TaggingExample(words, tags if columns[0] > 1 else None, start, str(path)))
    return examples


def _check_conll_columns(
    path: Path, line: int, count: int, token_column: int, tag_column: int, require_tags: bool
) -> None:
    if count == 1 and require_tags:
        raise ValueError(
            f"{path}:{line}: found 1 column; tagged data needs a word column and a tag column "
            "(untagged input is for prediction: require_tags=False, mlx-llm predict)"
        )
    for option, index in (("token_column", token_column), ("tag_column", tag_column)):
        if not -count <= index < count:
            raise ValueError(f"{path}:{line}: {option}={index} is out of range for lines of {count} columns")
    if count > 1 and token_column % count == tag_column % count:
        raise ValueError(f"{path}:{line}: token_column and tag_column are the same column ({token_column})")


def _tagging_records(path: Path, require_tags: bool) -> list[TaggingExample]:
    examples = []
    for line, record in jsonl_records(path):
        where = f"{path}:{line}"
        words = record.get("tokens")
        if not isinstance(words, list) or not words or not all(isinstance(word, str) for word in words):
            raise ValueError(
                f'{where}: expected a non-empty "tokens" list of strings (the record has keys '
                f'{sorted(record)}); write {{"tokens": [...], "tags": [...]}}'
            )
        tags = record.get("tags", record.get("ner_tags"))
        if tags is None and require_tags:
            raise ValueError(f'{where}: no "tags" (or "ner_tags") list; untagged input is for prediction '
                             "(require_tags=False, mlx-llm predict)")
        if tags is not None:
            if not isinstance(tags, list) or len(tags) != len(words):
                count = len(tags) if isinstance(tags, list) else type(tags).__name__
                raise ValueError(f"{where}: {len(words)} tokens but {count} tags; give one tag per token")
            tags = [str(tag) for tag in tags]
        examples.append(TaggingExample(words, tags, line, str(path)))
    return examples


def read_instructions(path: PathLike) -> list[InstructionExample]:
    """Instruction-tuning records from a .jsonl file, one per line, in one of three formats.

    * ``{"text": ...}``: a language-modelling example, loss on every token.
    * ``{"prompt": ..., "completion": ...}``: loss on the completion (and EOS).
    * ``{"messages": [{"role": ..., "content": ...}, ...]}``: a chat, rendered
      with the tokenizer's chat template; loss on the assistant turns.

    Args:
        path: The .jsonl file.

    Returns:
        The records in file order.
    """
    path = _existing_file(path, "instruction data")
    if path.suffix.lower() != ".jsonl":
        raise ValueError(f"{path}: instruction data must be a .jsonl file (one JSON object per line)")
    examples = []
    for line, record in jsonl_records(path):
        example = _instruction_example(f"{path}:{line}", record)
        example.line, example.path = line, str(path)
        examples.append(example)
    if not examples:
        raise ValueError(f"{path} holds no records; write one JSON object per line")
    return examples


def _instruction_example(where: str, record: dict) -> InstructionExample:
    if "messages" in record:
        messages = record["messages"]
        if not (
            isinstance(messages, list)
            and messages
            and all(isinstance(message, dict) and isinstance(message.get("role"), str) for message in messages)
        ):
            raise ValueError(f'{where}: "messages" must be a non-empty list of {{"role": ..., "content": ...}} objects')
        if not any(message["role"] == "assistant" for message in messages):
            raise ValueError(
                f"{where}: the conversation has no assistant message, so there is nothing to learn; "
                "add the assistant's reply or drop the record"
            )
        return InstructionExample(messages=messages)
    if "prompt" in record or "completion" in record:
        for key in ("prompt", "completion"):
            if not isinstance(record.get(key), str):
                raise ValueError(f'{where}: "{key}" must be a string; a prompt/completion record needs both')
        return InstructionExample(prompt=record["prompt"], completion=record["completion"])
    if "text" in record:
        if not isinstance(record["text"], str) or not record["text"].strip():
            raise ValueError(f'{where}: "text" must be a non-empty string')
        return InstructionExample(text=record["text"])
    raise ValueError(
        f"{where}: unknown record format (keys {sorted(record)}); each line must have the keys "
        f"{' or '.join(INSTRUCTION_FORMATS)}"
    )


def read_seq2seq(
    path: PathLike, input_column: str = "input", target_column: str = "target", require_targets: bool = True
) -> list[Seq2SeqExample]:
    """Input/target text pairs for sequence-to-sequence fine-tuning (T5).

    Args:
        path: A ``.jsonl`` file (``{"input": ..., "target": ...}`` per line) or a
            ``.csv`` / ``.tsv`` file with a header row (as `read_classification` reads them).
        input_column: Key or column of the input text.
        target_column: Key or column of the target text.
        require_targets: If ``False`` (prediction input), a missing target gives ``target=None``.

    Returns:
        The pairs in file order.
    """
    path = _existing_file(path, "sequence-to-sequence data")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        records = list(jsonl_records(path))
    elif suffix in (".csv", ".tsv"):
        records = _read_table(path)[1]
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; input/target pairs must be .jsonl, .csv or .tsv")
    if not records:
        raise ValueError(f"{path} holds no examples; write one input/target pair per line")
    examples = []
    for line, record in records:
        where = f"{path}:{line}"
        texts = []
        for option, name, required in (("input_column", input_column, True),
                                       ("target_column", target_column, require_targets)):
            value = record.get(name)
            if value is None and not required:
                texts.append(None)
                continue
            if not isinstance(value, str) or not value.strip():
                flag = "--text-column" if option == "input_column" else "--label-column"
                raise ValueError(
                    f"{where}: no text in {name!r} (got {value!r}; the record has {sorted(record)}); every "
                    f"example needs a non-empty {option.split('_')[0]} text: fix the line, or name the "
                    f"field with {flag}"
                )
            texts.append(value)
        examples.append(Seq2SeqExample(texts[0], texts[1], line, str(path)))
    return examples
