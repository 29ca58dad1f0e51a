"""Fine-tuning data: text classification, token classification (NER) and instruction tuning.

The path from files to batches:

1. Readers turn a file into examples that remember where they came from
   (``path`` and 1-based ``line``): `read_classification` (.csv, .tsv,
   .jsonl), `read_conll` (CoNLL columns or .jsonl) and `read_instructions`
   (.jsonl records of plain text, prompt/completion, or chat messages).
2. `LabelSet` numbers the label names of the training data and writes them
   as transformers' ``id2label`` / ``label2id``.
3. `encode_classification`, `encode_tagging` and `encode_instructions`
   tokenize examples into dicts of NumPy arrays, truncated to ``max_length``.
4. `ClassificationBatches`, `TaggingBatches` and `InstructionBatches` pad
   those into batches of `mx.array`. Iterating one is an endless, seeded,
   resumable stream for training (``state()`` / ``restore()``, epoch after
   epoch); ``iterate_once()`` visits every example once, in file order, for
   evaluation and prediction.

Every error about user data names the file and the line, and says what to do.
"""

from __future__ import annotations

import csv
import math
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from .data import IGNORE_INDEX, _check_positive, _check_seed, _restore_position, jsonl_records, not_utf8
from .tokenizer import Tokenizer

PathLike = str | Path
PROBLEM_TYPES = ("single_label", "multi_label", "regression")
# Columns tried, in order, when read_classification is given no text_column.
TEXT_COLUMNS = ("text", "sentence", "sentence1", "question")
INSTRUCTION_FORMATS = ('{"text"}', '{"prompt", "completion"}', '{"messages"}')
_INT_LIKE = re.compile(r"[+-]?\d+")
# Stands for the word ids in `Tokenizer.build_inputs`, to find where special tokens go.
_SLOT = -1


# ---------------------------------------------------------------------------
# Examples and reading files
# ---------------------------------------------------------------------------


@dataclass
class ClassificationExample:
    """A text (or text pair) and its label: a string or number, a list of them
    (multi-label), or ``None`` when the data is unlabelled."""

    text: str
    text_pair: str | None
    label: Any
    line: int
    path: str = ""

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass
class TaggingExample:
    """A sentence as words and one tag per word (``None`` when untagged); ``line`` is its first line."""

    words: list[str]
    tags: list[str] | None
    line: int
    path: str = ""

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass
class InstructionExample:
    """One instruction-tuning record; exactly one of ``text``, ``prompt`` + ``completion``,
    ``messages`` is set."""

    text: str | None = None
    prompt: str | None = None
    completion: str | None = None
    messages: list[dict] | None = None
    line: int = 0
    path: str = ""

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


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


# ---------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------


def _label_name(label: Any) -> str:
    """The name of a raw label: JSON 1, 1.0 and CSV "1" are all ``"1"``."""
    if isinstance(label, float) and label.is_integer():
        return str(int(label))
    return str(label)


