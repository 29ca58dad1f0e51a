"""Fine-tuning examples as model inputs: `LabelSet` numbers label names, and the ``encode_*`` functions tokenize.

`encode_classification`, `encode_tagging`, `encode_instructions` and
`encode_seq2seq` turn examples into dicts of NumPy arrays, truncated to ``max_length``; `LabelSet`
writes the label names as transformers' ``id2label`` / ``label2id``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..tokenization import Tokenizer
from ..training.losses import IGNORE_INDEX
from .epochs import check_positive
from .examples import ClassificationExample, InstructionExample, Seq2SeqExample, TaggingExample

PROBLEM_TYPES = ("single_label", "multi_label", "regression")
_INT_LIKE = re.compile(r"[+-]?\d+")
# Stands for the word ids in `Tokenizer.build_inputs`, to find where special tokens go.
_SLOT = -1


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


def check_problem(problem: str) -> None:
    """Raise `ValueError` unless ``problem`` is one of `PROBLEM_TYPES`."""
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
    check_problem(problem)
    check_positive(max_length=max_length)
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
    check_positive(max_length=max_length)
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
    check_positive(max_length=max_length)
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


def encode_seq2seq(
    examples: Sequence[Seq2SeqExample], tokenizer: Tokenizer, max_length: int
) -> list[dict[str, np.ndarray]]:
    """Tokenize input/target pairs for an encoder-decoder, as transformers'
    ``tokenizer(inputs, text_target=targets, truncation=True)`` does.

    Inputs and targets are each encoded with the tokenizer's special tokens (T5
    appends ``</s>``, which stays when a text is cut) and cut to ``max_length``.

    Args:
        examples: From `read_seq2seq`.
        tokenizer: The model's tokenizer.
        max_length: Longest input and longest target, special tokens included.

    Returns:
        Per pair ``{"input_ids", "labels"}`` int32 arrays (no ``labels`` when the
        pairs have no targets): the decoder learns to predict ``labels``.
    """
    check_positive(max_length=max_length)
    if not examples:
        raise ValueError("there are no examples to encode")
    targets = [example.target for example in examples]
    if None in targets and any(target is not None for target in targets):
        missing = next(example for example in examples if example.target is None)
        raise ValueError(f"{missing.where}: no target, but other examples have targets; give every example "
                         "a target, or none (for prediction)")
    options = dict(truncation=True, max_length=max_length)
    inputs = tokenizer([example.input for example in examples], **options)["input_ids"]
    labels = tokenizer(targets, **options)["input_ids"] if targets[0] is not None else None
    encoded = []
    for row, input_ids in enumerate(inputs):
        item = {"input_ids": np.asarray(input_ids, dtype=np.int32)}
        if labels is not None:
            item["labels"] = np.asarray(labels[row], dtype=np.int32)
        encoded.append(item)
    return encoded
