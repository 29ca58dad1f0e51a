"""Tiny random models and synthetic data sets shared by the fine-tuning and distillation tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

import tokenizer_fixtures as fx

# Whole words of the tiny WordPiece vocabulary (others split into characters).
POSITIVE, NEGATIVE = ["brown", "data", "fox"], ["jumps", "model", "over"]
FILLER = ["quick", "streams", "text", "tokenizer", "the", "lazy", "dog"]
NAMES, PLACES = ["world", "brown"], ["data", "fox"]


def sentiment_rows(count: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        label = rng.choice(["positive", "negative"])
        words = rng.choices(FILLER, k=4) + [rng.choice(POSITIVE if label == "positive" else NEGATIVE)]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def write_tsv(path: Path, rows) -> Path:
    path.write_text("sentence\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in rows))
    return path


def tagged_sentences(count: int, seed: int) -> list[list[tuple[str, str]]]:
    rng = random.Random(seed)
    sentences = []
    for _ in range(count):
        words = [(word, "O") for word in rng.choices(FILLER, k=4)]
        name = [(rng.choice(NAMES), "B-PER")] + ([(rng.choice(NAMES), "I-PER")] if rng.random() < 0.5 else [])
        place = [(rng.choice(PLACES), "B-LOC")]
        position = rng.randrange(len(words) + 1)
        words[position:position] = name
        words.insert(rng.randrange(len(words) + 1), place[0])
        sentences.append(words)
    return sentences


def write_conll(path: Path, sentences) -> Path:
    lines = ["-DOCSTART- -X- O", ""]
    for sentence in sentences:
        lines += [f"{word} NN {tag}" for word, tag in sentence] + [""]
    path.write_text("\n".join(lines))
    return path


def build_models(root: Path) -> dict[str, Path]:
    """A tiny random BERT (WordPiece), Llama and GPT-2 (byte-level BPE), in HF layout."""
    import torch
    import transformers

    bert = fx.build_wordpiece_bert(root / "bert")
    vocab = len((bert / "vocab.txt").read_text().split("\n")) - 1
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(bert)
    llama = fx.build_byte_level_bpe(root / "llama")
    config = transformers.LlamaConfig(vocab_size=400, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                      bos_token_id=0, eos_token_id=0,
                                      # Wide enough an output layer for a frozen random base to become confident.
                                      initializer_range=0.3)
    transformers.LlamaForCausalLM(config).save_pretrained(llama)
    gpt2 = fx.build_byte_level_bpe(root / "gpt2")
    config = transformers.GPT2Config(vocab_size=400, n_embd=64, n_layer=2, n_head=4, n_positions=256,
                                     bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(config).save_pretrained(gpt2)
    return {"bert": bert, "llama": llama, "gpt2": gpt2}


def instruction_records(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        word = rng.choice(FILLER)
        records.append({"prompt": f"repeat {word}:", "completion": f" {word} {word}"})
    return records


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