class LabelSet:
    """Label names and their ids (0, 1, ...), in a fixed order.

    Args:
        names: The names, in id order.
    """

    def __init__(self, names: Sequence[str]):
        self.names = [str(name) for name in names]
        if not self.names:
            raise ValueError("a label set needs at least one label")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"label names must be unique, got {self.names}")
        self._ids = {name: index for index, name in enumerate(self.names)}

    @classmethod
    def from_labels(cls, labels: Iterable[Any]) -> LabelSet:
        """The label set of training labels (lists, for multi-label, are flattened).

        Integer labels (or strings like ``"0"``, ``"1"``) keep numeric order;
        others are sorted by name.
        """
        names = set()
        for label in labels:
            for item in label if isinstance(label, (list, tuple)) else [label]:
                if item is not None:
                    names.add(_label_name(item))
        if not names:
            raise ValueError("there are no labels to number; is the training data unlabelled?")
        if all(_INT_LIKE.fullmatch(name) for name in names):
            return cls(sorted(names, key=int))
        return cls(sorted(names))

    def __len__(self) -> int:
        return len(self.names)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelSet) and self.names == other.names

    def __repr__(self) -> str:
        return f"LabelSet({self.names})"

    def encode(self, label: Any, where: str | None = None) -> int:
        """The id of a label; ``where`` (``"FILE:LINE"``) locates it in error messages."""
        index = self._ids.get(_label_name(label))
        if index is None:
            prefix = f"{where}: " if where else ""
            raise ValueError(
                f"{prefix}unknown label {_label_name(label)!r}; the training data has labels {self.names} "
                "(fix the label, or add examples of it to the training data)"
            )
        return index

    def decode(self, index: int) -> str:
        """The name of an id."""
        return self.names[int(index)]

    def to_config(self) -> dict:
        """``{"id2label": {"0": name, ...}, "label2id": {name: 0, ...}}``, as transformers writes them."""
        return {
            "id2label": {str(index): name for index, name in enumerate(self.names)},
            "label2id": dict(self._ids),
        }

    @classmethod
    def from_config(cls, config: dict) -> LabelSet:
        """The label set of a model config with ``id2label``."""
        id2label = config.get("id2label")
        if not isinstance(id2label, dict) or not id2label:
            raise ValueError("the config has no id2label mapping; the model was not trained for classification")
        try:
            by_id = {int(index): name for index, name in id2label.items()}
        except ValueError:
            raise ValueError(f"id2label keys must be integers, got {sorted(id2label)}") from None
        if sorted(by_id) != list(range(len(by_id))):
            raise ValueError(f"id2label ids must be 0..{len(by_id) - 1}, got {sorted(by_id)}")
        return cls([by_id[index] for index in range(len(by_id))])


# ---------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------


def _check_problem(problem: str) -> None:
    if problem not in PROBLEM_TYPES:
        raise ValueError(f"problem must be one of {PROBLEM_TYPES}, got {problem!r}")


def _encode_label(example: ClassificationExample, labels: LabelSet | None, problem: str) -> Any:
    label, where = example.label, example.where
    if problem == "regression":
        try:
            return float(label)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: regression needs a number as label, got {label!r}") from None
    if labels is None:
        raise ValueError(
            f"encoding labelled examples for {problem} needs labels=LabelSet.from_labels(...) "
            "built from the training data"
        )
    if problem == "multi_label":
        multi_hot = np.zeros(len(labels), dtype=np.float32)
        for item in label if isinstance(label, list) else [label]:
            multi_hot[labels.encode(item, where)] = 1.0
        return multi_hot
    if isinstance(label, list):
        raise ValueError(f"{where}: a list of labels needs problem='multi_label'")
    return labels.encode(label, where)


def encode_classification(
    examples: Sequence[ClassificationExample],
    tokenizer: Tokenizer,
    labels: LabelSet | None,
    max_length: int,
    problem: str = "single_label",
    token_type_ids: bool | None = None,
) -> list[dict[str, Any]]:
    """Tokenize classification examples.

    Args:
        examples: From `read_classification`.
        tokenizer: The model's tokenizer.
        labels: The training label set (unused for regression).
        max_length: Longest sequence, special tokens included; pairs are cut
            longest-first, as transformers does.
        problem: ``"single_label"``, ``"multi_label"`` or ``"regression"``.
        token_type_ids: Whether to keep segment ids; by default only for
            tokenizers with a cls token (BERT family) whose pairs have a second segment.

    Returns:
        Per example ``{"input_ids": int32 array, "token_type_ids": int32 array
        (if kept), "label": ...}``: the label is an int id, a float32 multi-hot
        vector, or a float (regression); there is no ``"label"`` when the
        examples are unlabelled.
    """
    _check_problem(problem)
    _check_positive(max_length=max_length)
    if not examples:
        raise ValueError("there are no examples to encode")
    unlabelled = [example for example in examples if example.label is None]
    if unlabelled and len(unlabelled) < len(examples):
        raise ValueError(
            f"{unlabelled[0].where}: no label, but other examples have labels; label every example, "
            "or none (for prediction)"
        )
    encoded: list[dict[str, Any]] = [{} for _ in examples]
    for with_pair in (False, True):
        indices = [index for index, example in enumerate(examples) if (example.text_pair is not None) == with_pair]
        if not indices:
            continue
        outputs = tokenizer(
            [examples[index].text for index in indices],
            [examples[index].text_pair for index in indices] if with_pair else None,
            truncation="longest_first",
            max_length=max_length,
        )
        for row, index in enumerate(indices):
            encoded[index]["input_ids"] = np.asarray(outputs["input_ids"][row], dtype=np.int32)
            encoded[index]["token_type_ids"] = np.asarray(outputs["token_type_ids"][row], dtype=np.int32)
    if token_type_ids is None:
        token_type_ids = tokenizer.cls_token_id is not None and any(item["token_type_ids"].any() for item in encoded)
    for item, example in zip(encoded, examples):
        if not token_type_ids:
            del item["token_type_ids"]
        if example.label is not None:
            item["label"] = _encode_label(example, labels, problem)
    return encoded


