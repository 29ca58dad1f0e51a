"""The tokenizer of a GGUF file, built with `tokenizers` from the vocabulary in its metadata.

llama.cpp stores the tokenizer as metadata: ``tokenizer.ggml.model`` (the
algorithm), ``tokens``, ``scores``, ``token_type``, ``merges``, the special
token ids and ``tokenizer.chat_template``. Two algorithms are supported, built
the way transformers builds them from the same file, so ids agree:

- ``"gpt2"``: byte-level BPE with the file's merges (Llama 3, Qwen2, SmolLM),
  splitting text with the pattern ``tokenizer.ggml.pre`` names;
- ``"llama"``: SentencePiece-style BPE over ``▁``-marked text with byte
  fallback (Llama 2, Mistral, TinyLlama); merges come from the file or, when
  it has none, from the token scores (a piece's score ranks its merge).

Tokens of type control (3) become special tokens and user-defined ones (4)
added tokens, both matched whole in text.
"""

from __future__ import annotations

import json
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors

from ..tokenization.backends import TokenizersBackend, byte_level_table
from ..tokenization.tokenizer import Tokenizer
from .gguf import GGUFFile, open_gguf

TOKENIZER_MODELS = ("gpt2", "llama")
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp's token types (those of SentencePiece)

# Pre-tokenizer patterns by tokenizer.ggml.pre (the regexes of these models' own tokenizer.json).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLIT_PATTERNS = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "smaug-bpe", "falcon3", "dbrx"), _LLAMA3_SPLIT),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez"), _QWEN2_SPLIT),
}


def _byte_level_spelling(token: str) -> str:
    """A vocabulary entry in the byte-level alphabet: entries already spelled in it
    stay, others (written as plain UTF-8 by some converters) are re-spelled."""
    table = byte_level_table()
    if all(char in table for char in token):
        return token
    alphabet = {byte: char for char, byte in table.items()}
    return "".join(alphabet[byte] for byte in token.encode("utf-8"))


def merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """BPE merges implied by a scored vocabulary: every split of a token into two
    vocabulary tokens, best score of the merged token first (ties: longer left,
    then longer right piece; then the tokens' order), as transformers derives them."""
    ids = {token: index for index, token in enumerate(tokens)}
    ranked = []
    for token, score in zip(tokens, scores):
        pairs = [(token[:cut], token[cut:]) for cut in range(1, len(token))
                 if token[:cut] in ids and token[cut:] in ids]
        pairs.sort(key=lambda pair: (ids[pair[0]], ids[pair[1]]))
        ranked += [(score, left, right) for left, right in pairs]
    # A stable sort on the reversed key keeps equal entries in order, as Python's reverse=True does.
    ranked.sort(key=lambda entry: (entry[0], len(entry[1]), len(entry[2])), reverse=True)
    return [(left, right) for _, left, right in ranked]


