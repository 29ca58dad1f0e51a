"""Tokenizers for pretrained models: one interface over `tokenizers` and SentencePiece.

`Tokenizer.from_pretrained` reads a local Hugging Face-layout folder (a
``tokenizer.json``, a SentencePiece ``.model``, or the legacy ``vocab.txt`` or
``vocab.json`` + ``merges.txt``) together with ``tokenizer_config.json``,
``special_tokens_map.json``, ``generation_config.json`` and ``config.json``,
and reproduces what Hugging Face ``transformers`` does with the same folder:
the same ids (special tokens from the ``tokenizer.json`` post-processor, or for
SentencePiece from ``add_bos_token``/``add_eos_token``), the same decoded text,
padding and truncation, and chat templates rendered in the same Jinja environment.
`StreamingDetokenizer` turns generated ids into text as they arrive.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from .backends import SentencePieceBackend, TokenizedText, TokenizersBackend
from .chat_template import render_chat_template, select_chat_template
from .detokenizer import StreamingDetokenizer
from .files import SPECIAL_TOKEN_NAMES, read_tokenizer_folder

PADDING_STRATEGIES = (True, False, "longest", "max_length", "do_not_pad")
TRUNCATION_STRATEGIES = (True, False, "longest_first", "only_first", "only_second", "do_not_truncate")


class Tokenizer:
    """Text to ids and back, the way Hugging Face ``transformers`` does it for a model folder.

    Build one with `Tokenizer.from_pretrained`. Special-token ids are
    ``None`` when the model has no such token.

    Args:
        backend: The tokenization library wrapper (made by `from_pretrained`).
        special_tokens: Named special tokens, ``{"bos": "<s>", ...}``.
        extra_special_tokens: Further special tokens (``additional_special_tokens``).
        eos_token_ids: End-of-sequence ids from the model's configs.
        chat_template: A Jinja template, or ``{name: template}``.
        model_max_length: Longest input the model takes, or ``None``.
        padding_side: Default padding side, ``"right"`` or ``"left"``.
        folder: Where the files came from, for messages.

    Attributes:
        folder: The folder the tokenizer was loaded from.
        model_max_length: Longest input the model takes, or ``None`` if unknown.
        padding_side: Default side for padding (``"right"`` unless the config says otherwise).
    """

    def __init__(
        self,
        backend: TokenizersBackend | SentencePieceBackend,
        special_tokens: dict[str, str | None],
        extra_special_tokens: Sequence[str] = (),
        eos_token_ids: Iterable[int] = (),
        chat_template: str | dict[str, str] | None = None,
        model_max_length: int | None = None,
        padding_side: str = "right",
        folder: Path | None = None,
    ):
        self._backend = backend
        self._special_tokens = {name: special_tokens.get(name) for name in SPECIAL_TOKEN_NAMES}
        self._extra_special_tokens = list(extra_special_tokens)
        named = [token for token in self._special_tokens.values() if token is not None]
        backend.mark_special(list(dict.fromkeys(named + self._extra_special_tokens)))
        self._special_ids = frozenset(backend.special_ids())
        self._config_eos_ids = list(dict.fromkeys(eos_token_ids))
        self._chat_template = chat_template
        self.model_max_length = model_max_length
        self.padding_side = padding_side
        self.folder = folder

    # -- loading ------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> Tokenizer:
        """Load the tokenizer of a local Hugging Face-layout model folder.

        Prefers ``tokenizer.json``, whose post-processor alone decides which
        special tokens encoding adds (transformers ignores ``add_bos_token``
        then); else a SentencePiece ``.model``, with ``<s>``/``</s>`` added per
        ``add_bos_token``/``add_eos_token``; else ``vocab.txt`` (BERT
        WordPiece) or ``vocab.json`` + ``merges.txt`` (GPT-2 byte-level BPE).

        Args:
            folder: The folder holding the tokenizer files.

        Returns:
            The tokenizer.
        """
        return cls(**read_tokenizer_folder(folder)._asdict())

    # -- vocabulary and special tokens --------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (``len(tokenizer)`` in transformers)."""
        return self._backend.vocab_size

    def __len__(self) -> int:
        return self.vocab_size

    def token_to_id(self, token: str) -> int | None:
        """Id of a vocabulary string, or ``None`` if it is not in the vocabulary."""
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """Vocabulary string of an id, or ``None`` if the id is out of range."""
        return self._backend.id_to_token(token_id)

    @property
    def special_tokens(self) -> dict[str, str]:
        """The named special tokens the model has, e.g. ``{"bos": "<s>", "eos": "</s>"}``."""
        return {name: token for name, token in self._special_tokens.items() if token is not None}

    def _special_id(self, name: str) -> int | None:
        token = self._special_tokens[name]
        return None if token is None else self._backend.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self._special_id("bos")

    @property
    def eos_token_id(self) -> int | None:
        """The tokenizer's end-of-sequence id, else the first one the model config lists."""
        own = self._special_id("eos")
        if own is not None:
            return own
        return self._config_eos_ids[0] if self._config_eos_ids else None

    @property
    def eos_token_ids(self) -> set[int]:
        """Every id that ends generation: the tokenizer's eos plus ``eos_token_id`` of
        ``generation_config.json`` and ``config.json``."""
        own = self._special_id("eos")
        return set(self._config_eos_ids) | ({own} if own is not None else set())

    @property
    def pad_token_id(self) -> int | None:
        return self._special_id("pad")

    @property
    def pad_token(self) -> str | None:
        return self._special_tokens["pad"]

    @pad_token.setter
    def pad_token(self, token: str | None) -> None:
        """Set the padding token (e.g. ``tokenizer.pad_token = tokenizer.special_tokens["eos"]``)."""
        if token is not None and self._backend.token_to_id(token) is None:
            raise ValueError(
                f"pad token {token!r} is not in the vocabulary; pick an existing token such as the eos token"
            )
        self._special_tokens["pad"] = token
        if token is not None:
            self._backend.mark_special([token])
            self._special_ids = frozenset(self._backend.special_ids())

    @property
    def unk_token_id(self) -> int | None:
        return self._special_id("unk")

    @property
    def cls_token_id(self) -> int | None:
        return self._special_id("cls")

    @property
    def sep_token_id(self) -> int | None:
        return self._special_id("sep")

    @property
    def mask_token_id(self) -> int | None:
        return self._special_id("mask")

    @property
    def all_special_ids(self) -> list[int]:
        """Sorted ids of the named and additional special tokens."""
        tokens = [*self._special_tokens.values(), *self._extra_special_tokens]
        ids = {self._backend.token_to_id(token) for token in tokens if token is not None}
        return sorted(index for index in ids if index is not None)

    @property
    def chat_template(self) -> str | dict[str, str] | None:
        """The Jinja chat template, a ``{name: template}`` dict if there are several, or ``None``."""
        return self._chat_template

    # -- encoding -----------------------------------------------------------

    def encode(self, text: str, text_pair: str | None = None, add_special_tokens: bool = True) -> list[int]:
        """Token ids of a text or a text pair.

        Args:
            text: The text.
            text_pair: Optional second text (e.g. the passage for a question).
            add_special_tokens: Insert the model's special tokens (BERT's
                ``[CLS] A [SEP] B [SEP]``, Llama's ``<s>``, T5's ``</s>``).

        Returns:
            The ids.
        """
        return self.encode_with_segments(text, text_pair, add_special_tokens).input_ids

    def encode_with_segments(
        self, text: str, text_pair: str | None = None, add_special_tokens: bool = True
    ) -> TokenizedText:
        """Token ids and the segment (0 for ``text``, 1 for ``text_pair``) of each id.

        Args:
            text: The text.
            text_pair: Optional second text.
            add_special_tokens: Insert the model's special tokens.

        Returns:
            ``TokenizedText(input_ids, token_type_ids)``.
        """
        # Like transformers, an empty text_pair means no pair.
        pairs = [text_pair] if text_pair else None
        return self._encode_batch([text], pairs, add_special_tokens, truncation=None, max_length=None)[0]

    def _encode_batch(
        self,
        texts: list[str],
        text_pairs: list[str] | None,
        add_special_tokens: bool,
        truncation: str | None,
        max_length: int | None,
    ) -> list[TokenizedText]:
        for text in texts + (text_pairs or []):
            if not isinstance(text, str):
                raise TypeError(f"texts must be strings, got {type(text).__name__}: {text!r}")
        firsts = self._backend.encode_sequences(texts)
        seconds = (
            self._backend.encode_sequences(text_pairs) if text_pairs is not None else [None] * len(texts)
        )
        results = []
        for first, second in zip(firsts, seconds, strict=True):
            if truncation is not None:
                added = self._backend.num_special_tokens(second is not None) if add_special_tokens else 0
                first, second = self._truncate(first, second, max_length - added, truncation, max_length)
            results.append(self._backend.finish(first, second, add_special_tokens))
        return results

    def _truncate(self, first, second, budget: int, strategy: str, max_length: int):
        """Cut one or two sequences to ``budget`` tokens in all, like the `tokenizers` library."""
        if budget < 0:
            raise ValueError(
                f"max_length={max_length} leaves no room for the {max_length - budget} special tokens; "
                "raise max_length or pass add_special_tokens=False"
            )
        length_first = len(first)
        length_second = 0 if second is None else len(second)
        if length_first + length_second <= budget:
            return first, second
        if second is None:
            if strategy == "only_second":
                raise ValueError(
                    "truncation='only_second' needs text pairs; use 'longest_first' for single texts"
                )
            return self._backend.truncate(first, budget), None
        if strategy == "longest_first":
            # The shorter member stays whole if the longer one can keep as many tokens;
            # otherwise each gets half, the longer one the odd token.
            short, long = sorted((length_first, length_second))
            long = max(short, budget - short) if short <= budget else short
            if short + long > budget:
                short, long = budget // 2, budget // 2 + budget % 2
            keep_first, keep_second = (short, long) if length_first <= length_second else (long, short)
            return self._backend.truncate(first, keep_first), self._backend.truncate(second, keep_second)
        excess = length_first + length_second - budget
        target_is_first = strategy == "only_first"
        target_length = length_first if target_is_first else length_second
        if target_length <= excess:
            raise ValueError(
                f"truncation={strategy!r} cannot fit the pair into max_length={max_length}: the "
                f"{'first' if target_is_first else 'second'} sequence has {target_length} tokens and "
                f"{excess} must go; use truncation='longest_first' or a larger max_length"
            )
        if target_is_first:
            return self._backend.truncate(first, length_first - excess), second
        return first, self._backend.truncate(second, length_second - excess)

    def __call__(
        self,
        texts: str | Sequence[str],
        text_pairs: str | Sequence[str] | None = None,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str = False,
        max_length: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = None,
    ) -> dict[str, Any]:
        """Encode a batch for a model, with padding and truncation.

        Args:
            texts: A text or a list of texts.
            text_pairs: Second texts, one per text, for pair tasks.
            add_special_tokens: Insert the model's special tokens.
            padding: ``False``/``"do_not_pad"``; ``True``/``"longest"`` (to
                the longest in the batch); ``"max_length"`` (to ``max_length``).
            truncation: ``False``/``"do_not_truncate"``; ``True``/
                ``"longest_first"`` (cut the longer member of a pair first);
                ``"only_first"``; ``"only_second"``.
            max_length: Length limit for truncation and ``"max_length"``
                padding; defaults to ``model_max_length``.
            padding_side: ``"right"`` or ``"left"``; defaults to `padding_side`.
            return_tensors: ``None`` (lists), ``"np"`` (int64 arrays) or
                ``"mlx"`` (int32 arrays).

        Returns:
            ``{"input_ids", "attention_mask", "token_type_ids"}``; the mask is
            1 for real tokens and 0 for padding. A single text gives flat lists
            (arrays still have a batch axis of 1).
        """
        single = isinstance(texts, str)
        batch, pairs = _batch_and_pairs(texts, text_pairs)
        if padding not in PADDING_STRATEGIES:
            raise ValueError(f"padding must be one of {PADDING_STRATEGIES}, got {padding!r}")
        if truncation not in TRUNCATION_STRATEGIES:
            raise ValueError(f"truncation must be one of {TRUNCATION_STRATEGIES}, got {truncation!r}")
        if return_tensors not in (None, "np", "mlx"):
            raise ValueError(f"return_tensors must be None, 'np' or 'mlx', got {return_tensors!r}")
        padding_side = self.padding_side if padding_side is None else padding_side
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")

        pad_mode = {True: "longest", False: None, "do_not_pad": None}.get(padding, padding)
        truncate_mode = {True: "longest_first", False: None, "do_not_truncate": None}.get(
            truncation, truncation
        )
        if (pad_mode == "max_length" or truncate_mode is not None) and max_length is None:
            if self.model_max_length is None:
                raise ValueError(
                    f"padding={padding!r}, truncation={truncation!r} needs max_length, and this tokenizer "
                    "has no model_max_length; pass max_length"
                )
            max_length = self.model_max_length
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        if pad_mode is not None and self.pad_token_id is None:
            raise ValueError(
                "padding needs a pad token and this tokenizer has none; set tokenizer.pad_token "
                "(e.g. to the eos token) or pass padding=False"
            )

        encoded = self._encode_batch(batch, pairs, add_special_tokens, truncate_mode, max_length)
        outputs: dict[str, list[list[int]]] = {
            "input_ids": [item.input_ids for item in encoded],
            "attention_mask": [[1] * len(item.input_ids) for item in encoded],
            "token_type_ids": [item.token_type_ids for item in encoded],
        }
        if pad_mode is not None:
            # Like transformers, "max_length" leaves longer (untruncated) sequences as they are.
            target = max_length if pad_mode == "max_length" else max(len(ids) for ids in outputs["input_ids"])
            _pad_rows(outputs, target, self.pad_token_id, padding_side)
        return _shape_outputs(outputs, single, return_tensors)

    # -- decoding -----------------------------------------------------------

    def decode(self, ids: Sequence[int] | np.ndarray | mx.array, skip_special_tokens: bool = True) -> str:
        """Text of a sequence of ids.

        Args:
            ids: Token ids (a list, or a 1-D NumPy / MLX array). Ids past the
                vocabulary (a model's embedding table is often larger) give no
                text, as in transformers.
            skip_special_tokens: Leave out special tokens (bos, eos, pad, ...).

        Returns:
            The text, cleaned up as transformers would for this tokenizer.
        """
        if isinstance(ids, (np.ndarray, mx.array)):
            if ids.ndim != 1:
                raise ValueError(
                    f"decode takes one sequence of ids, got an array of shape {tuple(ids.shape)}"
                )
            ids = ids.tolist()
        ids = [int(index) for index in ids]
        negative = [index for index in ids if index < 0]
        if negative:
            raise ValueError(f"token ids must be >= 0, got {negative[:5]}")
        known = [index for index in ids if self._backend.id_to_token(index) is not None]
        text = self._backend.decode(known, skip_special_tokens)
        if self._backend.clean_up_spaces:
            text = clean_up_tokenization(text)
        return text

    def batch_decode(self, batch: Sequence[Sequence[int]], skip_special_tokens: bool = True) -> list[str]:
        """`decode` for each sequence of a batch."""
        return [self.decode(ids, skip_special_tokens) for ids in batch]

    def detokenizer(self, skip_special_tokens: bool = True) -> StreamingDetokenizer:
        """A `StreamingDetokenizer` for this tokenizer."""
        return StreamingDetokenizer(self, skip_special_tokens)

    # -- chat ---------------------------------------------------------------

    def apply_chat_template(
        self,
        messages: Sequence[dict[str, Any]],
        add_generation_prompt: bool = True,
        tokenize: bool = False,
        tools: list[dict] | None = None,
        documents: list[dict] | None = None,
        chat_template: str | None = None,
        **extra: Any,
    ) -> str | list[int]:
        """Render a conversation with the model's chat template, as transformers does.

        Args:
            messages: ``[{"role": "user", "content": "..."}, ...]``.
            add_generation_prompt: End with the header that starts an assistant turn.
            tokenize: Return ids (encoded without adding special tokens: the
                template writes them) instead of text.
            tools: JSON schemas of tools, for templates that support them.
            documents: Documents for retrieval-augmented templates.
            chat_template: A template, or the name of one of the model's templates.
            **extra: More variables for the template.

        Returns:
            The prompt text, or its ids if ``tokenize``.
        """
        template = select_chat_template(self._chat_template, chat_template, tools, self.folder)
        variables = {
            f"{name}_token": token for name, token in self._special_tokens.items() if token is not None
        }
        if self._extra_special_tokens:
            variables["additional_special_tokens"] = list(self._extra_special_tokens)
        variables.update(extra)
        rendered = render_chat_template(template, messages, add_generation_prompt, tools, documents, variables)
        return self.encode(rendered, add_special_tokens=False) if tokenize else rendered

    def chat_prompt(self, messages: Sequence[dict[str, Any]], system: str | None = None) -> list[int]:
        """The token ids that ask the model for the next assistant turn of a conversation.

        The one chat-prompt builder (`ChatSession`, ``mlx-llm generate`` and
        the server use it): ``apply_chat_template([system] + messages,
        add_generation_prompt=True, tokenize=True)``.

        Args:
            messages: ``[{"role": "user", "content": "..."}, ...]``.
            system: A system message to put first (``None`` or empty: none).

        Raises:
            ValueError: the tokenizer has no chat template, or the template
                refuses the conversation or fails (`ChatTemplateError`).
        """
        if self._chat_template is None:
            raise ValueError("this model's tokenizer has no chat template; give a plain prompt instead")
        if system:
            messages = [{"role": "system", "content": system}, *messages]
        return self.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)

    def __repr__(self) -> str:
        kind = "sentencepiece" if isinstance(self._backend, SentencePieceBackend) else "tokenizers"
        return f"Tokenizer({kind}, vocab_size={self.vocab_size}, folder={str(self.folder)!r})"

    def build_inputs(self, ids: Sequence[int], pair_ids: Sequence[int] | None = None) -> TokenizedText:
        """Wrap already-tokenized ids with the model's special tokens, as encoding a text would.

        ``tokenizer.build_inputs(tokenizer.encode(text, add_special_tokens=False))``
        equals ``tokenizer.encode_with_segments(text)``.

        Args:
            ids: Ids of the first sequence, without special tokens.
            pair_ids: Ids of an optional second sequence.

        Returns:
            ``TokenizedText(input_ids, token_type_ids)``.
        """
        first = [int(index) for index in ids]
        second = None if pair_ids is None else [int(index) for index in pair_ids]
        return self._backend.build_inputs(first, second)