def _special_layout(tokenizer: Tokenizer) -> tuple[int, int]:
    """How many special tokens the tokenizer puts before and after a single sequence."""
    wrapped = tokenizer.build_inputs([_SLOT]).input_ids
    before = wrapped.index(_SLOT)
    return before, len(wrapped) - before - 1


def encode_tagging(
    examples: Sequence[TaggingExample],
    tokenizer: Tokenizer,
    labels: LabelSet | None,
    max_length: int,
    label_all_subtokens: bool = False,
) -> list[dict[str, np.ndarray]]:
    """Tokenize tagged sentences word by word and align the tags with the tokens.

    Each word is encoded on its own as ``" " + word`` without special tokens:
    for WordPiece and SentencePiece that gives the ids of the word in running
    text, and for byte-level BPE (GPT-2, RoBERTa) it is transformers'
    ``add_prefix_space=True``, every word (the first one too) spelled as
    after a space. The ids are then wrapped with the model's special tokens.
    A word that encodes to no tokens, and a word cut off by truncation, gets
    no token, so no label and no prediction: it is absent from ``word_ids``.

    Args:
        examples: From `read_conll`.
        tokenizer: The model's tokenizer.
        labels: The training tag set (``None`` for untagged input).
        max_length: Longest sequence, special tokens included.
        label_all_subtokens: Give every sub-token of a word the word's tag,
            instead of only the first.

    Returns:
        Per sentence ``{"input_ids", "word_ids", "labels"}`` int32 arrays:
        ``word_ids`` is the index of each token's word, ``-1`` on special
        tokens; ``labels`` is the tag id on a word's first sub-token and
        ``-100`` elsewhere (absent for untagged input).
    """
    _check_positive(max_length=max_length)
    before, after = _special_layout(tokenizer)
    budget = max_length - before - after
    if budget < 1:
        raise ValueError(f"max_length={max_length} leaves no room for words next to {before + after} special tokens")
    tagged = [example.tags is not None for example in examples]
    if any(tagged) and labels is None:
        raise ValueError("encoding tagged sentences needs labels=LabelSet.from_labels(...) of the training tags")
    encoded = []
    empty_words: list[str] = []
    for example in examples:
        pieces = tokenizer([" " + word for word in example.words], add_special_tokens=False)["input_ids"]
        ids: list[int] = []
        word_ids: list[int] = []
        label_ids: list[int] = []
        for index, (word, word_pieces) in enumerate(zip(example.words, pieces)):
            tag_id = IGNORE_INDEX
            if example.tags is not None:
                tag_id = labels.encode(example.tags[index], f"{example.where} (word {index + 1}, {word!r})")
            if not word_pieces:
                empty_words.append(f"{example.where} (word {index + 1}, {word!r})")
            for position, token_id in enumerate(word_pieces):
                ids.append(token_id)
                word_ids.append(index)
                label_ids.append(tag_id if position == 0 or label_all_subtokens else IGNORE_INDEX)
        item = {
            "input_ids": np.asarray(tokenizer.build_inputs(ids[:budget]).input_ids, dtype=np.int32),
            "word_ids": np.asarray([-1] * before + word_ids[:budget] + [-1] * after, dtype=np.int32),
        }
        if example.tags is not None:
            item["labels"] = np.asarray(
                [IGNORE_INDEX] * before + label_ids[:budget] + [IGNORE_INDEX] * after, dtype=np.int32
            )
        encoded.append(item)
    if empty_words:
        warnings.warn(
            f"{len(empty_words)} words encode to no tokens and get no label or prediction, e.g. "
            f"{', '.join(empty_words[:3])}",
            stacklevel=2,
        )
    return encoded


