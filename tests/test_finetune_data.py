"""Fine-tuning data: readers, label sets, encoding with real tiny tokenizers, and batch sources."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tokenizer_fixtures as fx

from mlx_llm.data import (
    ClassificationBatches,
    ClassificationExample,
    InstructionBatches,
    InstructionExample,
    LabelSet,
    TaggingBatches,
    TaggingExample,
    encode_classification,
    encode_instructions,
    encode_tagging,
    read_classification,
    read_conll,
    read_instructions,
)
from mlx_llm.tokenization import Tokenizer

pytest.importorskip("transformers")  # the fixtures save tokenizers with transformers

CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("finetune_tokenizers")
    built = {
        "bert": fx.build_wordpiece_bert(root / "bert"),
        "gpt": fx.build_byte_level_bpe(root / "gpt"),
        "llama": fx.build_sentencepiece(root / "llama", "llama"),
    }
    built["gpt_chat"] = fx.copy_folder(built["gpt"], root / "gpt_chat")
    fx.update_json(
        built["gpt_chat"] / "tokenizer_config.json",
        chat_template=fx.CHATML_TEMPLATE,
        additional_special_tokens=CHAT_TOKENS,
    )
    # Marks the last message, so a conversation's prefix renders differently from its start.
    built["gpt_unstable"] = fx.copy_folder(built["gpt"], root / "gpt_unstable")
    fx.update_json(
        built["gpt_unstable"] / "tokenizer_config.json",
        chat_template="{% for m in messages %}{% if loop.last %}LAST {% endif %}"
        "{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
    )
    return built


@pytest.fixture(scope="module")
def bert(folders) -> Tokenizer:
    return Tokenizer.from_pretrained(folders["bert"])


@pytest.fixture(scope="module")
def gpt(folders) -> Tokenizer:
    return Tokenizer.from_pretrained(folders["gpt"])


@pytest.fixture(scope="module")
def gpt_chat(folders) -> Tokenizer:
    return Tokenizer.from_pretrained(folders["gpt_chat"])


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(folder: Path, name: str, records: list) -> Path:
    return write(folder, name, "".join(json.dumps(record) + "\n" for record in records))


def record(**fields) -> InstructionExample:
    """An instruction example as read from line 1 of ``data.jsonl``."""
    return InstructionExample(**fields, line=1, path="data.jsonl")


def numpy_batch(batch: dict) -> dict[str, np.ndarray]:
    return {key: np.array(value) for key, value in batch.items()}


# ---------------------------------------------------------------------------
# Reading classification data
# ---------------------------------------------------------------------------


def test_read_csv_quoted_cells_and_line_numbers(tmp_path):
    path = write(tmp_path, "train.csv", 'text,label\n"Hello, world",pos\nplain text,neg\n\n"two\nlines",pos\n')
    examples = read_classification(path)
    assert [example.text for example in examples] == ["Hello, world", "plain text", "two\nlines"]
    assert [example.label for example in examples] == ["pos", "neg", "pos"]
    assert [example.line for example in examples] == [2, 3, 5]
    assert examples[0].text_pair is None and examples[0].where == f"{path}:2"


def test_read_tsv_takes_quotes_literally(tmp_path):
    # SST-2 sentences hold unbalanced quotes; CSV quoting would swallow the following lines.
    text = 'sentence\tlabel\nit \'s a "cool movie\t1\nthe "best" film\t0\n"quoted start\t1\n'
    path = write(tmp_path, "train.tsv", text)
    examples = read_classification(path)
    assert [example.text for example in examples] == ['it \'s a "cool movie', 'the "best" film', '"quoted start']
    assert [example.label for example in examples] == ["1", "0", "1"]
    assert [example.line for example in examples] == [2, 3, 4]


def test_read_mrpc_columns(tmp_path):
    first = 'Amrozi accused his brother , whom he called " the witness " , of distorting his evidence .'
    second = 'Referring to him as only " the witness " , Amrozi accused his brother .'
    text = (
        "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"  # GLUE's MRPC files start with a BOM
        f"1\t702876\t702977\t{first}\t{second}\n"
        "0\t2108705\t2108831\tYucaipa owned Dominick 's .\tYucaipa bought Dominick 's in 1995 .\n"
    )
    path = write(tmp_path, "msr_paraphrase_train.tsv", text)
    examples = read_classification(
        path, text_column="#1 String", text_pair_column="#2 String", label_column="Quality"
    )
    assert (examples[0].text, examples[0].text_pair, examples[0].label) == (first, second, "1")
    assert examples[1].text_pair == "Yucaipa bought Dominick 's in 1995 ."
    assert (examples[1].label, examples[1].line) == ("0", 3)


def test_read_jsonl_picks_text_column_and_keeps_label_types(tmp_path):
    path = write_jsonl(
        tmp_path,
        "train.jsonl",
        [
            {"id": 7, "question": "why?", "sentence": "no", "label": 2},
            {"id": 8, "question": "how?", "sentence": "so", "label": ["a", "b"]},
        ],
    )
    examples = read_classification(path)  # "sentence" comes before "question" in TEXT_COLUMNS
    found = [(example.text, example.label, example.line) for example in examples]
    assert found == [("no", 2, 1), ("so", ["a", "b"], 2)]
    assert read_classification(path, text_column="question")[1].text == "how?"


def test_read_unlabelled_prediction_input(tmp_path):
    path = write(tmp_path, "test.tsv", "index\tsentence\n0\tgreat film\n1\tbad\n")
    examples = read_classification(path, require_labels=False)
    assert [(example.text, example.label) for example in examples] == [("great film", None), ("bad", None)]


def test_classification_errors_name_file_line_and_columns(tmp_path):
    path = write(tmp_path, "a.csv", "text,target\nhi,1\n")
    with pytest.raises(ValueError, match=r"a\.csv: no label column 'label'; the columns are \['text', 'target'\]"
                       r".*label_column=<one of them> \(--label-column\)"):
        read_classification(path)
    with pytest.raises(ValueError, match=r"no column 'body' \(text_column, --text-column\)"):
        read_classification(path, text_column="body", label_column="target")
    for name, content in (("header_only.csv", "text,label\n"), ("empty.jsonl", "")):
        with pytest.raises(ValueError, match=rf"{name} holds no examples"):
            read_classification(write(tmp_path, name, content))
    path = write(tmp_path, "b.csv", "text,label\nhi,1\n,0\n")
    with pytest.raises(ValueError, match=rf"{path}:3: missing text in 'text'"):
        read_classification(path)
    path = write(tmp_path, "c.tsv", "sentence\tlabel\nfine\t1\na\tb\t1\n")
    with pytest.raises(ValueError, match=rf"{path}:3: expected 2 columns \(as in the header\), found 3"):
        read_classification(path)
    path = write(tmp_path, "d.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 1\n')
    with pytest.raises(ValueError, match=rf"{path}:2: not valid JSON"):
        read_classification(path)
    path = write(tmp_path, "e.csv", "text,label\nhi,1\nthere,\n")
    with pytest.raises(ValueError, match=rf"{path}:3: no label in 'label'"):
        read_classification(path)
    with pytest.raises(ValueError, match=r"no text column: looked for \['text', 'sentence', 'sentence1', 'question'\]"):
        read_classification(write(tmp_path, "f.csv", "body,label\nhi,1\n"))


# ---------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------


def test_label_set_order_and_config():
    assert LabelSet.from_labels(["1", "0", "10", "2", "1"]).names == ["0", "1", "2", "10"]  # numeric, not "10" < "2"
    assert LabelSet.from_labels(["pos", "neg", "neutral"]).names == ["neg", "neutral", "pos"]
    assert LabelSet.from_labels([["b", "a"], ["c"], []]).names == ["a", "b", "c"]
    numbers = LabelSet.from_labels([1, 0, 1])
    assert [numbers.encode(1), numbers.encode("1"), numbers.encode(1.0), numbers.encode(0)] == [1, 1, 1, 0]

    labels = LabelSet.from_labels(["pos", "neg"])
    config = labels.to_config()
    assert config == {"id2label": {"0": "neg", "1": "pos"}, "label2id": {"neg": 0, "pos": 1}}
    assert LabelSet.from_config(json.loads(json.dumps(config))) == labels
    assert LabelSet.from_config({"id2label": {"1": "b", "0": "a"}}).names == ["a", "b"]
    assert labels.decode(1) == "pos"
    with pytest.raises(ValueError, match=r"^unknown label 'meh'; the training data has labels \['neg', 'pos'\]"):
        labels.encode("meh")


def test_unknown_validation_label_names_file_and_line(tmp_path, bert):
    train = read_classification(write(tmp_path, "train.tsv", "sentence\tlabel\ngood\tpos\nbad\tneg\n"))
    dev = read_classification(write(tmp_path, "dev.tsv", "sentence\tlabel\nfine\tpos\nso so\tneutral\n"))
    labels = LabelSet.from_labels(example.label for example in train)
    expected = rf"{tmp_path / 'dev.tsv'}:3: unknown label 'neutral'; the training data has labels \['neg', 'pos'\]"
    with pytest.raises(ValueError, match=expected):
        encode_classification(dev, bert, labels, max_length=16)


# ---------------------------------------------------------------------------
# Encoding classification
# ---------------------------------------------------------------------------


def test_encode_classification_bert_pairs_and_truncation(bert):
    def ids(*tokens: str) -> list[int]:
        return [bert.token_to_id(token) for token in tokens]

    examples = [ClassificationExample("the quick fox", "lazy dog", "1", 2, "mrpc.tsv")]
    labels = LabelSet(["0", "1"])
    (item,) = encode_classification(examples, bert, labels, max_length=32)
    the, lazy, dog = ("t", "##h", "##e"), ("l", "##a", "##z", "##y"), ("d", "##o", "##g")
    assert item["input_ids"].tolist() == ids("[CLS]", *the, "quick", "fox", "[SEP]", *lazy, *dog, "[SEP]")
    assert item["token_type_ids"].tolist() == [0] * 7 + [1] * 8
    assert item["label"] == 1
    # max_length 10 leaves 7 tokens for 5 + 7: longest_first keeps 3 of the first and 4 of the second.
    (short,) = encode_classification(examples, bert, labels, max_length=10)
    assert short["input_ids"].tolist() == ids("[CLS]", *the, "[SEP]", *lazy, "[SEP]")
    assert short["token_type_ids"].tolist() == [0] * 5 + [1] * 5
    # Single texts have only segment 0: no token_type_ids.
    (single,) = encode_classification([ClassificationExample("quick fox", None, "0", 2)], bert, labels, 8)
    assert sorted(single) == ["input_ids", "label"]
    assert single["input_ids"].tolist() == ids("[CLS]", "quick", "fox", "[SEP]")


def test_encode_multi_label_and_regression(gpt):
    examples = [
        ClassificationExample("a", None, label, line, "x.jsonl")
        for line, label in enumerate((["b"], ["a", "c"], []), start=1)
    ]
    encoded = encode_classification(examples, gpt, LabelSet(["a", "b", "c"]), 8, problem="multi_label")
    batch = numpy_batch(next(iter(ClassificationBatches(encoded, 3, 1, shuffle=False, problem="multi_label"))))
    np.testing.assert_array_equal(batch["labels"], [[0, 1, 0], [1, 0, 1], [0, 0, 0]])
    assert batch["labels"].dtype == np.float32

    examples = [ClassificationExample("a", None, label, line, "sts.tsv") for line, label in ((2, "3.8"), (3, 1))]
    encoded = encode_classification(examples, gpt, None, 8, problem="regression")
    batch = numpy_batch(next(iter(ClassificationBatches(encoded, 2, 1, shuffle=False, problem="regression"))))
    np.testing.assert_allclose(batch["labels"], [3.8, 1.0])
    assert batch["labels"].dtype == np.float32
    with pytest.raises(ValueError, match=r"sts\.tsv:4: regression needs a number as label, got 'high'"):
        high = ClassificationExample("a", None, "high", 4, "sts.tsv")
        encode_classification([high], gpt, None, 8, problem="regression")


# ---------------------------------------------------------------------------
# CoNLL and tagging
# ---------------------------------------------------------------------------

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC


Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- -X- O

BRUSSELS NNP B-NP B-LOC
"""


