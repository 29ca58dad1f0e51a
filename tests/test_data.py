"""Pretraining data: documents, token files, causal LM batches, BERT pretraining batches."""

import json
import math
import os
import random
from pathlib import Path
from types import SimpleNamespace

import mlx.core as mx
import numpy as np
import pytest

from mlx_llm.data import (
    BertPretrainingBatches,
    CausalLMBatches,
    TokenFile,
    read_documents,
    split_documents,
    split_sentences,
    split_tokens,
    tokenize_corpus,
    tokenize_documents_for_bert,
)
from mlx_llm.tokenization import Tokenizer
from mlx_llm.tokenizer_training import train_tokenizer


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def random_text(seed: int, lines: int = 200) -> str:
    rng = random.Random(seed)
    syllables = ["ka", "to", "ri", "mu", "sen", "lo", "ve", "dra", "qui", "zor", "pel", "an", "ü", "é"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(300)]
    return "\n".join(
        " ".join(rng.choice(words) for _ in range(rng.randint(3, 10))).capitalize() + "." for _ in range(lines)
    )


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict[str, Tokenizer]:
    """A GPT-style and a BERT-style tokenizer trained once on generated text."""
    root = tmp_path_factory.mktemp("tokenizers")
    corpus = write(root / "corpus.txt", random_text(0, lines=300))
    gpt = train_tokenizer([corpus], 400, root / "gpt", num_threads=1)
    bert = train_tokenizer([corpus], 400, root / "bert", bert_special_tokens=True, num_threads=1)
    return {"gpt": Tokenizer.from_pretrained(gpt), "bert": Tokenizer.from_pretrained(bert)}


# ---------------------------------------------------------------------------
# read_documents and split_sentences
# ---------------------------------------------------------------------------


def test_text_file_is_one_document_unless_split_on_blank_lines(tmp_path):
    text = "First Citizen:\nBefore we proceed.\n\nAll:\nSpeak, speak.\n \n\n\nEnd.\n"
    path = write(tmp_path / "play.txt", text)
    assert list(read_documents([path])) == [text]
    assert list(read_documents(path)) == [text]  # a single path works too
    assert list(read_documents([path], split_on_blank_lines=True)) == [
        "First Citizen:\nBefore we proceed.",
        "All:\nSpeak, speak.",
        "End.\n",
    ]


def test_folder_is_read_recursively_in_sorted_order(tmp_path):
    write(tmp_path / "corpus" / "b.txt", "bee")
    write(tmp_path / "corpus" / "a" / "z.md", "zed")
    write(tmp_path / "corpus" / "a" / "docs.jsonl", '{"text": "one"}\n\n{"text": "two", "id": 2}\n')
    write(tmp_path / "corpus" / "c.csv", "not,read")
    write(tmp_path / "corpus" / ".hidden" / "x.txt", "hidden")
    write(tmp_path / "corpus" / ".notes.txt", "hidden too")
    write(tmp_path / "corpus" / "blank.txt", "  \n\n")
    write(tmp_path / "corpus" / "README.md", "about this folder")
    # Only .txt and .jsonl files: a folder's README.md and z.md are not text to learn.
    assert list(read_documents([tmp_path / "corpus"])) == ["one", "two", "bee"]
    # Explicit files keep the given order and are read whatever their suffix.
    assert list(read_documents([tmp_path / "corpus" / "c.csv", tmp_path / "corpus" / "b.txt"])) == [
        "not,read",
        "bee",
    ]


@pytest.mark.parametrize(
    "bad_line, message",
    [('{"content": "x"}', r'no "text" string field \(found keys \[\'content\'\]\)'), ("{oops", "not valid JSON")],
)
def test_bad_jsonl_line_names_file_and_line(tmp_path, bad_line, message):
    path = write(tmp_path / "docs.jsonl", '{"text": "fine"}\n\n' + bad_line + "\n")
    with pytest.raises(ValueError, match=rf"docs\.jsonl:3: {message}"):
        list(read_documents([path]))