def _bos_ids(tokenizer: Tokenizer) -> list[int]:
    """``[bos]`` if the tokenizer starts encoded text with it (Llama), else ``[]`` (GPT-2)."""
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None and tokenizer.build_inputs([]).input_ids[:1] == [bos] else []


def _chat_tokens(example: InstructionExample, tokenizer: Tokenizer, mask_prompt: bool) -> tuple[list[int], list[int]]:
    """Ids of a rendered conversation and its loss mask (the assistant turns if ``mask_prompt``)."""
    if tokenizer.chat_template is None:
        raise ValueError(
            f"{example.where}: chat records need a chat template, and the tokenizer (from "
            f"{tokenizer.folder}) has none; write the records as "
            '{"prompt": ..., "completion": ...} instead, or add a chat_template to tokenizer_config.json'
        )
    from jinja2.exceptions import TemplateError  # chat templates need jinja2 anyway

    messages = example.messages

    def render(conversation: list[dict], generation_prompt: bool) -> list[int]:
        try:
            return tokenizer.apply_chat_template(conversation, add_generation_prompt=generation_prompt, tokenize=True)
        except TemplateError as error:
            raise ValueError(f"{example.where}: the chat template cannot render this conversation: {error}") from None

    full = render(messages, False)
    if not mask_prompt:
        return full, [1] * len(full)
    mask = [0] * len(full)
    for turn, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        # The assistant's span: rendered through its turn, minus the prompt that asks for it.
        start, end = render(messages[:turn], True), render(messages[: turn + 1], False)
        if end[: len(start)] != start or full[: len(end)] != end:
            raise ValueError(
                f"{example.where}: the chat template is not prefix-stable: rendering the conversation up to "
                f"message {turn + 1} gives tokens that the whole conversation does not start with (the template "
                "rewrites earlier turns), so the assistant's tokens cannot be found; use prompt/completion records"
            )
        mask[len(start) : len(end)] = [1] * (len(end) - len(start))
    return full, mask