def test_read_conll_sentences(tmp_path):
    path = write(tmp_path, "train.txt", CONLL)
    examples = read_conll(path)
    words = [example.words for example in examples]
    assert words == [["EU", "rejects", "German"], ["Peter", "Blackburn"], ["BRUSSELS"]]
    assert [example.tags for example in examples] == [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"], ["B-LOC"]]
    assert [example.line for example in examples] == [3, 8, 13]
    assert read_conll(path, tag_column=2)[1].tags == ["B-NP", "I-NP"]


def test_read_conll_errors_and_untagged_input(tmp_path):
    path = write(tmp_path, "bad.txt", CONLL.replace("Blackburn NNP I-NP I-PER", "Blackburn NNP I-PER"))
    with pytest.raises(ValueError, match=rf"{path}:9: expected 4 columns, found 3"):
        read_conll(path)
    path = write(tmp_path, "words.txt", "EU\nrejects\n\nPeter\n")
    with pytest.raises(ValueError, match=rf"{path}:1: found 1 column"):
        read_conll(path)
    assert [(example.words, example.tags) for example in read_conll(path, require_tags=False)] == [
        (["EU", "rejects"], None),
        (["Peter"], None),
    ]
    with pytest.raises(ValueError, match=r"holds no sentences"):
        read_conll(write(tmp_path, "docstart.txt", "-DOCSTART- -X- -X- O\n\n"))


def test_read_tagging_jsonl(tmp_path):
    records = [{"tokens": ["EU", "rejects"], "ner_tags": ["B-ORG", "O"]}, {"tokens": ["x"], "tags": [3]}]
    path = write_jsonl(tmp_path, "train.jsonl", records)
    assert [(example.words, example.tags, example.line) for example in read_conll(path)] == [
        (["EU", "rejects"], ["B-ORG", "O"], 1),
        (["x"], ["3"], 2),
    ]
    path = write_jsonl(tmp_path, "bad.jsonl", [{"tokens": ["a"], "tags": ["O"]}, {"tokens": ["a", "b"], "tags": ["O"]}])
    with pytest.raises(ValueError, match=rf"{path}:2: 2 tokens but 1 tags"):
        read_conll(path)


@pytest.mark.parametrize("name", ["bert", "gpt", "llama"])
def test_build_inputs_matches_encoding_text(folders, name):
    tokenizer = Tokenizer.from_pretrained(folders[name])
    for text, pair in (("the quick brownish fox", None), ("hello world", "lazy dog")):
        ids = tokenizer.encode(text, add_special_tokens=False)
        pair_ids = tokenizer.encode(pair, add_special_tokens=False) if pair else None
        expected = tokenizer(text, pair)
        built = tokenizer.build_inputs(ids, pair_ids)
        assert built.input_ids == expected["input_ids"]
        assert built.token_type_ids == expected["token_type_ids"]
    if name == "bert":
        assert tokenizer.build_inputs([7, 8], [9]).input_ids == [2, 7, 8, 3, 9, 3]


def test_encode_tagging_labels_first_subtoken(tmp_path, bert):
    def ids(*tokens: str) -> list[int]:
        return [bert.token_to_id(token) for token in tokens]

    path = write(tmp_path, "ner.txt", "the O\nquick B-ADJ\nbrownish I-ADJ\nfox B-ANIMAL\n")
    examples = read_conll(path)
    labels = LabelSet.from_labels(tag for example in examples for tag in example.tags)
    assert labels.names == ["B-ADJ", "B-ANIMAL", "I-ADJ", "O"]
    (item,) = encode_tagging(examples, bert, labels, max_length=32)
    tokens = ("[CLS]", "t", "##h", "##e", "quick", "brown", "##i", "##s", "##h", "fox", "[SEP]")
    assert item["input_ids"].tolist() == ids(*tokens) == bert("the quick brownish fox")["input_ids"]
    assert item["labels"].tolist() == [-100, 3, -100, -100, 0, 2, -100, -100, -100, 1, -100]
    assert item["word_ids"].tolist() == [-1, 0, 0, 0, 1, 2, 2, 2, 2, 3, -1]

    (every,) = encode_tagging(examples, bert, labels, max_length=32, label_all_subtokens=True)
    assert every["labels"].tolist() == [-100, 3, 3, 3, 0, 2, 2, 2, 2, 1, -100]

    # 7 tokens keep 5 word tokens: "brownish" keeps its first piece (and label), "fox" is cut.
    (cut,) = encode_tagging(examples, bert, labels, max_length=7)
    assert cut["input_ids"].tolist() == ids("[CLS]", "t", "##h", "##e", "quick", "brown", "[SEP]")
    assert cut["labels"].tolist() == [-100, 3, -100, -100, 0, 2, -100]
    assert cut["word_ids"].tolist() == [-1, 0, 0, 0, 1, 2, -1]


def test_encode_tagging_word_without_tokens_and_unknown_tag(tmp_path, bert):
    labels = LabelSet(["B-X", "O"])
    # A zero-width space is removed by BERT's normalizer: the word has no token and no label.
    examples = read_conll(write(tmp_path, "zw.txt", "quick O\n\u200b B-X\nfox O\n"))
    with pytest.warns(UserWarning, match=r"1 words encode to no tokens.*zw\.txt:1 \(word 2"):
        (item,) = encode_tagging(examples, bert, labels, max_length=16)
    quick, fox = bert.token_to_id("quick"), bert.token_to_id("fox")
    assert item["input_ids"].tolist() == [bert.cls_token_id, quick, fox, bert.sep_token_id]
    assert item["labels"].tolist() == [-100, 1, 1, -100]
    assert item["word_ids"].tolist() == [-1, 0, 2, -1]

    path = write(tmp_path, "dev.txt", "a O\n\nquick O\nfox B-Y\n")
    with pytest.raises(ValueError, match=rf"{path}:3 \(word 2, 'fox'\): unknown label 'B-Y'"):
        encode_tagging(read_conll(path), bert, labels, max_length=16)


def test_encode_tagging_byte_level_words_as_after_a_space(gpt):
    examples = [TaggingExample(["the", "quick", "fox"], None, 1, "input.txt")]
    (item,) = encode_tagging(examples, gpt, None, max_length=32)
    # Like transformers' add_prefix_space=True: the first word too is spelled " the".
    assert item["input_ids"].tolist() == gpt.encode(" the quick fox", add_special_tokens=False)
    assert "labels" not in item


def test_tagging_batches_pad_labels(tmp_path, bert):
    examples = read_conll(write(tmp_path, "t.txt", "the O\nquick O\nbrownish O\nfox O\n\nfox O\n"))
    encoded = encode_tagging(examples, bert, LabelSet(["O"]), max_length=32)
    batch = numpy_batch(next(iter(TaggingBatches(encoded, 2, bert.pad_token_id, shuffle=False))))
    assert sorted(batch) == ["attention_mask", "input_ids", "labels"]
    assert batch["input_ids"].shape == (2, 11)  # rounding 11 up to 16 would pass the longest example
    np.testing.assert_array_equal(batch["labels"][1], [-100, 0, -100] + [-100] * 8)
    np.testing.assert_array_equal(batch["attention_mask"].sum(axis=1), [11, 3])
    batch = numpy_batch(next(iter(TaggingBatches(encoded, 2, bert.pad_token_id, shuffle=False, max_length=32))))
    assert batch["input_ids"].shape == (2, 16)
    np.testing.assert_array_equal(batch["input_ids"][1, 3:], [bert.pad_token_id] * 13)


# ---------------------------------------------------------------------------
# Instructions
# ---------------------------------------------------------------------------


def test_prompt_completion_loss_on_completion_only(gpt, folders):
    examples = [record(prompt="Hello world", completion=" the quick fox")]
    prompt = gpt.encode("Hello world", add_special_tokens=False)
    completion = gpt.encode(" the quick fox", add_special_tokens=False) + [gpt.eos_token_id]
    (item,) = encode_instructions(examples, gpt, max_length=64)
    assert item["input_ids"].tolist() == prompt + completion
    assert item["loss_mask"].tolist() == [0] * len(prompt) + [1] * len(completion)

    batch = numpy_batch(next(iter(InstructionBatches([item], 1, gpt.pad_token_id, shuffle=False, max_length=64))))
    ids, targets, length = prompt + completion, batch["targets"][0], len(prompt + completion)
    assert batch["input_ids"].shape == (1, 8 * -(-length // 8))
    # No loss over the prompt: the first target is the first completion token, predicted at the prompt's end.
    assert targets[: len(prompt) - 1].tolist() == [-100] * (len(prompt) - 1)
    assert targets[len(prompt) - 1 : length - 1].tolist() == ids[len(prompt) :]
    assert (targets[length - 1 :] == -100).all()

    (unmasked,) = encode_instructions(examples, gpt, max_length=64, mask_prompt=False)
    assert unmasked["loss_mask"].tolist() == [1] * length

    # A tokenizer that starts text with BOS (Llama) gets it before the prompt, unlearned.
    llama = Tokenizer.from_pretrained(folders["llama"])
    (item,) = encode_instructions(examples, llama, max_length=64)
    llama_prompt = [llama.bos_token_id] + llama.encode("Hello world", add_special_tokens=False)
    assert item["input_ids"].tolist()[: len(llama_prompt)] == llama_prompt
    assert item["input_ids"].tolist()[-1] == llama.eos_token_id
    assert item["loss_mask"].tolist()[: len(llama_prompt) + 1] == [0] * len(llama_prompt) + [1]


def test_text_records_learn_every_token_and_truncate(gpt):
    ids = gpt.encode("the quick brown fox", add_special_tokens=False) + [gpt.eos_token_id]
    (item,) = encode_instructions([record(text="the quick brown fox")], gpt, max_length=64)
    assert item["input_ids"].tolist() == ids and item["loss_mask"].tolist() == [1] * len(ids)
    batch = numpy_batch(next(iter(InstructionBatches([item], 1, 1, shuffle=False))))
    assert batch["targets"][0].tolist() == ids[1:] + [-100]
    (cut,) = encode_instructions([record(text="the quick brown fox")], gpt, max_length=3)
    assert cut["input_ids"].tolist() == ids[:3]
    with pytest.warns(UserWarning, match=r"1 records have no token to learn.*data\.jsonl:1"):
        encode_instructions([record(prompt="the quick brown fox", completion=" ok")], gpt, max_length=3)


def test_chat_loss_only_on_assistant_turns(tmp_path, gpt_chat):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello world"},
        {"role": "assistant", "content": "Hi there!"},
        {"role": "user", "content": "the fox?"},
        {"role": "assistant", "content": "quick brown"},
    ]
    examples = read_instructions(write_jsonl(tmp_path, "chat.jsonl", [{"messages": messages}]))
    (item,) = encode_instructions(examples, gpt_chat, max_length=128)
    rendered = gpt_chat.apply_chat_template(messages, add_generation_prompt=False)
    assert gpt_chat.decode(item["input_ids"], skip_special_tokens=False) == rendered

    batch = numpy_batch(next(iter(InstructionBatches([item], 1, gpt_chat.pad_token_id, shuffle=False))))
    targets = batch["targets"][0]
    learned = np.flatnonzero(targets != -100)
    runs = np.split(learned, np.flatnonzero(np.diff(learned) != 1) + 1)
    texts = [gpt_chat.decode(targets[run], skip_special_tokens=False) for run in runs]
    assert texts == ["Hi there!<|im_end|>\n", "quick brown<|im_end|>\n"]
    # The first learned target is predicted at the end of "<|im_start|>assistant\n".
    prompt = gpt_chat.apply_chat_template(messages[:2], add_generation_prompt=True, tokenize=True)
    assert learned[0] == len(prompt) - 1


def test_lm_predictions_ask_for_the_next_assistant_turn(tmp_path, monkeypatch, gpt_chat, gpt):
    """`--task lm` predicts a conversation from `Tokenizer.chat_prompt` of its turns before the
    trailing assistant ones; a tokenizer without a chat template is refused by name."""
    import importlib

    from mlx_llm.tasks import RunSettings, get_task

    prompts = []  # (the package's `generate` is the function: patch it in its module)
    monkeypatch.setattr(importlib.import_module("mlx_llm.generation.generate"), "generate",
                        lambda model, tokenizer, prompt, **options: prompts.append(prompt) or "ok")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "the fox?"},
                {"role": "assistant", "content": "quick brown"}]
    examples = read_instructions(write_jsonl(tmp_path, "chat.jsonl", [{"messages": messages}]))
    task, settings = get_task("lm"), RunSettings(task="lm")
    assert list(task.predict(None, gpt_chat, examples, settings, 1, 8, 0.0)) == [{"completion": "ok"}]
    assert prompts == [gpt_chat.apply_chat_template(messages[:2], add_generation_prompt=True, tokenize=True)]
    with pytest.raises(ValueError, match="tokenizer has no chat template"):
        list(task.predict(None, gpt, examples, settings, 1, 8, 0.0))