def test_missing_path_and_empty_corpus(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        read_documents([tmp_path / "nowhere.txt"])  # raises on the call, before iteration
    (tmp_path / "empty").mkdir()
    write(tmp_path / "empty" / "ignored.csv", "text")
    with pytest.raises(ValueError, match=r"corpus folder .*empty holds no \.txt or \.jsonl files"):
        read_documents([tmp_path / "empty"])
    write(tmp_path / "blank.jsonl", '{"text": "  "}\n')
    with pytest.raises(ValueError, match="the corpus is empty"):
        list(read_documents([tmp_path / "blank.jsonl"]))


def test_non_utf8_file_is_named(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt is not UTF-8"):
        list(read_documents([path]))


def test_split_sentences_rules():
    text = (
        'Mr. Smith went to Washington. He said: "Hi!" Then e.g. this... and that.\n'
        "A line without end\n\n  J. R. R. Tolkien wrote books? Yes. 日本語です。次の文。"
    )
    assert split_sentences(text) == [
        "Mr. Smith went to Washington.",
        'He said: "Hi!"',
        "Then e.g. this... and that.",
        "A line without end",
        "J. R. R. Tolkien wrote books?",
        "Yes.",
        "日本語です。",
        "次の文。",
    ]
    assert split_sentences(" \n\n") == []


# ---------------------------------------------------------------------------
# tokenize_corpus and split_tokens
# ---------------------------------------------------------------------------


def test_tokenize_corpus_joins_documents_with_eos(tmp_path, tokenizers):
    tokenizer = tokenizers["gpt"]
    write(tmp_path / "corpus" / "a.txt", random_text(1, lines=20))
    write(tmp_path / "corpus" / "b.jsonl", '{"text": "Kato rimu."}\n{"text": "Zor ü pel!"}\n')
    documents = list(read_documents([tmp_path / "corpus"]))
    assert len(documents) == 3

    token_file = tokenize_corpus([tmp_path / "corpus"], tokenizer, tmp_path / "cache")
    expected: list[int] = []
    starts = []
    for document in documents:
        if expected:
            expected.append(tokenizer.eos_token_id)
        starts.append(len(expected))
        expected += tokenizer.encode(document)
    assert token_file.tokens.dtype == np.uint16
    assert token_file.tokens.tolist() == expected
    assert token_file.num_tokens == len(expected)
    assert token_file.document_offsets.tolist() == starts
    assert isinstance(token_file.tokens, np.memmap)
    with pytest.raises(ValueError):
        token_file.tokens[0] = 1  # read-only
    metadata = json.loads(token_file.metadata_path.read_text())
    assert metadata["dtype"] == "uint16" and metadata["num_tokens"] == len(expected)
    assert TokenFile.open(token_file.path).tokens.tolist() == expected

    without_eos = tokenize_corpus([tmp_path / "corpus"], tokenizer, tmp_path / "cache", eos_between_documents=False)
    assert without_eos.path != token_file.path
    assert without_eos.tokens.tolist() == [i for d in documents for i in tokenizer.encode(d)]


def test_tokenize_corpus_cache_is_reused_and_invalidated(tmp_path, tokenizers):
    tokenizer = tokenizers["gpt"]
    source = write(tmp_path / "a.txt", "Kato rimu sen lo.")
    first = tokenize_corpus([source], tokenizer, tmp_path / "cache")
    mtimes = (first.path.stat().st_mtime_ns, first.metadata_path.stat().st_mtime_ns)
    again = tokenize_corpus([source], tokenizer, tmp_path / "cache")
    assert again.path == first.path
    assert (again.path.stat().st_mtime_ns, again.metadata_path.stat().st_mtime_ns) == mtimes

    write(source, "Kato rimu sen lo ve.")
    changed = tokenize_corpus([source], tokenizer, tmp_path / "cache")
    assert changed.path != first.path
    assert changed.tokens.tolist() == tokenizer.encode("Kato rimu sen lo ve.")
    # No temporary files are left in the cache.
    assert all(not name.startswith(".") for name in os.listdir(tmp_path / "cache"))


def test_tokenize_corpus_needs_eos(tmp_path, tokenizers):
    source = write(tmp_path / "a.txt", "Kato rimu.")
    with pytest.raises(ValueError, match="eos_between_documents=False"):
        tokenize_corpus([source], tokenizers["bert"], tmp_path / "cache")
    assert tokenize_corpus([source], tokenizers["bert"], tmp_path / "cache", eos_between_documents=False).num_tokens


def test_split_tokens_takes_the_last_fraction_without_copying():
    tokens = np.arange(1000, dtype=np.uint16)
    train, validation = split_tokens(tokens, 0.1)
    assert train.tolist() == list(range(900)) and validation.tolist() == list(range(900, 1000))
    assert np.shares_memory(train, tokens) and np.shares_memory(validation, tokens)
    assert len(split_tokens(tokens, 0.0)[1]) == 0
    with pytest.raises(ValueError, match="validation_fraction"):
        split_tokens(tokens, 1.0)


# ---------------------------------------------------------------------------
# CausalLMBatches
# ---------------------------------------------------------------------------


def block_starts(inputs: mx.array, seq_len: int) -> list[int]:
    """Block index of each row, for a token stream where token i == i."""
    first = np.array(inputs)[:, 0]
    assert np.all(first % seq_len == 0)
    return (first // seq_len).tolist()


def test_causal_batches_shapes_targets_and_epochs():
    seq_len, batch_size = 8, 4
    tokens = np.arange(8 * 24 + 1, dtype=np.uint16)  # exactly 24 blocks: 6 batches per epoch
    batches = CausalLMBatches(tokens, seq_len, batch_size, seed=3)
    assert (batches.num_blocks, batches.batches_per_epoch) == (24, 6)

    epochs = []
    for _ in range(3):
        order = []
        for _ in range(batches.batches_per_epoch):
            inputs, targets = next(batches)
            assert inputs.shape == (batch_size, seq_len) and targets.shape == (batch_size, seq_len)
            assert inputs.dtype == mx.int32 and targets.dtype == mx.int32
            assert np.array_equal(np.array(targets), np.array(inputs) + 1)  # shifted by one
            order += block_starts(inputs, seq_len)
        assert sorted(order) == list(range(24))  # every block exactly once
        epochs.append(order)
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
    assert epochs[0] == np.random.default_rng(3).permutation(24).tolist()
    assert batches.epoch == 3


def test_causal_batches_are_seeded_and_resumable():
    tokens = np.arange(8 * 30 + 5, dtype=np.uint32)
    reference = CausalLMBatches(tokens, 8, 4, seed=1)
    stream = [np.array(next(reference)[0]) for _ in range(20)]  # crosses two epoch boundaries (7 per epoch)
    same = CausalLMBatches(tokens, 8, 4, seed=1)
    assert all(np.array_equal(np.array(next(same)[0]), expected) for expected in stream)
    other = CausalLMBatches(tokens, 8, 4, seed=2)
    assert not all(np.array_equal(np.array(next(other)[0]), expected) for expected in stream[:7])

    for k in (0, 3, 7, 12):
        run = CausalLMBatches(tokens, 8, 4, seed=1)
        for _ in range(k):
            next(run)
        saved = json.loads(json.dumps(run.state()))  # survives a checkpoint file
        resumed = CausalLMBatches(tokens, 8, 4, seed=1)
        resumed.restore(saved)
        for expected in stream[k : k + 8]:
            inputs, targets = next(resumed)
            assert np.array_equal(np.array(inputs), expected)
    with pytest.raises(ValueError, match="seed=1 but this iterator has 2"):
        CausalLMBatches(tokens, 8, 4, seed=2).restore(saved)


def test_causal_batches_evaluation_covers_all_blocks_in_order():
    tokens = np.arange(8 * 10 + 1, dtype=np.uint16)
    batches = CausalLMBatches(tokens, 8, 4)
    sizes, starts = [], []
    for inputs, targets in batches.evaluation_batches():
        sizes.append(inputs.shape[0])
        starts += block_starts(inputs, 8)
    assert sizes == [4, 4, 2] and starts == list(range(10))
    assert batches.state()["position"] == 0  # training position untouched


def test_causal_batches_errors():
    with pytest.raises(ValueError, match=r"has 8 tokens, but one block of seq_len=8 needs 9"):
        CausalLMBatches(np.arange(8), 8, 2)
    batches = CausalLMBatches(np.arange(8 * 3 + 1), 8, 4)  # 3 blocks, batch of 4
    with pytest.raises(ValueError, match="fewer than batch_size=4"):
        next(batches)
    assert sum(inputs.shape[0] for inputs, _ in batches.evaluation_batches()) == 3
    with pytest.raises(ValueError, match="seq_len must be a positive integer"):
        CausalLMBatches(np.arange(100), 0, 2)


# ---------------------------------------------------------------------------
# BertPretrainingBatches
# ---------------------------------------------------------------------------

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIAL = [PAD, UNK, CLS, SEP, MASK]


def stub_tokenizer(vocab_size: int = 20_000) -> SimpleNamespace:
    """What BertPretrainingBatches reads from a tokenizer, with BERT-style special ids."""
    return SimpleNamespace(
        cls_token_id=CLS,
        sep_token_id=SEP,
        mask_token_id=MASK,
        pad_token_id=PAD,
        all_special_ids=SPECIAL,
        vocab_size=vocab_size,
    )


def synthetic_documents(num_documents: int, seed: int = 0, sentences: tuple = (1, 10)) -> list:
    """Documents of sentences whose ids are unique over the corpus (5, 6, 7, ...), so any
    run of ids tells where in which document it came from."""
    rng = random.Random(seed)
    next_id = len(SPECIAL)
    documents = []
    for _ in range(num_documents):
        document = []
        for _ in range(rng.randint(*sentences)):
            length = rng.randint(2, 9)
            document.append(list(range(next_id, next_id + length)))
            next_id += length
        documents.append(document)
    return documents


def unmasked(batch: dict) -> np.ndarray:
    """The ids before masking: labels where a token was chosen, else the input."""
    labels = np.array(batch["mlm_labels"])
    return np.where(labels != -100, labels, np.array(batch["input_ids"]))


def segments(row_ids: np.ndarray, types: np.ndarray, attention: np.ndarray) -> tuple[list, list]:
    """Check the [CLS] A [SEP] B [SEP] layout of one row; return (A, B)."""
    length = int(attention.sum())
    assert np.all(attention[:length] == 1) and np.all(attention[length:] == 0)
    assert np.all(row_ids[length:] == PAD) and np.all(types[length:] == 0)
    sep_positions = np.flatnonzero(row_ids[:length] == SEP).tolist()
    assert row_ids[0] == CLS and len(sep_positions) == 2 and sep_positions[1] == length - 1
    first_sep = sep_positions[0]
    assert np.all(types[: first_sep + 1] == 0) and np.all(types[first_sep + 1 : length] == 1)
    return row_ids[1:first_sep].tolist(), row_ids[first_sep + 1 : length - 1].tolist()


def locate(documents: list, token: int) -> tuple[int, list[int]]:
    """The document holding ``token`` and that document's ids, flattened."""
    for index, document in enumerate(documents):
        flat = [i for sentence in document for i in sentence]
        if flat[0] <= token <= flat[-1]:
            return index, flat
    raise AssertionError(f"token {token} is in no document")


def collect(batches: BertPretrainingBatches, count: int) -> dict[str, np.ndarray]:
    collected: dict[str, list] = {}
    for _ in range(count):
        batch = next(batches)
        collected.setdefault("original", []).append(unmasked(batch))
        for key, value in batch.items():
            collected.setdefault(key, []).append(np.array(value))
    return {key: np.concatenate(value) for key, value in collected.items()}


def masking_rates(data: dict) -> tuple[int, float, float, float, float]:
    eligible = (data["attention_mask"] == 1) & ~np.isin(data["original"], SPECIAL)
    chosen = data["mlm_labels"] != -100
    inputs, original = data["input_ids"], data["original"]
    masked = chosen & (inputs == MASK)
    kept = chosen & (inputs == original)
    replaced = chosen & ~masked & ~kept
    n_eligible, n_chosen = int(eligible.sum()), int(chosen.sum())
    return (
        n_eligible,
        n_chosen / n_eligible,
        masked.sum() / n_chosen,
        replaced.sum() / n_chosen,
        kept.sum() / n_chosen,
    )


def within(observed: float, p: float, n: int, sigmas: float = 4.0) -> bool:
    return abs(observed - p) <= sigmas * math.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module")
def documents() -> list:
    return synthetic_documents(150)


def test_bert_masking_statistics(documents):
    batches = BertPretrainingBatches(documents, stub_tokenizer(), max_length=32, batch_size=16, seed=0)
    data = collect(batches, 3 * batches.batches_per_epoch)
    n_eligible, chosen_rate, masked, replaced, kept = masking_rates(data)
    n_chosen = round(chosen_rate * n_eligible)
    assert n_eligible > 10_000
    assert within(chosen_rate, 0.15, n_eligible)
    assert within(masked, 0.8, n_chosen) and within(replaced, 0.1, n_chosen) and within(kept, 0.1, n_chosen)

    chosen = data["mlm_labels"] != -100
    # Special tokens and padding are never chosen; labels hold the original ids there only.
    assert not np.isin(data["original"][chosen], SPECIAL).any()
    assert np.all(data["mlm_labels"][~chosen] == -100)
    assert np.all(data["mlm_labels"][chosen] == data["original"][chosen])
    assert np.all(data["mlm_labels"][data["attention_mask"] == 0] == -100)
    # Random replacements come from the non-special vocabulary.
    replaced_ids = data["input_ids"][chosen & (data["input_ids"] != MASK)]
    assert not np.isin(replaced_ids, SPECIAL).any() and replaced_ids.max() < 20_000


def test_bert_masking_probabilities_are_configurable(documents):
    batches = BertPretrainingBatches(
        documents,
        stub_tokenizer(),
        max_length=32,
        batch_size=16,
        mask_probability=0.3,
        mask_token_fraction=0.5,
        random_token_fraction=0.5,
    )
    n_eligible, chosen_rate, masked, replaced, kept = masking_rates(collect(batches, 20))
    assert within(chosen_rate, 0.3, n_eligible)
    assert within(masked, 0.5, round(chosen_rate * n_eligible))
    assert kept < 0.01  # only when a random id happens to equal the original

    only_mask = BertPretrainingBatches(
        documents, stub_tokenizer(), 32, 16, mask_token_fraction=1.0, random_token_fraction=0.0
    )
    _, _, masked, _, _ = masking_rates(collect(only_mask, 3))
    assert masked == 1.0


def test_bert_masking_is_fresh_each_epoch(documents):
    batches = BertPretrainingBatches(documents, stub_tokenizer(), 32, 16)
    epochs = []
    for _ in range(2):
        data = collect(batches, batches.batches_per_epoch)
        epochs.append({row.tobytes(): labels for row, labels in zip(data["original"], data["mlm_labels"])})
    # The same pairs come back (all but the few left over at the end of each epoch's order)...
    shared = epochs[0].keys() & epochs[1].keys()
    assert len(shared) >= len(epochs[0]) - 2 * 16
    # ...masked differently.
    assert sum(not np.array_equal(epochs[0][key], epochs[1][key]) for key in shared) > len(shared) // 2


@pytest.mark.parametrize("next_sentence_probability", [0.5, 0.2])
def test_bert_next_sentence_pairs(documents, next_sentence_probability):
    batches = BertPretrainingBatches(
        documents,
        stub_tokenizer(),
        max_length=24,
        batch_size=8,
        seed=5,
        next_sentence_probability=next_sentence_probability,
    )
    assert batches.num_pairs > 200
    data = collect(batches, batches.batches_per_epoch)
    labels = data["next_sentence_label"]
    assert set(labels.tolist()) == {0, 1}
    assert within(float(np.mean(labels == 0)), next_sentence_probability, len(labels))
    for row in range(len(labels)):
        first, second = segments(data["original"][row], data["token_type_ids"][row], data["attention_mask"][row])
        assert first and second and len(first) + len(second) + 3 <= 24
        document_a, flat_a = locate(documents, first[0])
        start = flat_a.index(first[0])
        assert flat_a[start : start + len(first)] == first  # A is consecutive text of one document
        document_b, flat_b = locate(documents, second[0])
        start_b = flat_b.index(second[0])
        assert flat_b[start_b : start_b + len(second)] == second
        if labels[row] == 0:  # B continues A right where A ends
            assert document_b == document_a and start_b == start + len(first)
        else:
            assert document_b != document_a


def test_bert_random_next_puts_unused_sentences_back(documents):
    # Every B random, no truncation: sentences after A that B did not use start the next pair,
    # so the A segments cover every sentence but each document's last.
    batches = BertPretrainingBatches(
        documents, stub_tokenizer(), max_length=128, batch_size=8, next_sentence_probability=0.0, mask_probability=0.0
    )
    covered = set()
    for batch in batches.evaluation_batches():
        assert np.all(np.array(batch["next_sentence_label"]) == 1)
        for ids, types, attention in zip(
            np.array(batch["input_ids"]), np.array(batch["token_type_ids"]), np.array(batch["attention_mask"])
        ):
            covered.update(segments(ids, types, attention)[0])
    expected = {i for document in documents if len(document) >= 2 for sentence in document[:-1] for i in sentence}
    assert covered == expected


def test_bert_truncation_trims_the_longer_segment():
    long_sentence, short_sentence = list(range(5, 55)), list(range(55, 61))
    documents = [[long_sentence, short_sentence]]
    batches = BertPretrainingBatches(
        documents,
        stub_tokenizer(),
        max_length=20,
        batch_size=1,
        next_sentence_probability=1.0,
        mask_probability=0.0,
        short_sequence_probability=0.0,
    )
    batch = next(batches)
    first, second = segments(
        np.array(batch["input_ids"])[0], np.array(batch["token_type_ids"])[0], np.array(batch["attention_mask"])[0]
    )
    # 17 ids fit: the 50-id A loses its start down to 11, the 6-id B stays whole.
    assert first == long_sentence[-11:] and second == short_sentence
    assert batch["input_ids"].shape == (1, 20)


def test_bert_batches_are_seeded_and_resumable(documents):
    def make(seed=0):
        return BertPretrainingBatches(documents, stub_tokenizer(), 32, 16, seed=seed)

    reference = make()
    per_epoch = reference.batches_per_epoch
    stream = [{key: np.array(value) for key, value in next(reference).items()} for _ in range(per_epoch + 3)]
    for k in (2, per_epoch - 1, per_epoch + 1):
        run = make()
        for _ in range(k):
            next(run)
        resumed = make()
        resumed.restore(json.loads(json.dumps(run.state())))
        for expected in stream[k:]:
            batch = next(resumed)
            assert all(np.array_equal(np.array(batch[key]), expected[key]) for key in expected)
    other = next(make(seed=1))
    assert not np.array_equal(np.array(other["input_ids"]), stream[0]["input_ids"])
    with pytest.raises(ValueError, match="max_length"):
        BertPretrainingBatches(documents, stub_tokenizer(), 24, 16).restore(make().state())


def test_bert_evaluation_batches(documents):
    batches = BertPretrainingBatches(documents, stub_tokenizer(), 32, 16)
    sizes = [batch["input_ids"].shape[0] for batch in batches.evaluation_batches()]
    assert sum(sizes) == batches.num_pairs and sizes[-1] == batches.num_pairs - 16 * (len(sizes) - 1)
    first = [np.array(batch["input_ids"]) for batch in batches.evaluation_batches()]
    again = [np.array(batch["input_ids"]) for batch in batches.evaluation_batches()]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert batches.state()["position"] == 0


def test_bert_errors(documents):
    one_sentence_each = [[[5, 6, 7]], [[8, 9]]]
    with pytest.raises(ValueError, match="no document of the 2 has 2 or more sentences"):
        BertPretrainingBatches(one_sentence_each, stub_tokenizer(), 32, 2)
    with pytest.raises(ValueError, match=r"only one.*--split-on-blank-lines.*--nsp-probability 1"):
        BertPretrainingBatches([[[5, 6], [7, 8]]], stub_tokenizer(), 32, 2)
    # One document is fine when every B is the actual continuation.
    assert BertPretrainingBatches([[[5, 6], [7, 8]]], stub_tokenizer(), 32, 1, next_sentence_probability=1.0).num_pairs
    no_mask = stub_tokenizer()
    no_mask.mask_token_id = None
    with pytest.raises(ValueError, match=r"\[MASK\].*bert_special_tokens=True"):
        BertPretrainingBatches(documents, no_mask, 32, 2)
    with pytest.raises(ValueError, match="mask_probability must be in"):
        BertPretrainingBatches(documents, stub_tokenizer(), 32, 2, mask_probability=1.5)
    with pytest.raises(ValueError, match="max_length must be at least 5"):
        BertPretrainingBatches(documents, stub_tokenizer(), 4, 2)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        next(BertPretrainingBatches(documents[:3], stub_tokenizer(), 512, 64))


def test_bert_from_text_files(tmp_path, tokenizers):
    tokenizer = tokenizers["bert"]
    for index in range(4):
        write(tmp_path / "corpus" / f"doc{index}.txt", random_text(10 + index, lines=12))
    documents = tokenize_documents_for_bert([tmp_path / "corpus"], tokenizer)
    texts = list(read_documents([tmp_path / "corpus"]))
    assert len(documents) == 4
    assert documents[0] == [tokenizer.encode(sentence) for sentence in split_sentences(texts[0])]
    train, validation = split_documents(documents, 0.25)
    assert train == documents[:3] and validation == documents[3:]
    batches = BertPretrainingBatches(documents, tokenizer, max_length=48, batch_size=4, seed=0)
    batch = next(batches)
    assert {key: tuple(value.shape) for key, value in batch.items()} == {
        "input_ids": (4, 48),
        "token_type_ids": (4, 48),
        "attention_mask": (4, 48),
        "mlm_labels": (4, 48),
        "next_sentence_label": (4,),
    }
    assert all(value.dtype == mx.int32 for value in batch.values())
    row = unmasked(batch)[0]
    length = int(np.array(batch["attention_mask"])[0].sum())
    assert row[0] == tokenizer.cls_token_id and row[length - 1] == tokenizer.sep_token_id
    assert tokenizer.decode(row[:length].tolist(), skip_special_tokens=False).startswith("[CLS]")
