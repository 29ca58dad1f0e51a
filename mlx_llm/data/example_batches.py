"""Padded batches of encoded fine-tuning examples: endless and resumable for training, or each example once.

`ClassificationBatches`, `TaggingBatches` and `InstructionBatches` pad the
output of the matching ``encode_*`` function into batches of `mx.array`.
Iterating one is an endless, seeded, resumable stream for training
(`ResumableEpochs`: ``state()`` / ``restore()``, epoch after epoch);
``iterate_once()`` visits every example once, in file order, for evaluation
and prediction.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import mlx.core as mx
import numpy as np

from ..training.losses import IGNORE_INDEX
from .epochs import ResumableEpochs, check_positive, check_seed
from .example_encoding import check_problem


class _ExampleBatches(ResumableEpochs):
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
        check_positive(batch_size=batch_size, pad_to_multiple_of=pad_to_multiple_of)
        check_seed(seed)
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
        self.batches_per_epoch = rounding(self.num_examples / self.batch_size)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{name}: {self.num_examples} examples make no full batch of batch_size={self.batch_size} "
                "with drop_last=True; use a smaller batch_size (--batch-size) or drop_last=False"
            )
        self._start_epochs()
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
    def epoch_batches(self) -> int:
        """Batches in one epoch (the same as ``batches_per_epoch``)."""
        return self.batches_per_epoch

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self.shuffle:
            return np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
        return np.arange(self.num_examples)

    def _make_batch(self, indices: np.ndarray, epoch: int, position: int) -> dict[str, mx.array]:
        return self._batch(indices)

    def _settings(self) -> dict:
        return {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "num_examples": self.num_examples,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
        }

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
            as passed to `encode_classification` (a keyword).
        Others: as for `TaggingBatches` (``encoded``, ``batch_size``, ``pad_token_id``,
            ``shuffle``, ``seed``, ``drop_last``, ``max_length``, ``pad_to_multiple_of``).
    """

    def __init__(self, *args, problem: str = "single_label", **kwargs):
        super().__init__(*args, **kwargs)
        check_problem(problem)
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
    """Batches of `encode_instructions` output, for `mlx_llm.training.objectives.CausalLMObjective`.

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


class Seq2SeqBatches(_ExampleBatches):
    """Batches of `encode_seq2seq` output, for `mlx_llm.training.objectives.Seq2SeqObjective`.

    Keys, int32: ``input_ids`` and ``attention_mask`` ``(B, S)``, and (with
    targets) ``labels`` ``(B, T)``, padded with ``-100``; ``T`` is the longest
    target of the batch rounded up to a multiple of ``pad_to_multiple_of``.
    The decoder's inputs are ``labels`` shifted right (the objective builds
    them with the model's start token).

    Args: as for `TaggingBatches`.
    """

    def _collate(self, rows: list[dict], length: int) -> dict[str, np.ndarray]:
        batch = self._inputs(rows, length)
        if "labels" in rows[0]:
            longest = max(len(item["labels"]) for item in rows)
            target_length = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
            batch["labels"] = self._pad(rows, "labels", IGNORE_INDEX, target_length)
        return batch