def clean_up_tokenization(text: str) -> str:
    """transformers' ``clean_up_tokenization``: drop spaces before punctuation and contractions."""
    for before, after in (
        (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
        (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
    ):  # fmt: skip
        text = text.replace(before, after)
    return text


def _batch_and_pairs(
    texts: str | Sequence[str], text_pairs: str | Sequence[str] | None
) -> tuple[list[str], list[str] | None]:
    """The texts of a `Tokenizer.__call__` as a list, and their pairs (``None`` for no pairs)."""
    batch = [texts] if isinstance(texts, str) else list(texts)
    if not batch:
        raise ValueError("texts is empty; pass at least one text")
    pairs = None
    if isinstance(text_pairs, str):
        # Like transformers, an empty text_pair for a single text means no pair.
        pairs = [text_pairs] if text_pairs else None
    elif text_pairs is not None:
        pairs = list(text_pairs)
    if pairs is not None and len(pairs) != len(batch):
        raise ValueError(f"got {len(batch)} texts but {len(pairs)} text_pairs; pass one pair per text")
    return batch, pairs


def _pad_rows(outputs: dict[str, list[list[int]]], target: int, pad_id: int, padding_side: str) -> None:
    """Pad every row of ``outputs`` in place to ``target`` ids (ids with ``pad_id``, mask and segments with 0)."""
    fills = {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": 0}
    for key, values in outputs.items():
        for row in range(len(values)):
            padding_values = [fills[key]] * max(0, target - len(values[row]))
            values[row] = padding_values + values[row] if padding_side == "left" else values[row] + padding_values


def _shape_outputs(outputs: dict[str, list[list[int]]], single: bool, return_tensors: str | None) -> dict[str, Any]:
    """Lists (flat for a single text), int64 NumPy arrays (``"np"``) or int32 MLX arrays (``"mlx"``)."""
    if return_tensors is None:
        return {key: value[0] for key, value in outputs.items()} if single else outputs
    lengths = {len(ids) for ids in outputs["input_ids"]}
    if len(lengths) > 1:
        raise ValueError(
            f"cannot stack sequences of lengths {sorted(lengths)} into one array; pass padding=True, "
            "or truncation=True when padding to max_length"
        )
    arrays = {key: np.asarray(value, dtype=np.int64) for key, value in outputs.items()}
    if return_tensors == "mlx":
        return {key: mx.array(value.astype(np.int32)) for key, value in arrays.items()}
    return arrays