def _gpt2_model(file: GGUFFile, tokens: list[str]) -> tokenizers.Tokenizer:
    vocab = {_byte_level_spelling(token): index for index, token in enumerate(tokens)}
    merges = [tuple(merge.split(" ", 1)) for merge in file.metadata.get("tokenizer.ggml.merges") or []]
    tokenizer = tokenizers.Tokenizer(models.BPE(vocab, merges, fuse_unk=False))
    pattern = SPLIT_PATTERNS.get(str(file.metadata.get("tokenizer.ggml.pre", "")))
    if pattern is None:  # GPT-2's own pattern ("gpt-2", "smollm", "default", ...)
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(tokenizers.Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _llama_model(file: GGUFFile, tokens: list[str], unk: str | None) -> tokenizers.Tokenizer:
    merges = file.metadata.get("tokenizer.ggml.merges")
    if merges:
        pairs = [tuple(merge.split(" ", 1)) for merge in merges]
    else:
        scores = file.metadata.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
        pairs = merges_from_scores(tokens, [float(score) for score in scores])
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = tokenizers.Tokenizer(models.BPE(vocab, pairs, unk_token=unk, fuse_unk=True, byte_fallback=True))
    prefix = bool(file.metadata.get("tokenizer.ggml.add_space_prefix", True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first" if prefix else "never", split=False
    )
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    tokenizer.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    return tokenizer


def _token(tokens: list[str], file: GGUFFile, name: str) -> str | None:
    index = file.metadata.get(f"tokenizer.ggml.{name}_token_id")
    return tokens[int(index)] if index is not None and 0 <= int(index) < len(tokens) else None


def build_gguf_tokenizer(file: GGUFFile) -> tuple[tokenizers.Tokenizer, dict]:
    """The `tokenizers` tokenizer of a GGUF file and its ``tokenizer_config.json`` settings.

    Args:
        file: An open GGUF file.

    Returns:
        ``(tokenizer, settings)``: ``settings`` holds ``bos_token``,
        ``eos_token``, ``unk_token``, ``pad_token``, ``add_bos_token``,
        ``add_eos_token``, ``chat_template`` and ``eos_token_ids`` (the end
        and end-of-turn ids generation stops on).
    """
    kind = str(file.metadata.get("tokenizer.ggml.model", ""))
    tokens = file.metadata.get("tokenizer.ggml.tokens")
    if kind not in TOKENIZER_MODELS or not tokens:
        raise ValueError(f"{file.path}: GGUF tokenizer {kind or 'none'!r} is not supported; supported: "
                         f"{', '.join(TOKENIZER_MODELS)}")
    tokens = [str(token) for token in tokens]
    special = {name: _token(tokens, file, name) for name in ("bos", "eos", "unk", "pad")}
    tokenizer = _gpt2_model(file, tokens) if kind == "gpt2" else _llama_model(file, tokens, special["unk"])
    types = file.metadata.get("tokenizer.ggml.token_type") or []
    spelled = (lambda token: token == _byte_level_spelling(token)) if kind == "gpt2" else (lambda token: True)
    # A control token outside the byte-level alphabet is a mislabel; adding it would grow the vocabulary.
    control = [token for token, kind_id in zip(tokens, types) if kind_id == _CONTROL and spelled(token)]
    tokenizer.add_special_tokens([tokenizers.AddedToken(token, special=True, normalized=False) for token in control])
    user = [token for token, kind_id in zip(tokens, types) if kind_id == _USER_DEFINED]
    tokenizer.add_tokens([tokenizers.AddedToken(token, special=False, normalized=False) for token in user])
    # Files of SentencePiece models often leave add_bos_token out; llama.cpp adds BOS for them.
    add_bos = bool(file.metadata.get("tokenizer.ggml.add_bos_token", kind == "llama")) and special["bos"] is not None
    add_eos = bool(file.metadata.get("tokenizer.ggml.add_eos_token", False)) and special["eos"] is not None
    single = ["$A"]
    if add_bos:
        single.insert(0, special["bos"])
    if add_eos:
        single.append(special["eos"])
    pair = single + ["$B" if part == "$A" else part for part in single]
    used = {token for token in (special["bos"], special["eos"]) if token in single}
    tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(token, tokens.index(token)) for token in used]
    )
    eos_ids = [int(file.metadata[key]) for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                                                   "tokenizer.ggml.eom_token_id") if key in file.metadata]
    template = file.metadata.get("tokenizer.chat_template")
    settings = {**{f"{name}_token": token for name, token in special.items()}, "add_bos_token": add_bos,
                "add_eos_token": add_eos, "chat_template": None if template is None else str(template),
                "eos_token_ids": list(dict.fromkeys(eos_ids))}
    return tokenizer, settings


def _max_length(file: GGUFFile) -> int | None:
    value = file.metadata.get(f"{file.architecture}.context_length")
    return int(value) if value is not None else None


def load_gguf_tokenizer(path: str | Path) -> Tokenizer:
    """This project's `Tokenizer` for a GGUF file, wrapped as a ``tokenizer.json`` one is.

    Args:
        path: The ``.gguf`` file.

    Returns:
        The tokenizer, with the file's chat template and end tokens.
    """
    file = open_gguf(path)
    rust_tokenizer, settings = build_gguf_tokenizer(file)
    return Tokenizer(
        TokenizersBackend(rust_tokenizer, clean_up_spaces=False),
        {name: settings.get(f"{name}_token") for name in ("bos", "eos", "unk", "pad")},
        eos_token_ids=settings["eos_token_ids"],
        chat_template=settings["chat_template"],
        model_max_length=_max_length(file),
        folder=file.path.parent,
    )


def write_gguf_tokenizer(path: str | Path, folder: Path) -> None:
    """Write a GGUF file's tokenizer as ``tokenizer.json`` and ``tokenizer_config.json``
    (what `mlx_llm.model_files.loading.convert` puts beside the weights).

    Args:
        path: The ``.gguf`` file.
        folder: The output folder.
    """
    file = open_gguf(path)
    rust_tokenizer, settings = build_gguf_tokenizer(file)
    rust_tokenizer.save(str(folder / "tokenizer.json"))
    config = {key: value for key, value in settings.items() if key != "eos_token_ids" and value is not None}
    config.update({"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False})
    if (max_length := _max_length(file)) is not None:
        config["model_max_length"] = max_length
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                                  encoding="utf-8")
