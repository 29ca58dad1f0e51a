"""BERT pretraining data: next-sentence pairs with dynamic masked-language-model masking.

`tokenize_documents_for_bert` keeps documents and sentences apart,
`split_documents` keeps the last documents for validation, and
`BertPretrainingBatches` builds the pairs and masks each batch afresh.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np

from ..tokenization import Tokenizer
from ..training.losses import IGNORE_INDEX
from .corpus_files import list_corpus_files
from .documents import PathLike, documents_of, split_sentences, tokenizing_progress
from .epochs import ResumableEpochs, check_positive, check_seed


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
    with tokenizing_progress(total_bytes, show_progress) as progress:
        for document in documents_of(files, paths, split_on_blank_lines):
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


class BertPretrainingBatches(ResumableEpochs):
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
        check_positive(max_length=max_length, batch_size=batch_size)
        check_seed(seed)
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
        self._start_epochs()

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

    def _epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(self.seed + epoch).permutation(self.num_pairs)

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

    def _make_batch(self, indices: np.ndarray, epoch: int, position: int) -> dict[str, mx.array]:
        """The next batch: ``input_ids``, ``token_type_ids``, ``attention_mask``,
        ``mlm_labels`` of shape ``(batch_size, max_length)`` and
        ``next_sentence_label`` of shape ``(batch_size,)``, all int32."""
        rng = np.random.default_rng([self.seed, epoch, position, 0x4D4C4D])
        return self._batch(indices, rng)

    def _no_batches_message(self) -> str:
        return (
            f"the corpus makes {self.num_pairs} sentence pairs, fewer than batch_size={self.batch_size}; "
            "use a smaller batch_size (--batch-size) or max_length (--seq-len), or more text"
        )

    def _settings(self) -> dict:
        """What a saved position is only valid for: ``seed``, ``max_length``, ``batch_size``, ``num_pairs``."""
        return {"seed": self.seed, "max_length": self.max_length, "batch_size": self.batch_size, "num_pairs": self.num_pairs}

    def evaluation_batches(self) -> Iterator[dict[str, mx.array]]:
        """Every pair once, in order, with the same masking on every call, for validation.

        The last batch may be smaller. Does not touch the training position.

        Returns:
            An iterator of batches shaped as in iteration, with ``b <= batch_size`` rows.
        """
        for batch_index, start in enumerate(range(0, self.num_pairs, self.batch_size)):
            rng = np.random.default_rng([self.seed, batch_index, 0x4556414C])
            yield self._batch(np.arange(start, min(start + self.batch_size, self.num_pairs)), rng)
