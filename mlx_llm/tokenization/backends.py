"""The two tokenization libraries behind `Tokenizer`: `tokenizers` and SentencePiece.

Each backend answers the same questions (encode, decode, special tokens, how
to join a text pair) so that `Tokenizer` never asks which library it holds.
`BytePlan` says how a backend's decoder turns each token into bytes, which lets
`StreamingDetokenizer` decode one token at a time. The legacy builders make a
`tokenizers.Tokenizer` from BERT's ``vocab.txt`` or GPT-2's ``vocab.json`` +
``merges.txt``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import sentencepiece
import tokenizers

_SPIECE_UNDERLINE = "▁"
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class TokenizedText(NamedTuple):
    """Ids of one text (or text pair) and the segment of each id."""

    input_ids: list[int]
    token_type_ids: list[int]


@lru_cache(maxsize=1)
def byte_level_table() -> dict[str, int]:
    """GPT-2's map from the printable stand-in characters of byte-level BPE back to bytes."""
    # Printable bytes stand for themselves; the other 68 are shifted to U+0100 and up.
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    shifted = [byte for byte in range(256) if byte not in printable]
    table = {chr(byte): byte for byte in printable}
    table.update({chr(256 + index): byte for index, byte in enumerate(shifted)})
    return table


class BytePlan:
    """How a tokenizer's decoder turns each token into bytes, for streaming.

    Decoders that work token by token (byte-level BPE, SentencePiece-style
    ``▁`` + byte fallback) decode a sequence as the concatenation of per-token
    bytes, except that the first token may lose its leading space. That lets
    `StreamingDetokenizer` do O(1) work per token.

    Args:
        token_string: Maps an id to its vocabulary string (``None`` if out of range).
        kind: ``"byte_level"``, ``"metaspace"`` or ``"replace"`` (▁ → space).
        byte_fallback: Whether ``<0xAB>`` tokens stand for raw bytes.
        strip_first: Leading spaces to drop from the first decoded token
            (``"replace"``); for ``"metaspace"`` any non-zero value drops the
            first token's ``▁`` marks, as the `tokenizers` Metaspace decoder does.
    """

    def __init__(self, token_string, kind: str, byte_fallback: bool, strip_first: int):
        self._token_string = token_string
        self.kind = kind
        self.byte_fallback = byte_fallback
        self.strip_first = strip_first
        self._cache: dict[int, bytes] = {}

    def token_bytes(self, token_id: int, first: bool = False) -> bytes:
        """The bytes token ``token_id`` contributes to decoded text."""
        if not first and token_id in self._cache:
            return self._cache[token_id]
        token = self._token_string(token_id)
        if token is None:
            raise ValueError(f"token id {token_id} is not in the vocabulary")
        if self.kind == "byte_level":
            table = byte_level_table()
            # Like the `tokenizers` ByteLevel decoder: a token with any character
            # outside the table (an added token such as " hi") is taken verbatim.
            if all(char in table for char in token):
                data = bytes(table[char] for char in token)
            else:
                data = token.encode("utf-8")
        elif self.byte_fallback and (match := _BYTE_PIECE.fullmatch(token)):
            data = bytes([int(match.group(1), 16)])
        elif self.kind == "metaspace" and first and self.strip_first:
            data = token.replace(_SPIECE_UNDERLINE, "").encode("utf-8")
        else:
            data = token.replace(_SPIECE_UNDERLINE, " ").encode("utf-8")
        if first and self.kind != "metaspace" and self.strip_first:
            for _ in range(self.strip_first):
                if data.startswith(b" "):
                    data = data[1:]
        elif not first:
            self._cache[token_id] = data
        return data