def test_instruction_errors(tmp_path, gpt, folders):
    path = write_jsonl(
        tmp_path,
        "chat.jsonl",
        [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
         {"messages": [{"role": "user", "content": "a"}]}],
    )  # fmt: skip
    with pytest.raises(ValueError, match=rf"{path}:2: the conversation has no assistant message"):
        read_instructions(path)
    path = write_jsonl(tmp_path, "odd.jsonl", [{"text": "a"}, {"input": "a", "output": "b"}])
    formats = r'\{"text"\} or \{"prompt", "completion"\} or \{"messages"\}'
    with pytest.raises(ValueError, match=rf"{path}:2: unknown record format \(keys \['input', 'output'\]\).*" + formats):
        read_instructions(path)
    path = write(tmp_path, "broken.jsonl", '{"text": "a"}\n\n{"text": \n')
    with pytest.raises(ValueError, match=rf"{path}:3: not valid JSON"):
        read_instructions(path)

    chat = [record(messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])]
    with pytest.raises(ValueError, match=r"data\.jsonl:1: chat records need a chat template.*has none.*\"prompt\""):
        encode_instructions(chat, gpt, max_length=32)
    unstable = Tokenizer.from_pretrained(folders["gpt_unstable"])
    with pytest.raises(ValueError, match=r"data\.jsonl:1: the chat template is not prefix-stable"):
        encode_instructions(chat, unstable, max_length=32)


