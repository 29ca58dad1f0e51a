"""Generation settings from a checkpoint's generation_config.json, and the
library checks issue 13 added: models that cannot generate, nan sampling
settings, undecodable prompts, chat templates that refuse, and a context that
cuts the prompt or max_tokens."""

import json
import math

import pytest
import torch
import transformers
from tokenizer_fixtures import LLAMA2_TEMPLATE, build_byte_level_bpe, build_wordpiece_bert

from mlx_llm.generation.chat import ChatSession
from mlx_llm.generation.generate import batch_generate, generate, stream_generate
from mlx_llm.generation.generation_config import GenerationDefaults, read_generation_defaults, resolve_sampling
from mlx_llm.model_files.loading import load
from mlx_llm.generation.sampling import SamplingConfig
from mlx_llm.tokenization import ChatTemplateError

CONTEXT = 48


def tiny_gpt2(folder, architecture=transformers.GPT2LMHeadModel, **config):
    build_byte_level_bpe(folder)
    torch.manual_seed(0)
    architecture(transformers.GPT2Config(vocab_size=400, n_positions=CONTEXT, n_embd=16, n_layer=1, n_head=2,
                                         bos_token_id=0, eos_token_id=0, pad_token_id=1, **config)
                 ).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A causal GPT-2 with no generation_config.json."""
    folder = tiny_gpt2(tmp_path_factory.mktemp("plain") / "model")
    (folder / "generation_config.json").unlink(missing_ok=True)  # save_pretrained writes one
    return folder


@pytest.fixture(scope="module")
def configured(tmp_path_factory):
    """The same weights with sampling settings and a second end token in generation_config.json."""
    folder = tiny_gpt2(tmp_path_factory.mktemp("configured") / "model")
    (folder / "generation_config.json").write_text(json.dumps({
        "do_sample": True, "temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.2, "max_new_tokens": 9,
        "eos_token_id": [0, 7],
    }))
    return folder


def test_read_generation_defaults(plain, configured):
    assert read_generation_defaults(plain) == GenerationDefaults()
    defaults = read_generation_defaults(configured)
    assert defaults == GenerationDefaults(source=configured / "generation_config.json", do_sample=True,
                                          temperature=0.7, top_p=0.9, repetition_penalty=1.2, max_new_tokens=9,
                                          eos_token_ids=(0, 7))
    model, tokenizer = load(configured)
    assert model.generation_defaults == defaults
    assert 7 in tokenizer.eos_token_ids  # the file's end tokens stop generation
    assert load(plain)[0].generation_defaults == GenerationDefaults()


@pytest.mark.parametrize("content, message", [
    ({"temperature": -1}, "temperature must be a finite number >= 0, got -1"),
    ({"top_p": 0}, "top_p must be a finite number in (0, 1], got 0"),
    ({"top_k": 2.5}, "top_k must be an integer >= 0, got 2.5"),
    ({"repetition_penalty": "high"}, "repetition_penalty must be a finite number > 0"),
    ({"do_sample": "yes"}, "do_sample must be true or false"),
    ({"eos_token_id": "end"}, "eos_token_id must be a token id or a list of them"),
    ([1, 2], "does not hold a JSON object"),
])
def test_invalid_generation_config_is_named(tmp_path, content, message):
    (tmp_path / "generation_config.json").write_text(json.dumps(content))
    with pytest.raises(ValueError, match="generation_config.json") as error:
        read_generation_defaults(tmp_path)
    assert message in str(error.value)


def test_resolve_sampling_precedence(configured):
    built_in = resolve_sampling(GenerationDefaults())
    assert built_in == {"max_tokens": 256, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0,
                        "repetition_penalty": 1.0}
    checkpoint = read_generation_defaults(configured)
    # The checkpoint's values, with transformers' defaults (top_k 50) for the keys it leaves out.
    assert resolve_sampling(checkpoint) == {"max_tokens": 9, "temperature": 0.7, "top_k": 50, "top_p": 0.9,
                                            "min_p": 0.0, "repetition_penalty": 1.2}
    # Explicit options win, one by one; temperature 0 is greedy whatever the checkpoint says.
    assert resolve_sampling(checkpoint, temperature=0.0, top_k=5, max_tokens=3) == {
        "max_tokens": 3, "temperature": 0.0, "top_k": 5, "top_p": 0.9, "min_p": 0.0, "repetition_penalty": 1.2}
    # do_sample false (or missing, as transformers reads it): greedy regardless of the temperature...
    greedy = GenerationDefaults(source=configured, do_sample=False, temperature=0.7)
    assert resolve_sampling(greedy)["temperature"] == 0.0
    assert resolve_sampling(GenerationDefaults(source=configured, temperature=0.7))["temperature"] == 0.0
    # ...unless a temperature is given; do_sample true without one samples at transformers' 1.0.
    assert resolve_sampling(greedy, temperature=0.5)["temperature"] == 0.5
    assert resolve_sampling(GenerationDefaults(source=configured, do_sample=True))["temperature"] == 1.0


@pytest.mark.parametrize("name", ["temperature", "top_p", "min_p", "repetition_penalty"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_sampling_config_refuses_nan_and_inf(name, value):
    with pytest.raises(ValueError, match=f"{name} must be a finite number .*, got {value}"):
        SamplingConfig(**{name: value})


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    bert = build_wordpiece_bert(root / "bert")
    vocab = len((bert / "vocab.txt").read_text().split())
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32, num_labels=3)
    transformers.BertForSequenceClassification(config).save_pretrained(bert)
    classifier = tiny_gpt2(root / "gpt2-classifier", transformers.GPT2ForSequenceClassification, num_labels=2)
    return {"bert": bert, "classifier": classifier}


def test_models_that_cannot_generate_say_what_they_are(encoders):
    bert, bert_tokenizer = load(encoders["bert"])
    expected = ("the model is a BERT encoder with a sequence-classification head; it cannot generate text: "
                "use mlx-llm predict / evaluate / embed")
    for call in (lambda: generate(bert, bert_tokenizer, "hello", max_tokens=2),
                 lambda: list(stream_generate(bert, bert_tokenizer, "hello", max_tokens=2)),
                 lambda: batch_generate(bert, bert_tokenizer, ["hello"], max_tokens=2),
                 lambda: ChatSession(bert, bert_tokenizer)):
        with pytest.raises(ValueError) as error:
            call()
        assert str(error.value) == expected
    classifier, tokenizer = load(encoders["classifier"])
    with pytest.raises(ValueError, match="is a GPT-2 decoder with a sequence-classification head "
                                         r"\(a fine-tuned classifier\); it cannot generate text: use mlx-llm predict"):
        generate(classifier, tokenizer, "hello", max_tokens=2)


def test_undecodable_prompt_is_a_value_error(plain):
    model, tokenizer = load(plain)
    with pytest.raises(ValueError, match="the prompt is not valid Unicode text"):
        generate(model, tokenizer, "hi \udcff", max_tokens=2)


def test_context_cuts_max_tokens_with_a_warning(plain):
    model, tokenizer = load(plain)
    prompt = list(range(10, 50))[:40]  # 40 of the 48 positions
    warnings = []
    responses = list(stream_generate(model, tokenizer, prompt, max_tokens=20, eos_token_ids=(),
                                     on_warning=warnings.append))
    assert len(responses) == 8 and responses[-1].finish_reason == "length"
    assert warnings == ["the model's context holds 48 tokens, so after the 40-token prompt there is room for "
                        "8 new tokens, not 20"]
    with pytest.warns(UserWarning, match="room for 8 new tokens, not 20"):  # the default: warnings.warn
        generate(model, tokenizer, prompt, max_tokens=20, eos_token_ids=())
    warnings.clear()
    assert len(list(stream_generate(model, tokenizer, prompt, max_tokens=8, eos_token_ids=(),
                                    on_warning=warnings.append))) == 8
    assert warnings == []


def test_truncated_prompt_keeps_room_for_max_tokens(plain):
    model, tokenizer = load(plain)
    prompt = [(5 * i) % 300 + 2 for i in range(60)]  # longer than the context
    warnings = []
    responses = list(stream_generate(model, tokenizer, prompt, max_tokens=20, eos_token_ids=(),
                                     truncate_prompt=True, on_warning=warnings.append))
    # The oldest tokens go: the last 28 stay, and all 20 new tokens fit.
    assert responses[0].prompt_tokens == 28 and len(responses) == 20
    assert warnings == ["the prompt was cut from 60 to its last 28 tokens to leave room for 20 new tokens in the "
                        "model's 48-token context"]
    assert "".join(r.text for r in responses) == generate(model, tokenizer, prompt[-28:], max_tokens=20,
                                                          eos_token_ids=())
    # max_tokens beyond the context: one prompt token stays, and the cut is reported too.
    warnings.clear()
    responses = list(stream_generate(model, tokenizer, prompt, max_tokens=100, eos_token_ids=(),
                                     truncate_prompt=True, on_warning=warnings.append))
    assert responses[0].prompt_tokens == 1 and len(responses) == CONTEXT - 1
    assert len(warnings) == 2 and warnings[1].endswith(f"room for {CONTEXT - 1} new tokens, not 100")


REFUSING_TEMPLATE = (
    "{% for message in messages %}"
    "{% if 'forbidden' in message['content'] %}{{ raise_exception('No forbidden words,\n please.') }}{% endif %}"
    "{{ message['role'] + ': ' + message['content'] + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)


def test_chat_template_errors_are_one_line_value_errors(plain):
    model, tokenizer = load(plain)
    with pytest.raises(ChatTemplateError) as error:
        tokenizer.apply_chat_template([{"role": "assistant", "content": "hi"}], chat_template=LLAMA2_TEMPLATE)
    assert str(error.value) == ("the chat template refused the conversation: "
                                "Conversation roles must alternate user/assistant/user/assistant/...")
    assert isinstance(error.value, ValueError)
    with pytest.raises(ValueError, match=r"the chat template is not valid Jinja \(line 1: "):
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], chat_template="{% for %}")
    with pytest.raises(ValueError, match="the chat template failed to render: "):
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}],
                                      chat_template="{{ messages[0]['content'] + 1 }}")
    # A chat session reports the refusal and forgets the refused message.
    tokenizer._chat_template = REFUSING_TEMPLATE
    session = ChatSession(model, tokenizer, max_tokens=3, eos_token_ids=())
    with pytest.raises(ValueError, match="^the chat template refused the conversation: No forbidden words, please.$"):
        list(session.send("a forbidden word"))
    assert session.messages == []
    answer = "".join(r.text for r in session.send("hello"))
    assert [m["role"] for m in session.messages] == ["user", "assistant"] and session.messages[1]["content"] == answer
    # A message the context cannot hold is refused the same way, and the conversation goes on.
    with pytest.raises(ValueError, match="context holds"):
        list(session.send("word " * 60))
    assert [m["role"] for m in session.messages] == ["user", "assistant"]
    again = "".join(r.text for r in session.send("more"))
    full = tokenizer.apply_chat_template(session.messages[:-1], add_generation_prompt=True, tokenize=True)
    assert again == generate(model, tokenizer, full, max_tokens=3, eos_token_ids=())