def encode_instructions(
    examples: Sequence[InstructionExample], tokenizer: Tokenizer, max_length: int, mask_prompt: bool = True
) -> list[dict[str, np.ndarray]]:
    """Tokenize instruction records and mark the tokens to learn.

    * text: BOS (if the tokenizer adds one) + text + EOS, all learned.
    * prompt/completion: BOS + prompt, then the completion tokenized on its
      own (as generation appends to a prompt: put any separating space or
      newline into the texts) + EOS; only completion and EOS are learned.
    * messages: the chat template's ids (it writes BOS/EOS itself); only the
      assistant turns are learned, each from the end of its generation prompt
      through the template's end-of-turn text.

    Sequences are cut to ``max_length`` on the right; a record left with
    nothing to learn is kept (it adds nothing to the loss) and reported in a warning.

    Args:
        examples: From `read_instructions`.
        tokenizer: The model's tokenizer.
        max_length: Longest sequence.
        mask_prompt: Learn only completions / assistant turns; if ``False``, every token.

    Returns:
        Per record ``{"input_ids", "loss_mask"}`` int32 arrays; ``loss_mask``
        is 1 where the token is a prediction target.
    """
    _check_positive(max_length=max_length)
    bos = _bos_ids(tokenizer)
    encoded = []
    nothing_to_learn = []
    for example in examples:
        if example.messages is not None:
            ids, mask = _chat_tokens(example, tokenizer, mask_prompt)
        else:
            eos = tokenizer.eos_token_id
            if eos is None:
                raise ValueError(
                    f"{example.where}: the tokenizer has no eos token to end the sequence with; "
                    "set eos_token in tokenizer_config.json"
                )
            if example.text is not None:
                prompt, completion = bos + tokenizer.encode(example.text, add_special_tokens=False), []
            else:
                prompt = bos + tokenizer.encode(example.prompt, add_special_tokens=False)
                completion = tokenizer.encode(example.completion, add_special_tokens=False)
            completion = completion + [eos]
            ids = prompt + completion
            learn_prompt = int(example.text is not None or not mask_prompt)
            mask = [learn_prompt] * len(prompt) + [1] * len(completion)
        ids, mask = ids[:max_length], mask[:max_length]
        if not any(mask[1:]):  # the first token is never a target: nothing precedes it
            nothing_to_learn.append(example.where)
        encoded.append({"input_ids": np.asarray(ids, dtype=np.int32), "loss_mask": np.asarray(mask, dtype=np.int32)})
    if nothing_to_learn:
        warnings.warn(
            f"{len(nothing_to_learn)} records have no token to learn within max_length={max_length} "
            f"(e.g. {', '.join(nothing_to_learn[:3])}); raise max_length or shorten their prompts",
            stacklevel=2,
        )
    return encoded


# ---------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------