# ---------------------------------------------------------------------------
# Batch sources
# ---------------------------------------------------------------------------


def indexed_examples(count: int) -> list[dict]:
    """Example ``i`` has ``i % 5 + 1`` tokens and label ``i``, so batches show which examples they hold."""
    return [
        {"input_ids": np.full(index % 5 + 1, 100 + index, dtype=np.int32), "label": index} for index in range(count)
    ]


def test_classification_batches_padding_and_masks():
    encoded = [
        {"input_ids": np.array([5, 6, 7]), "token_type_ids": np.array([0, 0, 1]), "label": 1},
        {"input_ids": np.arange(10, 19), "token_type_ids": np.zeros(9, dtype=np.int32), "label": 0},
    ]
    batch = numpy_batch(next(iter(ClassificationBatches(encoded, 2, pad_token_id=9, shuffle=False, max_length=64))))
    assert sorted(batch) == ["attention_mask", "input_ids", "labels", "token_type_ids"]
    assert batch["input_ids"].shape == (2, 16) and batch["input_ids"].dtype == np.int32
    np.testing.assert_array_equal(batch["input_ids"][0], [5, 6, 7] + [9] * 13)
    np.testing.assert_array_equal(batch["attention_mask"][0], [1] * 3 + [0] * 13)
    np.testing.assert_array_equal(batch["token_type_ids"][0], [0, 0, 1] + [0] * 13)
    np.testing.assert_array_equal(batch["labels"], [1, 0])
    assert batch["labels"].dtype == np.int32
    # Never padded past max_length.
    batch = numpy_batch(next(iter(ClassificationBatches(encoded, 2, pad_token_id=9, shuffle=False, max_length=12))))
    assert batch["input_ids"].shape == (2, 12)
    with pytest.raises(ValueError, match=r"pad_token_id is None.*eos_token_id"):
        ClassificationBatches(encoded, 2, pad_token_id=None)


