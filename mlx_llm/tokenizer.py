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

import codecs
import json
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import mlx.core as mx
import numpy as np
import sentencepiece
import tokenizers

SPECIAL_TOKEN_NAMES = ("bos", "eos", "unk", "pad", "cls", "sep", "mask")
SENTENCEPIECE_FILES = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "sentencepiece.model")
PADDING_STRATEGIES = (True, False, "longest", "max_length", "do_not_pad")
TRUNCATION_STRATEGIES = (True, False, "longest_first", "only_first", "only_second", "do_not_truncate")

# transformers writes model_max_length = int(1e30) when a model sets no limit.
_NO_MAX_LENGTH = int(1e29)
_SPIECE_UNDERLINE = "▁"
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
# Defaults transformers' BertTokenizer and GPT2Tokenizer use when a legacy folder names no tokens.
_WORDPIECE_DEFAULTS = {"unk": "[UNK]", "sep": "[SEP]", "pad": "[PAD]", "cls": "[CLS]", "mask": "[MASK]"}
_GPT2_DEFAULTS = {"bos": "<|endoftext|>", "eos": "<|endoftext|>", "unk": "<|endoftext|>"}


class TokenizedText(NamedTuple):
    """Ids of one text (or text pair) and the segment of each id."""

    input_ids: list[int]
    token_type_ids: list[int]


# ---------------------------------------------------------------------------
# Reading a Hugging Face folder
# ---------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    """The JSON object in ``path``, or ``{}`` when the file does not exist."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); fix or delete the file") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _token_content(value: Any) -> str | None:
    """A special-token entry as a string: configs store either ``"<s>"`` or ``{"content": "<s>", ...}``."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(
        f"special token entries must be strings or objects with a 'content' string, got {value!r}"
    )


def _int_list(value: Any) -> list[int]:
    """``eos_token_id`` style fields: an int, a list of ints, or absent."""
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list) and all(isinstance(item, int) for item in value):
        return list(value)
    raise ValueError(f"expected a token id or a list of token ids, got {value!r}")


def _load_chat_templates(folder: Path, config: dict) -> str | dict[str, str] | None:
    """The chat template(s) of a folder, in transformers' order of preference.

    Returns:
        One template string, a ``{name: template}`` dict when the model ships
        several, or ``None``.
    """
    templates: dict[str, str] = {}
    configured = config.get("chat_template")
    if isinstance(configured, str):
        templates["default"] = configured
    elif isinstance(configured, list):
        for entry in configured:
            if not isinstance(entry, dict) or not {"name", "template"} <= entry.keys():
                raise ValueError(
                    f"{folder / 'tokenizer_config.json'}: a list-valued chat_template must hold "
                    f"{{'name': ..., 'template': ...}} objects, got {entry!r}"
                )
            templates[entry["name"]] = entry["template"]
    elif configured is not None:
        raise ValueError(
            f"chat_template must be a string or a list of named templates, got {type(configured).__name__}"
        )
    # Newer transformers saves templates as separate files; they take precedence over the config entry.
    processor_template = _read_json(folder / "chat_template.json").get("chat_template")
    if isinstance(processor_template, str):
        templates["default"] = processor_template
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        templates["default"] = jinja_file.read_text(encoding="utf-8")
    extra_folder = folder / "additional_chat_templates"
    if extra_folder.is_dir():
        for path in sorted(extra_folder.glob("*.jinja")):
            templates[path.stem] = path.read_text(encoding="utf-8")
    if not templates:
        return None
    if list(templates) == ["default"]:
        return templates["default"]
    return templates


# ---------------------------------------------------------------------------
# Backends: what `Tokenizer` needs from a tokenization library
# ---------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _byte_level_table() -> dict[str, int]:
    """GPT-2's map from the printable stand-in characters of byte-level BPE back to bytes."""
    # Printable bytes stand for themselves; the other 68 are shifted to U+0100 and up.
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    shifted = [byte for byte in range(256) if byte not in printable]
    table = {chr(byte): byte for byte in printable}
    table.update({chr(256 + index): byte for index, byte in enumerate(shifted)})
    return table