class _ExampleBatches:
    """Padded batches of encoded examples: endless and resumable when iterated, or each example once.

    Iterating yields batches forever, epoch after epoch; with ``shuffle`` each
    epoch visits the examples in the order
    ``np.random.default_rng([seed, epoch]).permutation(n)``, else in file
    order. The last batch of an epoch is smaller unless ``drop_last``.
    Sequences are padded on the right to the longest in the batch, rounded up
    to a multiple of ``pad_to_multiple_of`` (fewer shapes to compile) but
    never past ``max_length``.

    Args:
        encoded: Examples from the matching ``encode_*`` function.
        batch_size: Examples per batch.
        pad_token_id: Id for padding. A tokenizer without a pad token (GPT-2)
            can pass its ``eos_token_id``: padding is masked out, so any id works.
        shuffle: Shuffle each epoch.
        seed: Seed of the shuffling.
        drop_last: Skip the last, smaller batch of each epoch.
        max_length: Longest padded length; by default the longest example.
        pad_to_multiple_of: Round padded lengths up to a multiple of this.
    """

    def __init__(
        self,
        encoded: Sequence[dict],
        batch_size: int,
        pad_token_id: int | None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        max_length: int | None = None,
        pad_to_multiple_of: int = 8,
    ):
        name = type(self).__name__
        if not encoded:
            raise ValueError(f"{name} got no examples; the data file is empty or was not encoded")
        _check_positive(batch_size=batch_size, pad_to_multiple_of=pad_to_multiple_of)
        _check_seed(seed)
        if pad_token_id is None:
            raise ValueError(
                f"{name}: pad_token_id is None (the tokenizer has no pad token, like GPT-2's); "
                "pass tokenizer.eos_token_id: padding is masked out, so any id works"
            )
        keys = set(encoded[0])
        for index, item in enumerate(encoded):
            if set(item) != keys:
                raise ValueError(
                    f"{name}: example {index} has keys {sorted(item)}, example 0 has {sorted(keys)}; "
                    "encode all examples the same way (all labelled, or none)"
                )
        longest = max(len(item["input_ids"]) for item in encoded)
        if max_length is not None and longest > max_length:
            raise ValueError(f"{name}: an example has {longest} tokens, more than max_length={max_length}")
        self.encoded = list(encoded)
        self.num_examples = len(self.encoded)
        self.batch_size = int(batch_size)
        self.pad_token_id = int(pad_token_id)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.max_length = longest if max_length is None else int(max_length)
        self.pad_to_multiple_of = int(pad_to_multiple_of)
        rounding = math.floor if self.drop_last else math.ceil
        self.epoch_batches = rounding(self.num_examples / self.batch_size)
        if self.epoch_batches == 0:
            raise ValueError(
                f"{name}: {self.num_examples} examples make no full batch of batch_size={self.batch_size} "
                "with drop_last=True; use a smaller batch_size (--batch-size) or drop_last=False"
            )
        self._epoch = 0
        self._position = 0
        self._order: tuple[int, np.ndarray] | None = None
        self.include_indices = False  # add "example_index" (B,) int32 to every batch

    # -- subclasses: one batch of examples ---------------------------------

    def _collate(self, rows: list[dict], length: int) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _pad(self, rows: list[dict], key: str, fill: int, length: int) -> np.ndarray:
        """``rows[i][key]`` padded on the right into a ``(B, length)`` int32 array."""
        values = np.full((len(rows), length), fill, dtype=np.int32)
        for row, item in enumerate(rows):
            values[row, : len(item[key])] = item[key]
        return values

    def _inputs(self, rows: list[dict], length: int) -> dict[str, np.ndarray]:
        input_ids = self._pad(rows, "input_ids", self.pad_token_id, length)
        lengths = np.asarray([len(item["input_ids"]) for item in rows])
        attention_mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)  # (B, L)
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def _batch(self, indices: np.ndarray) -> dict[str, mx.array]:
        rows = [self.encoded[int(index)] for index in indices]
        longest = max(len(item["input_ids"]) for item in rows)
        length = min(-(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of, self.max_length)
        batch = {key: mx.array(value) for key, value in self._collate(rows, length).items()}
        if self.include_indices:  # e.g. to look up teacher outputs computed once per example
            batch["example_index"] = mx.array(np.asarray(indices, dtype=np.int32))
        return batch

    # -- training: endless and resumable -------------------------------------

    @property
    def epoch(self) -> int:
        """The epoch the next batch comes from (0-based)."""
        return self._epoch

    def _order_of(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            order = (
                np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
                if self.shuffle
                else np.arange(self.num_examples)
            )
            self._order = (epoch, order)
        return self._order[1]

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, mx.array]:
        start = self._position * self.batch_size
        batch = self._batch(self._order_of(self._epoch)[start : start + self.batch_size])
        self._position += 1
        if self._position == self.epoch_batches:
            self._epoch, self._position = self._epoch + 1, 0
        return batch

    def state(self) -> dict:
        """Where the iterator stands: ``{"epoch", "position"}`` of the next batch plus
        the settings `restore` checks."""
        return {"epoch": self._epoch, "position": self._position, **self._settings()}

    def _settings(self) -> dict:
        return {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "num_examples": self.num_examples,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
        }

    def restore(self, state: dict) -> None:
        """Continue from a `state`: the next batch is the one that followed it."""
        self._epoch, self._position = _restore_position(
            type(self).__name__, state, self._settings(), self.epoch_batches
        )

    # -- evaluation and prediction: each example once -------------------------

    def iterate_once(self) -> Iterator[tuple[np.ndarray, dict[str, mx.array]]]:
        """Every example once, in file order; the last batch may be smaller.

        Does not touch the training position.

        Returns:
            An iterator of ``(indices, batch)``: ``indices`` (int64) are the
            positions in ``encoded`` of the batch's rows, to map predictions back.
        """
        for start in range(0, self.num_examples, self.batch_size):
            indices = np.arange(start, min(start + self.batch_size, self.num_examples))
            yield indices, self._batch(indices)

    def evaluation_batches(self) -> Iterator[dict[str, mx.array]]:
        """The batches of `iterate_once` alone (the trainer's ``eval_data``)."""
        for _, batch in self.iterate_once():
            yield batch


class ClassificationBatches(_ExampleBatches):
    """Batches of `encode_classification` output.

    Keys: ``input_ids``, ``attention_mask`` (and ``token_type_ids`` if
    encoded), int32 ``(B, L)``; ``labels`` (if labelled): int32 ``(B,)``,
    float32 ``(B, num_labels)`` for multi-label, float32 ``(B,)`` for regression.

    Args:
        problem: ``"single_label"``, ``"multi_label"`` or ``"regression"``,
            as passed to `encode_classification`.
        Others: as for `TaggingBatches`.
    """

    def __init__(
        self,
        encoded: Sequence[dict],
        batch_size: int,
        pad_token_id: int | None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        problem: str = "single_label",
        max_length: int | None = None,
        pad_to_multiple_of: int = 8,
    ):
        super().__init__(encoded, batch_size, pad_token_id, shuffle, seed, drop_last, max_length, pad_to_multiple_of)
        _check_problem(problem)
        self.problem = problem
        if "label" in self.encoded[0]:
            is_vector = np.ndim(self.encoded[0]["label"]) == 1
            if is_vector != (problem == "multi_label"):
                raise ValueError(
                    f"the examples' labels are {'vectors' if is_vector else 'scalars'}, which does not fit "
                    f"problem={problem!r}; pass the problem used in encode_classification"
                )

    def _collate(self, rows: list[dict], length: int) -> dict[str, np.ndarray]:
        batch = self._inputs(rows, length)
        if "token_type_ids" in rows[0]:
            batch["token_type_ids"] = self._pad(rows, "token_type_ids", 0, length)
        if "label" in rows[0]:
            dtype = np.int32 if self.problem == "single_label" else np.float32
            batch["labels"] = np.stack([np.asarray(item["label"], dtype=dtype) for item in rows])
        return batch


class TaggingBatches(_ExampleBatches):
    """Batches of `encode_tagging` output.

    Keys: ``input_ids``, ``attention_mask`` and (if tagged) ``labels``, int32
    ``(B, L)``, labels ``-100`` on padding. ``word_ids`` stay in ``encoded``:
    map predictions back with the indices of `iterate_once`.

    Args:
        encoded: Examples from `encode_tagging`.
        batch_size: Examples per batch.
        pad_token_id: Id for padding; without a pad token, pass ``eos_token_id``.
        shuffle: Shuffle each epoch.
        seed: Seed of the shuffling.
        drop_last: Skip the last, smaller batch of each epoch.
        max_length: Longest padded length; by default the longest example.
        pad_to_multiple_of: Round padded lengths up to a multiple of this.
    """

    def _collate(self, rows: list[dict], length: int) -> dict[str, np.ndarray]:
        batch = self._inputs(rows, length)
        if "labels" in rows[0]:
            batch["labels"] = self._pad(rows, "labels", IGNORE_INDEX, length)
        return batch


class InstructionBatches(_ExampleBatches):
    """Batches of `encode_instructions` output, for `mlx_llm.objectives.CausalLMObjective`.

    Keys, int32 ``(B, L)``: ``input_ids``, ``attention_mask`` and
    ``targets``: ``targets[:, t] = input_ids[:, t + 1]`` where token ``t + 1``
    is to be learned (``loss_mask``), else ``-100``, as on the last token and on padding.

    Args: as for `TaggingBatches`.
    """

    def _collate(self, rows: list[dict], length: int) -> dict[str, np.ndarray]:
        batch = self._inputs(rows, length)
        targets = np.full((len(rows), length), IGNORE_INDEX, dtype=np.int32)
        for row, item in enumerate(rows):
            ids, mask = item["input_ids"], item["loss_mask"]
            targets[row, : len(ids) - 1] = np.where(mask[1:] == 1, ids[1:], IGNORE_INDEX)
        batch["targets"] = targets
        return batch
