"""Reading a Hugging Face tokenizer folder: which files it holds and what its configs say.

`read_tokenizer_folder` picks the backend the way transformers does (a
``tokenizer.json``, else a SentencePiece ``.model``, else the legacy
``vocab.txt`` or ``vocab.json`` + ``merges.txt``) and gathers the special
tokens, end-of-sequence ids, chat templates and limits from
``tokenizer_config.json``, ``special_tokens_map.json``,
``generation_config.json`` and ``config.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import tokenizers

from .backends import SentencePieceBackend, TokenizersBackend, byte_level_bpe_tokenizer, wordpiece_tokenizer

SPECIAL_TOKEN_NAMES = ("bos", "eos", "unk", "pad", "cls", "sep", "mask")
SENTENCEPIECE_FILES = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "sentencepiece.model")

# transformers writes model_max_length = int(1e30) when a model sets no limit.
NO_MAX_LENGTH = int(1e29)
# Defaults transformers' BertTokenizer and GPT2Tokenizer use when a legacy folder names no tokens.
WORDPIECE_DEFAULTS = {"unk": "[UNK]", "sep": "[SEP]", "pad": "[PAD]", "cls": "[CLS]", "mask": "[MASK]"}
GPT2_DEFAULTS = {"bos": "<|endoftext|>", "eos": "<|endoftext|>", "unk": "<|endoftext|>"}


class TokenizerFiles(NamedTuple):
    """What a folder says about its tokenizer: the arguments of `Tokenizer`."""

    backend: TokenizersBackend | SentencePieceBackend
    special_tokens: dict[str, str | None]
    extra_special_tokens: list[str]
    eos_token_ids: list[int]
    chat_template: str | dict[str, str] | None
    model_max_length: int | None
    padding_side: str
    folder: Path


def read_json(path: Path) -> dict:
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


def token_content(value: Any) -> str | None:
    """A special-token entry as a string: configs store either ``"<s>"`` or ``{"content": "<s>", ...}``."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(
        f"special token entries must be strings or objects with a 'content' string, got {value!r}"
    )


def int_list(value: Any) -> list[int]:
    """``eos_token_id`` style fields: an int, a list of ints, or absent."""
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list) and all(isinstance(item, int) for item in value):
        return list(value)
    raise ValueError(f"expected a token id or a list of token ids, got {value!r}")


def load_chat_templates(folder: Path, config: dict) -> str | dict[str, str] | None:
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
    processor_template = read_json(folder / "chat_template.json").get("chat_template")
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


def read_tokenizer_folder(folder: str | Path) -> TokenizerFiles:
    """The backend and settings of a local Hugging Face-layout tokenizer folder.

    Args:
        folder: The folder holding the tokenizer files.

    Returns:
        A `TokenizerFiles`, whose fields are the arguments of `Tokenizer`.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"tokenizer folder {folder} does not exist; pass a local folder with tokenizer.json "
            "or a SentencePiece .model (download the model first)"
        )
    config = read_json(folder / "tokenizer_config.json")
    special_tokens_map = read_json(folder / "special_tokens_map.json")
    # special_tokens_map.json overrides tokenizer_config.json, as in transformers.
    merged = {**config, **special_tokens_map}
    configured = {name: token_content(merged.get(f"{name}_token")) for name in SPECIAL_TOKEN_NAMES}
    named_in_config = {name for name in SPECIAL_TOKEN_NAMES if f"{name}_token" in merged}
    extra: list[str] = []
    for key in ("additional_special_tokens", "extra_special_tokens"):
        listed = merged.get(key) or []
        # transformers 5 may store extra_special_tokens as {name: token}.
        for token in listed.values() if isinstance(listed, dict) else listed:
            if (content := token_content(token)) is not None:
                extra.append(content)
    clean_up = bool(config.get("clean_up_tokenization_spaces", False))
    backend, special, sentinels = load_backend(folder, config, configured, named_in_config, clean_up)
    extra += [token for token in sentinels if token not in extra]

    eos_ids: list[int] = []
    for file_name in ("generation_config.json", "config.json"):
        model_config = read_json(folder / file_name)
        eos_ids += int_list(model_config.get("eos_token_id"))
        eos_ids += int_list(model_config.get("text_config", {}).get("eos_token_id"))

    max_length = config.get("model_max_length")
    if not isinstance(max_length, int) or max_length >= NO_MAX_LENGTH:
        max_length = None
    padding_side = config.get("padding_side", "right")
    return TokenizerFiles(
        backend,
        special,
        extra_special_tokens=extra,
        eos_token_ids=eos_ids,
        chat_template=load_chat_templates(folder, config),
        model_max_length=max_length,
        padding_side=padding_side if padding_side in ("left", "right") else "right",
        folder=folder,
    )


def load_backend(
    folder: Path, config: dict, configured: dict, named_in_config: set[str], clean_up: bool
) -> tuple[TokenizersBackend | SentencePieceBackend, dict[str, str | None], list[str]]:
    """The backend of a folder, its named special tokens, and T5 sentinel tokens (SentencePiece only).

    Prefers ``tokenizer.json``, whose post-processor alone decides which
    special tokens encoding adds (transformers ignores ``add_bos_token``
    then); else a SentencePiece ``.model``; else ``vocab.txt`` (BERT
    WordPiece) or ``vocab.json`` + ``merges.txt`` (GPT-2 byte-level BPE).
    """
    sentencepiece_file = next((folder / name for name in SENTENCEPIECE_FILES if (folder / name).is_file()), None)
    if sentencepiece_file is None:
        sentencepiece_file = next(iter(sorted(folder.glob("*.model"))), None)

    if (folder / "tokenizer.json").is_file():
        try:
            rust_tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as error:  # the Rust loader raises a bare Exception
            raise ValueError(f"cannot read {folder / 'tokenizer.json'}: {error}") from error
        return TokenizersBackend(rust_tokenizer, clean_up), configured, []
    if sentencepiece_file is not None:
        return sentencepiece_backend(sentencepiece_file, config, configured, named_in_config, clean_up)
    if (folder / "vocab.txt").is_file():
        special = {
            name: configured[name] if name in named_in_config else WORDPIECE_DEFAULTS.get(name)
            for name in SPECIAL_TOKEN_NAMES
        }
        return TokenizersBackend(wordpiece_tokenizer(folder / "vocab.txt", config, special), clean_up), special, []
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        special = {
            name: configured[name] if name in named_in_config else GPT2_DEFAULTS.get(name)
            for name in SPECIAL_TOKEN_NAMES
        }
        rust_tokenizer = byte_level_bpe_tokenizer(folder / "vocab.json", folder / "merges.txt", config)
        return TokenizersBackend(rust_tokenizer, clean_up), special, []
    raise FileNotFoundError(
        f"no tokenizer files in {folder}: looked for tokenizer.json, a SentencePiece model "
        f"({', '.join(SENTENCEPIECE_FILES)} or *.model), vocab.txt, and vocab.json + merges.txt"
    )


def sentencepiece_backend(
    model_file: Path, config: dict, configured: dict, named_in_config: set[str], clean_up: bool
) -> tuple[SentencePieceBackend, dict[str, str | None], list[str]]:
    """The SentencePiece backend, its named special tokens, and T5 sentinel tokens."""
    backend = SentencePieceBackend(
        model_file, legacy=bool(config.get("legacy", True)), clean_up_spaces=clean_up
    )
    for index, entry in (config.get("added_tokens_decoder") or {}).items():
        special_entry = isinstance(entry, dict) and entry.get("special", False)
        backend.add_tokens({int(index): token_content(entry)}, special=special_entry)
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