class _BytePlan:
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
            table = _byte_level_table()
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


def _plan_from_decoder(decoder_state: dict | None, token_string) -> _BytePlan | None:
    """A `_BytePlan` for a `tokenizers` decoder, or ``None`` if it is not token-local."""
    if not decoder_state:
        return None
    steps = decoder_state["decoders"] if decoder_state.get("type") == "Sequence" else [decoder_state]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"]:
        return _BytePlan(token_string, "byte_level", byte_fallback=False, strip_first=0)
    if kinds == ["Metaspace"]:
        if steps[0].get("replacement", _SPIECE_UNDERLINE) != _SPIECE_UNDERLINE:
            return None
        strips = int(steps[0].get("prepend_scheme", "always") != "never")
        return _BytePlan(token_string, "metaspace", byte_fallback=False, strip_first=strips)
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
    return _BytePlan(token_string, "replace", byte_fallback=byte_fallback, strip_first=strip_first)


class _TokenizersBackend:
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

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def byte_plan(self) -> _BytePlan | None:
        if self.clean_up_spaces or self.tokenizer.decoder is None:
            return None
        state = json.loads(self.tokenizer.decoder.__getstate__())
        return _plan_from_decoder(state, self.tokenizer.id_to_token)


class _SentencePieceBackend:
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
        self.clean_up_spaces = clean_up_spaces and _sentencepiece_model_type(self.processor) != "BPE"
        self._special: set[int] = set()
        self._update_split_pattern()
        self.adds_dummy_prefix = self.processor.encode("a", out_type=str)[0].startswith(_SPIECE_UNDERLINE)
        # Encoding "<unk>" + text and dropping the "<unk>" pieces encodes text without the dummy
        # prefix (transformers' slow Llama tokenizer used the same trick).
        self._prefix_probe = self.processor.id_to_piece(self.processor.unk_id())
        self._prefix_probe_ids = self.processor.encode(self._prefix_probe)
        self._plan = _BytePlan(
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

    def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        pieces = [
            self._plan.token_bytes(index, first=position == 0)
            for position, index in enumerate(
                i for i in ids if not (skip_special_tokens and i in self._special)
            )
        ]
        return b"".join(pieces).decode("utf-8", errors="replace")

    def byte_plan(self) -> _BytePlan | None:
        return None if self.clean_up_spaces else self._plan


def _sentencepiece_model_type(processor: sentencepiece.SentencePieceProcessor) -> str | None:
    """``"BPE"``, ``"UNIGRAM"``, ... read from the model proto, or ``None`` without protobuf."""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:  # the generated module needs protobuf, which is optional
        return None
    proto = sentencepiece_model_pb2.ModelProto.FromString(processor.serialized_model_proto())
    return sentencepiece_model_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type)


def _wordpiece_tokenizer(
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


def _byte_level_bpe_tokenizer(vocab_file: Path, merges_file: Path, config: dict) -> tokenizers.Tokenizer:
    """A GPT-2 byte-level BPE tokenizer from ``vocab.json`` + ``merges.txt``."""
    from tokenizers import decoders, models, pre_tokenizers

    tokenizer = tokenizers.Tokenizer(models.BPE.from_file(str(vocab_file), str(merges_file)))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=config.get("add_prefix_space", False))
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


# ---------------------------------------------------------------------------
# Chat templates
# ---------------------------------------------------------------------------


class ChatTemplateError(ValueError):
    """A chat template refused a conversation (``raise_exception``) or failed to render."""


class _TemplateRaised(Exception):
    """What a template's ``raise_exception(message)`` raises."""


def _one_line(text: object) -> str:
    # Template messages may span lines; command-line errors are one line.
    return " ".join(str(text).split())


