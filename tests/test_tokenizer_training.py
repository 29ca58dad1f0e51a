"""train_tokenizer: SentencePiece training into a folder `Tokenizer.from_pretrained` loads."""

import random
import re
from pathlib import Path

import pytest

from mlx_llm.tokenization import Tokenizer
from mlx_llm.tokenizer_training import min_vocab_size, train_tokenizer

# Not in the training text: the emoji and CJK characters must come back through byte fallback.
ROUND_TRIP_TEXT = "Grüße aus München, naïve café! 世界 🙂\nSecond line  with  two spaces.\n\tTabbed."


def write_corpus(folder: Path, lines: int = 300, seed: int = 0) -> Path:
    """A small varied text (random words from syllables, some non-ASCII) in ``folder/corpus.txt``."""
    rng = random.Random(seed)
    syllables = ["ka", "to", "ri", "mu", "sen", "lo", "ve", "dra", "qui", "zor", "pel", "an", "ü", "ß", "é", "ça"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(400)]
    text = "\n".join(
        " ".join(rng.choice(words) for _ in range(rng.randint(4, 14))) + rng.choice([".", "!", "?"])
        for _ in range(lines)
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "corpus.txt"
    path.write_text(text + "\n", encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_corpus(tmp_path / "text")


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_round_trip_and_gpt_special_ids(corpus, tmp_path, model_type):
    out = train_tokenizer([corpus], 400, tmp_path / "tok", model_type=model_type, num_threads=1)
    assert out == tmp_path / "tok"
    assert {path.name for path in out.iterdir()} == {
        "tokenizer.model",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
    tokenizer = Tokenizer.from_pretrained(out)
    assert tokenizer.vocab_size == 400
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (
        0,
        1,
        2,
        3,
    )
    assert tokenizer.all_special_ids == [0, 1, 2, 3]
    assert tokenizer.cls_token_id is None and tokenizer.mask_token_id is None

    ids = tokenizer.encode(ROUND_TRIP_TEXT)
    assert tokenizer.decode(ids) == ROUND_TRIP_TEXT
    # No bos/eos inserted: the data pipeline adds eos between documents itself.
    assert ids == tokenizer.encode(ROUND_TRIP_TEXT, add_special_tokens=False)
    assert not set(ids) & {0, 1, 2, 3}
    # The emoji is not in the corpus: it is spelled with byte pieces, not <unk>.
    assert any(re.fullmatch(r"<0x[0-9A-F]{2}>", tokenizer.id_to_token(index)) for index in ids)


def test_bert_special_tokens(corpus, tmp_path):
    out = train_tokenizer([corpus], 400, tmp_path / "bert", bert_special_tokens=True, num_threads=1)
    tokenizer = Tokenizer.from_pretrained(out)
    assert [tokenizer.id_to_token(index) for index in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert (
        tokenizer.pad_token_id,
        tokenizer.unk_token_id,
        tokenizer.cls_token_id,
        tokenizer.sep_token_id,
        tokenizer.mask_token_id,
    ) == (0, 1, 2, 3, 4)
    assert tokenizer.bos_token_id is None and tokenizer.eos_token_id is None
    assert tokenizer.all_special_ids == [0, 1, 2, 3, 4]
    ids = tokenizer.encode("kato [MASK] rimu")
    assert 4 in ids and ids[0] != 2 and ids[-1] != 3
    assert tokenizer.decode(tokenizer.encode(ROUND_TRIP_TEXT)) == ROUND_TRIP_TEXT


def test_training_is_deterministic(corpus, tmp_path):
    first = train_tokenizer([corpus], 400, tmp_path / "a", model_type="unigram", num_threads=1)
    second = train_tokenizer([corpus.parent], 400, tmp_path / "b", model_type="unigram", num_threads=1)
    assert (first / "tokenizer.model").read_bytes() == (second / "tokenizer.model").read_bytes()


def test_without_byte_fallback_unknown_characters_become_unk(corpus, tmp_path):
    out = train_tokenizer([corpus], 100, tmp_path / "tok", byte_fallback=False, num_threads=1)
    tokenizer = Tokenizer.from_pretrained(out)
    assert tokenizer.token_to_id("<0x41>") is None
    assert tokenizer.unk_token_id in tokenizer.encode("kato 🙂")


def test_vocab_too_large_names_the_maximum(corpus, tmp_path):
    with pytest.raises(ValueError, match=r"vocab_size=50000 \(--vocab-size\) is too large") as error:
        train_tokenizer([corpus], 50_000, tmp_path / "tok", model_type="unigram", num_threads=1)
    maximum = int(re.search(r"vocab_size <= (\d+)", str(error.value)).group(1))
    assert not (tmp_path / "tok").exists()
    assert list(tmp_path.iterdir()) == [corpus.parent]  # no staging folder left behind
    # The reported maximum is one that works.
    out = train_tokenizer([corpus], maximum, tmp_path / "tok", model_type="unigram", num_threads=1)
    assert Tokenizer.from_pretrained(out).vocab_size == maximum


@pytest.mark.parametrize("vocab_size", [50, 262])
def test_vocab_too_small(corpus, tmp_path, vocab_size):
    # 50 is below the 260 fixed pieces; 262 leaves no room for the corpus' characters.
    with pytest.raises(ValueError, match=rf"vocab_size={vocab_size} \(--vocab-size\) is too small"):
        train_tokenizer([corpus], vocab_size, tmp_path / "tok", num_threads=1)
    assert not (tmp_path / "tok").exists()


@pytest.mark.parametrize("bert", [False, True])
def test_min_vocab_size_is_the_real_bound(tmp_path, bert):
    # A one-character corpus needs the fewest pieces: the minimum trains, one less is refused up front.
    text = tmp_path / "a.txt"
    text.write_text("a", encoding="utf-8")
    minimum = min_vocab_size(bert_special_tokens=bert)
    assert minimum == (263 if bert else 262)
    with pytest.raises(ValueError, match=rf"pass vocab_size >= {minimum} "):
        train_tokenizer([text], minimum - 1, tmp_path / "small", bert_special_tokens=bert, num_threads=1)
    out = train_tokenizer([text], minimum, tmp_path / "tok", bert_special_tokens=bert, num_threads=1)
    assert Tokenizer.from_pretrained(out).vocab_size == minimum


def test_empty_or_missing_input(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="the corpus is empty"):
        train_tokenizer([empty], 400, tmp_path / "tok")
    with pytest.raises(ValueError, match="no inputs"):
        train_tokenizer([], 400, tmp_path / "tok")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        train_tokenizer([tmp_path / "missing.txt"], 400, tmp_path / "tok")
    assert not (tmp_path / "tok").exists()


def test_unknown_model_type_and_existing_output(corpus, tmp_path):
    with pytest.raises(ValueError, match="model_type must be one of"):
        train_tokenizer([corpus], 400, tmp_path / "tok", model_type="wordpiece")
    out = train_tokenizer([corpus], 400, tmp_path / "tok", num_threads=1)
    with pytest.raises(FileExistsError, match="overwrite"):
        train_tokenizer([corpus], 400, out, num_threads=1)
    train_tokenizer([corpus], 350, out, overwrite=True, num_threads=1)
    assert Tokenizer.from_pretrained(out).vocab_size == 350