def test_epochs_cycle_with_different_permutations():
    source = ClassificationBatches(indexed_examples(10), batch_size=4, pad_token_id=0, seed=3)
    assert source.epoch_batches == 3
    epochs = [
        np.concatenate([np.array(next(source)["labels"]) for _ in range(source.epoch_batches)]) for _ in range(3)
    ]
    for order in epochs:
        assert sorted(order.tolist()) == list(range(10))
    assert epochs[0].tolist() != epochs[1].tolist() and epochs[1].tolist() != epochs[2].tolist()
    assert source.epoch == 3

    dropping = ClassificationBatches(indexed_examples(10), batch_size=4, pad_token_id=0, drop_last=True)
    assert dropping.epoch_batches == 2
    assert [np.array(next(dropping)["labels"]).size for _ in range(4)] == [4, 4, 4, 4]
    in_order = ClassificationBatches(indexed_examples(10), batch_size=4, pad_token_id=0, shuffle=False)
    labels = [np.array(next(in_order)["labels"]).tolist() for _ in range(4)]
    assert labels == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9], [0, 1, 2, 3]]


def test_state_and_restore_resume_exactly():
    source = ClassificationBatches(indexed_examples(10), batch_size=3, pad_token_id=0, seed=5)
    for _ in range(5):  # past the end of the first epoch (4 batches)
        next(source)
    state = source.state()
    assert (state["epoch"], state["position"]) == (1, 1)
    expected = [numpy_batch(next(source)) for _ in range(6)]

    resumed = ClassificationBatches(indexed_examples(10), batch_size=3, pad_token_id=0, seed=5)
    resumed.restore(json.loads(json.dumps(state)))
    for batch in expected:
        got = numpy_batch(next(resumed))
        assert sorted(got) == sorted(batch)
        for key in batch:
            np.testing.assert_array_equal(got[key], batch[key])
    with pytest.raises(ValueError, match=r"batch_size=3 but this iterator has 4"):
        ClassificationBatches(indexed_examples(10), batch_size=4, pad_token_id=0, seed=5).restore(state)


def test_iterate_once_covers_every_example_in_order():
    source = ClassificationBatches(indexed_examples(10), batch_size=4, pad_token_id=0, seed=1)
    next(source)
    before = source.state()
    pairs = list(source.iterate_once())
    assert [indices.tolist() for indices, _ in pairs] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    for indices, batch in pairs:
        np.testing.assert_array_equal(np.array(batch["labels"]), indices)
        np.testing.assert_array_equal(np.array(batch["input_ids"])[:, 0], 100 + indices)
    assert source.state() == before
    assert len(list(source.evaluation_batches())) == 3
