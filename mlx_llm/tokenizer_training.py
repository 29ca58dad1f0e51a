"""Train a SentencePiece tokenizer on local text, saved so `Tokenizer.from_pretrained` loads it.

`train_tokenizer` writes a Hugging Face-layout folder: ``tokenizer.model``,
``tokenizer_config.json`` and ``special_tokens_map.json``. Two layouts of
special tokens:

* GPT-style (default): ``<unk>`` = 0, ``<s>`` = 1 (bos), ``</s>`` = 2 (eos),
  ``<pad>`` = 3. Encoding adds no bos/eos (``add_bos_token`` and
  ``add_eos_token`` are false): the data pipeline puts eos between documents.
* BERT-style (``bert_special_tokens=True``): ``[PAD]`` = 0, ``[UNK]`` = 1,
  ``[CLS]`` = 2, ``[SEP]`` = 3, ``[MASK]`` = 4 (the last three as control
  symbols); no bos/eos; `BertPretrainingBatches` lays out ``[CLS] A [SEP] B [SEP]``.

Text is not normalized (SentencePiece's ``identity`` rule, spaces kept as
they are), and with byte fallback (the default) characters outside the
vocabulary become ``<0xAB>`` byte pieces, so any UTF-8 text decodes back to
itself (up to a leading space, which SentencePiece's dummy prefix absorbs).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import sentencepiece

from .data.documents import PathLike, read_documents
from .model_files.hub import atomic_output_dir, write_json

MODEL_TYPES = ("bpe", "unigram")
GPT_SPECIAL_TOKENS = {"unk": "<unk>", "bos": "<s>", "eos": "</s>", "pad": "<pad>"}
BERT_SPECIAL_TOKENS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
_BYTE_PIECES = 256
# Text pieces any corpus needs: the word-start mark "▁" (SentencePiece prefixes every
# chunk with it) and at least one character. Found by training on the text "a":
# 262 ids work and 261 fail for the GPT layout (263 / 262 for BERT's five specials).
_MIN_TEXT_PIECES = 2
# Longest training chunk in bytes; documents are cut at line breaks into chunks up to this size.
_MAX_CHUNK_BYTES = 8192
_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
_TOO_SMALL = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


def min_vocab_size(bert_special_tokens: bool = False, byte_fallback: bool = True) -> int:
    """The smallest vocabulary SentencePiece can train, whatever the corpus.

    Args:
        bert_special_tokens: BERT's five special tokens instead of GPT's four.
        byte_fallback: Count the 256 byte pieces.

    Returns:
        Special tokens + byte pieces + 2 (262 for GPT, 263 for BERT with byte
        fallback). A real corpus needs one more id per distinct character.
    """
    specials = len(BERT_SPECIAL_TOKENS if bert_special_tokens else GPT_SPECIAL_TOKENS)
    return specials + (_BYTE_PIECES if byte_fallback else 0) + _MIN_TEXT_PIECES


def _training_chunks(documents: Iterable[str], max_bytes: int = _MAX_CHUNK_BYTES) -> Iterator[str]:
    """Documents cut into pieces SentencePiece accepts as "sentences".

    Whole lines (line breaks kept, so the model learns them as text) are
    gathered up to ``max_bytes``; a longer line is cut into pieces of
    ``max_bytes // 4`` characters (at most ``max_bytes`` bytes of UTF-8).
    """
    for document in documents:
        chunk: list[str] = []
        size = 0
        for line in document.splitlines(keepends=True):
            line_size = len(line.encode("utf-8"))
            if chunk and size + line_size > max_bytes:
                yield "".join(chunk)
                chunk, size = [], 0
            if line_size > max_bytes:
                step = max_bytes // 4
                for start in range(0, len(line), step):
                    yield line[start : start + step]
                continue
            chunk.append(line)
            size += line_size
        if chunk:
            yield "".join(chunk)


def _reserved_pieces(tokens: dict[str, str], names: tuple[str, ...]) -> dict:
    """SentencePiece trainer options giving ``names`` the ids ``0, 1, ...`` in order:
    ``{name}_id`` and ``{name}_piece`` (the token ``tokens[name]``) for each."""
    options: dict = {}
    for index, name in enumerate(names):
        options.update({f"{name}_id": index, f"{name}_piece": tokens[name]})
    return options


def _special_token_layout(bert_special_tokens: bool) -> tuple[dict, dict[str, str]]:
    """SentencePiece trainer options for the special pieces, and the named tokens.

    BERT: ``[PAD]`` 0, ``[UNK]`` 1, then the control symbols ``[CLS]`` 2, ``[SEP]`` 3,
    ``[MASK]`` 4, and no BOS/EOS; GPT: ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, ``<pad>`` 3.
    """
    if bert_special_tokens:
        tokens = BERT_SPECIAL_TOKENS
        # Control symbols follow the reserved ids in order: [CLS] = 2, [SEP] = 3, [MASK] = 4.
        options = {**_reserved_pieces(tokens, ("pad", "unk")), "bos_id": -1, "eos_id": -1,
                   "control_symbols": [tokens["cls"], tokens["sep"], tokens["mask"]]}
    else:
        tokens = GPT_SPECIAL_TOKENS
        options = _reserved_pieces(tokens, ("unk", "bos", "eos", "pad"))
    return options, dict(tokens)


def _tokenizer_config(tokens: dict[str, str], bert_special_tokens: bool) -> dict:
    """``tokenizer_config.json`` for the trained model."""
    named = {f"{name}_token": tokens.get(name) for name in ("bos", "eos", "unk", "pad", "cls", "sep", "mask")}
    if not bert_special_tokens:
        named = {key: value for key, value in named.items() if value is not None}
    return {
        # transformers' LlamaTokenizer is a plain SentencePiece wrapper that honours the flags below.
        "tokenizer_class": "LlamaTokenizer",
        **named,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        "padding_side": "right",
    }


def train_tokenizer(
    inputs: Sequence[PathLike] | PathLike,
    vocab_size: int,
    out: PathLike,
    model_type: str = "bpe",
    bert_special_tokens: bool = False,
    byte_fallback: bool = True,
    overwrite: bool = False,
    character_coverage: float | None = None,
    max_training_chunks: int = 200_000,
    num_threads: int | None = None,
    seed: int = 0,
) -> Path:
    """Train a SentencePiece tokenizer on local text and save it as a model folder.

    Args:
        inputs: Text files, ``.jsonl`` files and folders, read with `read_documents`.
        vocab_size: Size of the vocabulary, special tokens and (with byte
            fallback) the 256 byte pieces included.
        out: The folder to write (atomically: nothing appears on failure).
        model_type: ``"bpe"`` or ``"unigram"``.
        bert_special_tokens: Use BERT's ``[PAD] [UNK] [CLS] [SEP] [MASK]``
            (ids 0-4) instead of GPT-style ``<unk> <s> </s> <pad>`` (ids 0-3).
        byte_fallback: Encode characters outside the vocabulary as UTF-8
            bytes (256 byte pieces) instead of ``<unk>``.
        overwrite: Replace an existing non-empty ``out``.
        character_coverage: Share of the corpus' characters that get their
            own piece; defaults to 0.9995 with byte fallback (rare characters
            become bytes) and 1.0 without (rare characters would become ``<unk>``).
        max_training_chunks: At most this many chunks (of up to 8 KiB) of
            text are sampled for training, to bound time and memory.
        num_threads: Training threads; defaults to ``min(4, cpu count)``.
        seed: Seed of SentencePiece's sampling.

    Returns:
        ``out`` as a ``Path``.

    Raises:
        ValueError: No inputs or no text, an unknown ``model_type``, or a
            ``vocab_size`` too small for the required pieces or too large for
            the corpus (the message gives the bound).
        FileExistsError: ``out`` exists and is not empty, without ``overwrite``.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    if not inputs:
        raise ValueError("train_tokenizer got no inputs; pass text files, .jsonl files or folders")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    special_options, tokens = _special_token_layout(bert_special_tokens)
    minimum = min_vocab_size(bert_special_tokens, byte_fallback)
    if not isinstance(vocab_size, int) or vocab_size < minimum:
        raise ValueError(
            f"vocab_size={vocab_size!r} (--vocab-size) is too small: {len(tokens)} special tokens"
            f"{f', {_BYTE_PIECES} byte-fallback pieces' if byte_fallback else ''} and at least "
            f"{_MIN_TEXT_PIECES} text pieces need {minimum} ids; pass vocab_size >= {minimum} (more for a real "
            "corpus: one id per distinct character, then the learned pieces)"
        )
    if character_coverage is None:
        character_coverage = 0.9995 if byte_fallback else 1.0
    if num_threads is None:
        num_threads = min(4, os.cpu_count() or 1)
    documents = read_documents(inputs)  # raises here for missing paths

    with atomic_output_dir(out, overwrite=overwrite) as staging:
        model = io.BytesIO()
        sentencepiece.set_random_generator_seed(seed)
        try:
            sentencepiece.SentencePieceTrainer.train(
                sentence_iterator=_training_chunks(documents),
                model_writer=model,
                model_type=model_type,
                vocab_size=vocab_size,
                byte_fallback=byte_fallback,
                character_coverage=character_coverage,
                # Keep text as it is so that decoding gives it back exactly.
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                allow_whitespace_only_pieces=True,
                max_sentence_length=_MAX_CHUNK_BYTES,
                input_sentence_size=max_training_chunks,
                shuffle_input_sentence=True,
                num_threads=num_threads,
                minloglevel=2,
                **special_options,
            )
        except RuntimeError as error:
            raise _training_error(error, vocab_size) from None
        (staging / "tokenizer.model").write_bytes(model.getvalue())
        write_json(_tokenizer_config(tokens, bert_special_tokens), staging / "tokenizer_config.json")
        write_json(
            {f"{name}_token": token for name, token in tokens.items()},
            staging / "special_tokens_map.json",
        )
    return Path(out).expanduser()


def _training_error(error: RuntimeError, vocab_size: int) -> Exception:
    """A clear error for SentencePiece's trainer failures about the vocabulary size."""
    message = str(error)
    if match := _TOO_HIGH.search(message):
        return ValueError(
            f"vocab_size={vocab_size} (--vocab-size) is too large for this corpus: at most {match.group(2)} "
            f"distinct pieces can be learned from it; pass vocab_size <= {match.group(2)} or more text"
        )
    if match := _TOO_SMALL.search(message):
        return ValueError(
            f"vocab_size={vocab_size} (--vocab-size) is too small: the special tokens, byte pieces and the characters "
            f"this corpus needs take {match.group(2)} ids; pass vocab_size >= {match.group(2)} (or, from "
            "Python, a lower character_coverage)"
        )
    return ValueError(f"SentencePiece could not train a tokenizer: {message}")