def plan_from_decoder(decoder_state: dict | None, token_string) -> BytePlan | None:
    """A `BytePlan` for a `tokenizers` decoder, or ``None`` if it is not token-local."""
    if not decoder_state:
        return None
    steps = decoder_state["decoders"] if decoder_state.get("type") == "Sequence" else [decoder_state]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"]:
        return BytePlan(token_string, "byte_level", byte_fallback=False, strip_first=0)
    if kinds == ["Metaspace"]:
        if steps[0].get("replacement", _SPIECE_UNDERLINE) != _SPIECE_UNDERLINE:
            return None
        strips = int(steps[0].get("prepend_scheme", "always") != "never")
        return BytePlan(token_string, "metaspace", byte_fallback=False, strip_first=strips)
    # The SentencePiece-style chain Llama and Gemma use: Replace(▁, " "), ByteFallback, Fuse, Strip.
    has_replace, byte_fallback, strip_first = False, False, 0
    for position, step in enumerate(steps):
        kind = step.get("type")
        if (
            kind == "Replace"
            and step.get("pattern", {}).get("String") == _SPIECE_UNDERLINE
            and step.get("content") == " "
        ):
            has_replace = True
        elif kind == "ByteFallback":
            byte_fallback = True
        elif kind == "Fuse":
            pass
        elif kind == "Strip" and step.get("content") == " " and step.get("stop", 0) == 0:
            # Strip works per token, so it only means "strip the start of the text" after a Fuse.
            if "Fuse" not in kinds[:position]:
                return None
            strip_first = int(step.get("start", 0))
        else:
            return None
    if not has_replace:
        return None
    return BytePlan(token_string, "replace", byte_fallback=byte_fallback, strip_first=strip_first)