@lru_cache(maxsize=16)
def _compile_chat_template(template: str):
    """A chat template compiled in the sandboxed Jinja environment transformers uses.

    Raises:
        ChatTemplateError: the template is not valid Jinja.
    """
    try:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as error:
        raise ImportError("apply_chat_template needs jinja2; install it with `pip install jinja2`") from error

    class GenerationTag(jinja2.ext.Extension):
        # transformers' {% generation %} marks assistant text for training masks; here it renders as is.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

        def _render_body(self, caller):
            return caller()

    def raise_exception(message: str):
        raise _TemplateRaised(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson escapes HTML characters, which would change the prompt text.
        return json.dumps(
            value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = strftime_now
    try:
        return environment.from_string(template)
    except jinja2.TemplateSyntaxError as error:
        raise ChatTemplateError(
            f"the chat template is not valid Jinja (line {error.lineno}: {_one_line(error.message)})"
        ) from None


# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------


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
        backend: _TokenizersBackend | _SentencePieceBackend,
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
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"tokenizer folder {folder} does not exist; pass a local folder with tokenizer.json "
                "or a SentencePiece .model (download the model first)"
            )
        config = _read_json(folder / "tokenizer_config.json")
        special_tokens_map = _read_json(folder / "special_tokens_map.json")
        # special_tokens_map.json overrides tokenizer_config.json, as in transformers.
        merged = {**config, **special_tokens_map}
        configured = {name: _token_content(merged.get(f"{name}_token")) for name in SPECIAL_TOKEN_NAMES}
        named_in_config = {name for name in SPECIAL_TOKEN_NAMES if f"{name}_token" in merged}
        extra: list[str] = []
        for key in ("additional_special_tokens", "extra_special_tokens"):
            listed = merged.get(key) or []
            # transformers 5 may store extra_special_tokens as {name: token}.
            for token in listed.values() if isinstance(listed, dict) else listed:
                if (content := _token_content(token)) is not None:
                    extra.append(content)
        clean_up = bool(config.get("clean_up_tokenization_spaces", False))

        sentencepiece_file = next(
            (folder / name for name in SENTENCEPIECE_FILES if (folder / name).is_file()), None
        )
        if sentencepiece_file is None:
            sentencepiece_file = next(iter(sorted(folder.glob("*.model"))), None)

        if (folder / "tokenizer.json").is_file():
            try:
                rust_tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
            except Exception as error:  # the Rust loader raises a bare Exception
                raise ValueError(f"cannot read {folder / 'tokenizer.json'}: {error}") from error
            backend = _TokenizersBackend(rust_tokenizer, clean_up)
            special = configured
        elif sentencepiece_file is not None:
            backend, special, sentinels = cls._sentencepiece_backend(
                sentencepiece_file, config, configured, named_in_config, clean_up
            )
            extra += [token for token in sentinels if token not in extra]
        elif (folder / "vocab.txt").is_file():
            special = {
                name: configured[name] if name in named_in_config else _WORDPIECE_DEFAULTS.get(name)
                for name in SPECIAL_TOKEN_NAMES
            }
            backend = _TokenizersBackend(
                _wordpiece_tokenizer(folder / "vocab.txt", config, special), clean_up
            )
        elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            special = {
                name: configured[name] if name in named_in_config else _GPT2_DEFAULTS.get(name)
                for name in SPECIAL_TOKEN_NAMES
            }
            rust_tokenizer = _byte_level_bpe_tokenizer(folder / "vocab.json", folder / "merges.txt", config)
            backend = _TokenizersBackend(rust_tokenizer, clean_up)
        else:
            raise FileNotFoundError(
                f"no tokenizer files in {folder}: looked for tokenizer.json, a SentencePiece model "
                f"({', '.join(SENTENCEPIECE_FILES)} or *.model), vocab.txt, and vocab.json + merges.txt"
            )

        eos_ids: list[int] = []
        for file_name in ("generation_config.json", "config.json"):
            model_config = _read_json(folder / file_name)
            eos_ids += _int_list(model_config.get("eos_token_id"))
            eos_ids += _int_list(model_config.get("text_config", {}).get("eos_token_id"))

        max_length = config.get("model_max_length")
        if not isinstance(max_length, int) or max_length >= _NO_MAX_LENGTH:
            max_length = None
        padding_side = config.get("padding_side", "right")
        return cls(
            backend,
            special,
            extra_special_tokens=extra,
            eos_token_ids=eos_ids,
            chat_template=_load_chat_templates(folder, config),
            model_max_length=max_length,
            padding_side=padding_side if padding_side in ("left", "right") else "right",
            folder=folder,
        )

    @staticmethod
    def _sentencepiece_backend(
        model_file: Path, config: dict, configured: dict, named_in_config: set[str], clean_up: bool
    ) -> tuple[_SentencePieceBackend, dict[str, str | None], list[str]]:
        """The SentencePiece backend, its named special tokens, and T5 sentinel tokens."""
        backend = _SentencePieceBackend(
            model_file, legacy=bool(config.get("legacy", True)), clean_up_spaces=clean_up
        )
        for index, entry in (config.get("added_tokens_decoder") or {}).items():
            special_entry = isinstance(entry, dict) and entry.get("special", False)
            backend.add_tokens({int(index): _token_content(entry)}, special=special_entry)
        # T5's sentinels follow the pieces in reverse order: <extra_id_0> gets the last id.
        extra_ids = int(config.get("extra_ids", 0) or 0)
        piece_count = backend.processor.get_piece_size()
        sentinels = [f"<extra_id_{sentinel}>" for sentinel in range(extra_ids)]
        backend.add_tokens(
            {piece_count + extra_ids - 1 - sentinel: token for sentinel, token in enumerate(sentinels)},
            special=True,
        )
        # Tokens the config names win; otherwise the model's own bos/eos/unk/pad pieces.
        processor = backend.processor
        model_ids = {
            "bos": processor.bos_id(),
            "eos": processor.eos_id(),
            "unk": processor.unk_id(),
            "pad": processor.pad_id(),
        }
        special = {
            name: configured[name]
            if name in named_in_config
            else (processor.id_to_piece(model_ids[name]) if model_ids.get(name, -1) >= 0 else None)
            for name in SPECIAL_TOKEN_NAMES
        }
        backend.mark_special([token for token in special.values() if token is not None])
        # T5 appends </s> and prepends nothing; Llama-style models prepend <s>.
        is_t5 = "T5" in str(config.get("tokenizer_class", ""))
        if config.get("add_bos_token", not is_t5) and special["bos"] is not None:
            backend.add_bos_id = backend.token_to_id(special["bos"])
        if config.get("add_eos_token", is_t5) and special["eos"] is not None:
            backend.add_eos_id = backend.token_to_id(special["eos"])
        return backend, special, sentinels

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
        batch = [texts] if single else list(texts)
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
        input_ids = [item.input_ids for item in encoded]
        token_type_ids = [item.token_type_ids for item in encoded]
        attention_mask = [[1] * len(ids) for ids in input_ids]
        if pad_mode is not None:
            # Like transformers, "max_length" leaves longer (untruncated) sequences as they are.
            target = max_length if pad_mode == "max_length" else max(len(ids) for ids in input_ids)
            for row in range(len(input_ids)):
                missing = max(0, target - len(input_ids[row]))
                for values, fill in (
                    (input_ids, self.pad_token_id),
                    (token_type_ids, 0),
                    (attention_mask, 0),
                ):
                    padding_values = [fill] * missing
                    values[row] = (
                        padding_values + values[row]
                        if padding_side == "left"
                        else values[row] + padding_values
                    )

        outputs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
        }
        if return_tensors is None:
            return {key: value[0] for key, value in outputs.items()} if single else outputs
        lengths = {len(ids) for ids in input_ids}
        if len(lengths) > 1:
            raise ValueError(
                f"cannot stack sequences of lengths {sorted(lengths)} into one array; pass padding=True, "
                "or truncation=True when padding to max_length"
            )
        arrays = {key: np.asarray(value, dtype=np.int64) for key, value in outputs.items()}
        if return_tensors == "mlx":
            return {key: mx.array(value.astype(np.int32)) for key, value in arrays.items()}
        return arrays

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
            text = _clean_up_tokenization(text)
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
        template = self._select_chat_template(chat_template, tools)
        # Like transformers, keys set to None are dropped: templates test presence, not None.
        conversation = [
            {key: value for key, value in message.items() if value is not None} for message in messages
        ]
        variables = {
            f"{name}_token": token for name, token in self._special_tokens.items() if token is not None
        }
        if self._extra_special_tokens:
            variables["additional_special_tokens"] = list(self._extra_special_tokens)
        variables.update(extra)
        compiled = _compile_chat_template(template)
        import jinja2

        try:
            rendered = compiled.render(
                messages=conversation,
                tools=tools,
                documents=documents,
                add_generation_prompt=add_generation_prompt,
                **variables,
            )
        except _TemplateRaised as error:  # the template's own raise_exception(message)
            raise ChatTemplateError(f"the chat template refused the conversation: {_one_line(error)}") from None
        # Whatever else a template's expressions raise (undefined names, sandbox refusals,
        # Python errors from filters) is a template that cannot render this conversation.
        except (jinja2.TemplateError, TypeError, KeyError, IndexError, AttributeError, ValueError,
                ZeroDivisionError) as error:
            raise ChatTemplateError(
                f"the chat template failed to render: {type(error).__name__}: {_one_line(error)}"
            ) from None
        return self.encode(rendered, add_special_tokens=False) if tokenize else rendered

    def _select_chat_template(self, chat_template: str | None, tools: list | None) -> str:
        templates = self._chat_template
        if isinstance(templates, dict):
            if chat_template is not None:
                return templates.get(chat_template, chat_template)
            if tools is not None and "tool_use" in templates:
                return templates["tool_use"]
            if "default" in templates:
                return templates["default"]
            raise ValueError(
                f"the model has several chat templates ({sorted(templates)}) and none is 'default'; "
                "pass chat_template=<name>"
            )
        if chat_template is not None:
            return chat_template
        if templates is None:
            where = f" in {self.folder}" if self.folder is not None else ""
            raise ValueError(
                f"the model has no chat template (no chat_template in tokenizer_config.json and no "
                f"chat_template.jinja{where}); pass chat_template=<jinja string>"
            )
        return templates

    def __repr__(self) -> str:
        kind = "sentencepiece" if isinstance(self._backend, _SentencePieceBackend) else "tokenizers"
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
        if isinstance(self._backend, _SentencePieceBackend):
            return self._backend.finish(first, second, add_special_tokens=True)
        # The `tokenizers` post-processor only takes Encodings, which cannot be built from ids:
        # post-process one-word probes and put the ids where the probes' tokens landed.
        probes = self._backend.encode_sequences(["a"] if second is None else ["a", "b"])
        if not all(len(probe.ids) for probe in probes):
            raise ValueError("cannot lay out special tokens: the probe text 'a' encodes to no tokens")
        layout = self._backend.tokenizer.post_process(
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


def _clean_up_tokenization(text: str) -> str:
    """transformers' ``clean_up_tokenization``: drop spaces before punctuation and contractions."""
    for before, after in (
        (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
        (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
    ):  # fmt: skip
        text = text.replace(before, after)
    return text


# ---------------------------------------------------------------------------
# Streaming detokenization
# ---------------------------------------------------------------------------


class StreamingDetokenizer:
    """Text of generated ids, one token at a time, never emitting text that may still change.

    Byte-level BPE and SentencePiece-style tokenizers decode each token to
    bytes on its own, so each step costs O(1): bytes go through an
    incremental UTF-8 decoder that holds back an incomplete character (no
    U+FFFD halfway through an emoji). Other decoders (WordPiece, cleanup of
    spaces) re-decode a short window of recent tokens and emit only the text
    that adding the newest token did not change. Either way the segments add
    up to ``tokenizer.decode(all_ids)`` (one exception: where byte-fallback
    tokens spell invalid UTF-8, `tokenizers` writes a U+FFFD per byte and
    this class one per invalid sequence, as Python's decoder does).

    Args:
        tokenizer: The tokenizer whose ids arrive.
        skip_special_tokens: Leave out special tokens, as `Tokenizer.decode` does.
    """

    # Tokens of already-emitted text kept as context when the window slides.
    _CONTEXT_TOKENS = 4
    _MAX_WINDOW = 16

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        self._plan = tokenizer._backend.byte_plan()
        self.reset()

    def reset(self) -> None:
        """Forget all tokens and text, to start a new stream."""
        self._tokens: list[int] = []
        self._text_parts: list[str] = []
        self._unread: list[str] = []
        self._seen_text_token = False
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # Window state of the re-decoding path.
        self._window: list[int] = []
        self._window_text = ""
        self._emitted = 0

    @property
    def tokens(self) -> list[int]:
        """All ids added since the last reset."""
        return list(self._tokens)

    @property
    def text(self) -> str:
        """All final text so far."""
        return "".join(self._text_parts)

    @property
    def last_segment(self) -> str:
        """Final text that arrived since the previous read of this property."""
        segment = "".join(self._unread)
        self._unread = []
        return segment

    def _emit(self, text: str) -> None:
        if text:
            self._text_parts.append(text)
            self._unread.append(text)

    def add_token(self, token_id: int) -> None:
        """Add the next generated id (one past the vocabulary adds no text, as in `Tokenizer.decode`)."""
        token_id = int(token_id)
        if token_id < 0:
            raise ValueError(f"token ids must be >= 0, got {token_id}")
        self._tokens.append(token_id)
        if self._tokenizer.id_to_token(token_id) is None:
            return
        if self._plan is not None:
            if self._skip_special_tokens and token_id in self._tokenizer._special_ids:
                return
            data = self._plan.token_bytes(token_id, first=not self._seen_text_token)
            self._seen_text_token = True
            self._emit(self._utf8.decode(data))
            return
        self._add_by_redecoding(token_id)

    def _add_by_redecoding(self, token_id: int) -> None:
        self._window.append(token_id)
        text = self._tokenizer.decode(self._window, self._skip_special_tokens)
        # Text the newest token left unchanged is final; the newest token's own text may still
        # change (a following "." pulls in the space before it, a byte completes a character).
        stable = 0
        limit = min(len(text), len(self._window_text))
        while stable < limit and text[stable] == self._window_text[stable]:
            stable += 1
        while stable > self._emitted and text[stable - 1] == "\ufffd":
            stable -= 1
        if stable > self._emitted:
            self._emit(text[self._emitted : stable])
            self._emitted = stable
        self._window_text = text
        if len(self._window) > self._MAX_WINDOW:
            self._slide_window(text)

    def _slide_window(self, text: str) -> None:
        # Keep a few tokens of context; the dropped tokens' text must be emitted and be a
        # prefix of the window's text, so that decoding the rest gives the remaining suffix.
        # The kept tokens must show some text: a decoder treats the first text token of a
        # window differently (no space before it), and later tokens must not be that one.
        kept = self._window[-self._CONTEXT_TOKENS :]
        kept_text = self._tokenizer.decode(kept, self._skip_special_tokens)
        dropped_length = len(text) - len(kept_text)
        if kept_text and text.endswith(kept_text) and self._emitted >= dropped_length:
            self._window = kept
            self._window_text = kept_text
            self._emitted -= dropped_length

    def finalize(self) -> None:
        """Flush the text held back at the end of the stream."""
        if self._plan is not None:
            self._emit(self._utf8.decode(b"", final=True))
            return
        text = self._tokenizer.decode(self._window, self._skip_special_tokens)
        self._emit(text[self._emitted :])
        self._emitted = len(text)
        self._window_text = text