class TokenizersBackend:
    """A `tokenizers.Tokenizer` (``tokenizer.json`` or a legacy vocabulary)."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, clean_up_spaces: bool):
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self.tokenizer = tokenizer
        # transformers skips its text cleanup for BPE models: it would corrupt their output.
        self.clean_up_spaces = clean_up_spaces and type(tokenizer.model).__name__ != "BPE"

    def mark_special(self, tokens: Iterable[str]) -> None:
        """Register tokens as special (matched whole in text, skippable in decode)."""
        new = [tokenizers.AddedToken(token, special=True, normalized=False) for token in tokens]
        if new:
            self.tokenizer.add_special_tokens(new)

    def special_ids(self) -> set[int]:
        return {index for index, token in self.tokenizer.get_added_tokens_decoder().items() if token.special}

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.tokenizer.id_to_token(token_id)

    def encode_sequences(self, texts: list[str]) -> list[tokenizers.Encoding]:
        return self.tokenizer.encode_batch(texts, add_special_tokens=False)

    @staticmethod
    def truncate(sequence: tokenizers.Encoding, length: int) -> tokenizers.Encoding:
        sequence.truncate(length)
        return sequence

    def num_special_tokens(self, pair: bool) -> int:
        return self.tokenizer.num_special_tokens_to_add(pair)

    def finish(self, first, second, add_special_tokens: bool) -> TokenizedText:
        """Join one or two sequences, inserting special tokens as the post-processor says."""
        encoding = self.tokenizer.post_process(first, second, add_special_tokens=add_special_tokens)
        return TokenizedText(list(encoding.ids), list(encoding.type_ids))

    def build_inputs(self, first: list[int], second: list[int] | None) -> TokenizedText:
        """Already-tokenized ids with the special tokens the post-processor inserts."""
        # The `tokenizers` post-processor only takes Encodings, which cannot be built from ids:
        # post-process one-word probes and put the ids where the probes' tokens landed.
        probes = self.encode_sequences(["a"] if second is None else ["a", "b"])
        if not all(len(probe.ids) for probe in probes):
            raise ValueError("cannot lay out special tokens: the probe text 'a' encodes to no tokens")
        layout = self.tokenizer.post_process(
            probes[0], probes[1] if second is not None else None, add_special_tokens=True
        )
        input_ids: list[int] = []
        type_ids: list[int] = []
        previous = None
        for token_id, type_id, special, sequence in zip(
            layout.ids, layout.type_ids, layout.special_tokens_mask, layout.sequence_ids
        ):
            part = None if special else (second if sequence == 1 else first)
            if part is None:
                input_ids.append(token_id)
                type_ids.append(type_id)
            elif part is not previous:  # the first probe token of a run stands for the whole sequence
                input_ids.extend(part)
                type_ids.extend([type_id] * len(part))
            previous = part
        return TokenizedText(input_ids, type_ids)

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def byte_plan(self) -> BytePlan | None:
        if self.clean_up_spaces or self.tokenizer.decoder is None:
            return None
        state = json.loads(self.tokenizer.decoder.__getstate__())
        return plan_from_decoder(state, self.tokenizer.id_to_token)


class SentencePieceBackend:
    """A SentencePiece ``.model``, with special-token insertion done here.

    Added tokens (`add_tokens`, `mark_special`) are matched whole in text
    before SentencePiece sees the rest.

    Args:
        model_file: The ``.model`` file.
        legacy: transformers' ``legacy`` flag: if ``False``, text that follows
            an added token gets no dummy ``▁`` prefix.
        clean_up_spaces: Apply transformers' ``clean_up_tokenization``.
    """

    def __init__(
        self,
        model_file: Path,
        legacy: bool,
        clean_up_spaces: bool,
    ):
        self.processor = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
        self.model_file = model_file
        self.added_tokens: dict[int, str] = {}
        self.added_ids: dict[str, int] = {}
        # Ids to put before / after each sequence (``add_bos_token`` / ``add_eos_token``).
        self.add_bos_id: int | None = None
        self.add_eos_id: int | None = None
        self.legacy = legacy
        self.clean_up_spaces = clean_up_spaces and sentencepiece_model_type(self.processor) != "BPE"
        self._special: set[int] = set()
        self._update_split_pattern()
        self.adds_dummy_prefix = self.processor.encode("a", out_type=str)[0].startswith(_SPIECE_UNDERLINE)
        # Encoding "<unk>" + text and dropping the "<unk>" pieces encodes text without the dummy
        # prefix (transformers' slow Llama tokenizer used the same trick).
        self._prefix_probe = self.processor.id_to_piece(self.processor.unk_id())
        self._prefix_probe_ids = self.processor.encode(self._prefix_probe)
        self._plan = BytePlan(
            self.id_to_token, "replace", byte_fallback=True, strip_first=int(self.adds_dummy_prefix)
        )

    def _update_split_pattern(self) -> None:
        contents = sorted(self.added_ids, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(map(re.escape, contents)) + ")") if contents else None

    def add_tokens(self, tokens: dict[int, str], special: bool) -> None:
        """Add tokens at the given ids (``added_tokens_decoder`` entries, T5 sentinels)."""
        for index, token in tokens.items():
            self.added_tokens.setdefault(index, token)
            self.added_ids.setdefault(token, index)
            if special:
                self._special.add(index)
        self._update_split_pattern()

    def mark_special(self, tokens: Iterable[str]) -> None:
        """Register tokens as special; one the model lacks gets the next free id, as in transformers."""
        for token in tokens:
            index = self.token_to_id(token)
            self.add_tokens({self.vocab_size if index is None else index: token}, special=True)

    def special_ids(self) -> set[int]:
        return set(self._special)

    @property
    def vocab_size(self) -> int:
        return max(self.processor.get_piece_size(), max(self.added_tokens, default=-1) + 1)

    def token_to_id(self, token: str) -> int | None:
        if token in self.added_ids:
            return self.added_ids[token]
        index = self.processor.piece_to_id(token)
        # piece_to_id answers unk_id for unknown pieces; only the unk piece itself maps there.
        if index == self.processor.unk_id() and token != self.processor.id_to_piece(index):
            return None
        return index

    def id_to_token(self, token_id: int) -> str | None:
        if token_id in self.added_tokens:
            return self.added_tokens[token_id]
        if 0 <= token_id < self.processor.get_piece_size():
            return self.processor.id_to_piece(token_id)
        return None

    def _encode_chunk(self, text: str, dummy_prefix: bool) -> list[int]:
        if dummy_prefix or not self.adds_dummy_prefix:
            return self.processor.encode(text)
        ids = self.processor.encode(self._prefix_probe + text)
        probe = self._prefix_probe_ids
        if ids[: len(probe)] == probe:
            return ids[len(probe) :]
        # The probe merged with the text (rare); a dummy prefix beats losing characters.
        return self.processor.encode(text)

    def encode_text(self, text: str) -> list[int]:
        """Ids of ``text``; added tokens are matched whole, SentencePiece encodes the rest."""
        chunks = self._split.split(text) if self._split else [text]
        ids: list[int] = []
        for position, chunk in enumerate(chunks):
            if not chunk:
                continue
            if chunk in self.added_ids and position % 2 == 1:
                ids.append(self.added_ids[chunk])
                continue
            # Like the tokenizers Metaspace pre-tokenizer transformers uses: text that already starts
            # with a space gets no extra "▁", nor (unless legacy) does text after an added token.
            dummy_prefix = not chunk.startswith(" ") and (position == 0 or self.legacy)
            ids.extend(self._encode_chunk(chunk, dummy_prefix))
        return ids

    def encode_sequences(self, texts: list[str]) -> list[list[int]]:
        return [self.encode_text(text) for text in texts]

    @staticmethod
    def truncate(sequence: list[int], length: int) -> list[int]:
        return sequence[:length]

    def num_special_tokens(self, pair: bool) -> int:
        per_sequence = (self.add_bos_id is not None) + (self.add_eos_id is not None)
        return per_sequence * (2 if pair else 1)

    def finish(self, first: list[int], second: list[int] | None, add_special_tokens: bool) -> TokenizedText:
        """``[bos] A [eos] [bos] B [eos]`` per ``add_bos_token``/``add_eos_token``; B is segment 1."""
        ids: list[int] = []
        type_ids: list[int] = []
        for segment, sequence in enumerate([first] if second is None else [first, second]):
            if add_special_tokens:
                sequence = (
                    ([self.add_bos_id] if self.add_bos_id is not None else [])
                    + sequence
                    + ([self.add_eos_id] if self.add_eos_id is not None else [])
                )
            ids.extend(sequence)
            type_ids.extend([segment] * len(sequence))
        return TokenizedText(ids, type_ids)

    def build_inputs(self, first: list[int], second: list[int] | None) -> TokenizedText:
        """Already-tokenized ids with ``add_bos_token``/``add_eos_token`` applied."""
        return self.finish(first, second, add_special_tokens=True)

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        pieces = [
            self._plan.token_bytes(index, first=position == 0)
            for position, index in enumerate(
                i for i in ids if not (skip_special_tokens and i in self._special)
            )
        ]
        return b"".join(pieces).decode("utf-8", errors="replace")

    def byte_plan(self) -> BytePlan | None:
        return None if self.clean_up_spaces else self._plan


def sentencepiece_model_type(processor: sentencepiece.SentencePieceProcessor) -> str | None:
    """``"BPE"``, ``"UNIGRAM"``, ... read from the model proto, or ``None`` without protobuf."""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:  # the generated module needs protobuf, which is optional
        return None
    proto = sentencepiece_model_pb2.ModelProto.FromString(processor.serialized_model_proto())
    return sentencepiece_model_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type)


def wordpiece_tokenizer(
    vocab_file: Path, config: dict, special: dict[str, str | None]
) -> tokenizers.Tokenizer:
    """A BERT WordPiece tokenizer from ``vocab.txt``, as transformers' BertTokenizer builds it."""
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

    tokenizer = tokenizers.Tokenizer(models.WordPiece.from_file(str(vocab_file), unk_token=special["unk"]))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=config.get("tokenize_chinese_chars", True),
        strip_accents=config.get("strip_accents"),
        lowercase=config.get("do_lower_case", True),
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    cls, sep = special["cls"], special["sep"]
    cls_id, sep_id = tokenizer.token_to_id(cls), tokenizer.token_to_id(sep)
    if cls_id is None or sep_id is None:
        raise ValueError(
            f"{vocab_file} lacks the cls/sep tokens {cls!r}/{sep!r}; add them, or name the "
            "model's tokens as cls_token/sep_token in tokenizer_config.json"
        )
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, cls_id), (sep, sep_id)],
    )
    return tokenizer


def byte_level_bpe_tokenizer(vocab_file: Path, merges_file: Path, config: dict) -> tokenizers.Tokenizer:
    """A GPT-2 byte-level BPE tokenizer from ``vocab.json`` + ``merges.txt``."""
    from tokenizers import decoders, models, pre_tokenizers

    tokenizer = tokenizers.Tokenizer(models.BPE.from_file(str(vocab_file), str(merges_file)))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=config.get("add_prefix_space", False))
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer
