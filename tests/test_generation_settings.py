"""Generation settings travel whole: one SamplingConfig (checked once, also for the
command line), the old keywords giving the very same tokens, one chat-prompt builder
for chat, generate and the server, and one text finisher."""

import importlib
from types import SimpleNamespace

import mlx.core as mx
import pytest
from click.testing import CliRunner
from tokenizer_fixtures import build_chat_llama

from mlx_llm.generation.chat import ChatSession
from mlx_llm.generation.generate import batch_generate, stream_generate
from mlx_llm.model_files.loading import load
from mlx_llm.generation.sampling import SamplingConfig, SamplingError
from mlx_llm.serve.prepare import prompt_ids
from mlx_llm.serve.protocol import parse_chat
from mlx_llm.generation.stopping import SequenceText
from mlx_llm_cli.main import main

SETTINGS = {"temperature": 0.9, "top_k": 20, "top_p": 0.95, "min_p": 0.02, "repetition_penalty": 1.3,
            "repetition_context_size": 6}


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chat")
    build_chat_llama(folder, max_positions=512)
    return folder


@pytest.fixture(scope="module")
def loaded(chat_model):
    return load(chat_model)


def run(*arguments, input=None):
    return CliRunner().invoke(main, [str(argument) for argument in arguments], input=input)


def test_old_keywords_and_sampling_config_give_the_same_tokens(loaded):
    model, tokenizer = loaded
    config = SamplingConfig(**SETTINGS)
    old = [r.token for r in stream_generate(model, tokenizer, "hello", 12, seed=3, eos_token_ids=(), **SETTINGS)]
    new = [r.token for r in stream_generate(model, tokenizer, "hello", 12, seed=3, eos_token_ids=(), sampling=config)]
    assert old == new and len(set(new)) > 1  # sampled, not a constant stream
    prompts = ["hello", "the quick brown fox"]
    assert (batch_generate(model, tokenizer, prompts, 8, seed=5, **SETTINGS)
            == batch_generate(model, tokenizer, prompts, 8, seed=5, sampling=config))
    sessions = [ChatSession(model, tokenizer, max_tokens=8, eos_token_ids=(), **SETTINGS),
                ChatSession(model, tokenizer, max_tokens=8, eos_token_ids=(), sampling=config)]
    answers = []
    for session in sessions:
        mx.random.seed(9)
        answers.append([r.token for r in session.send("hi")])
    assert answers[0] == answers[1] and sessions[0].sampling == config
    with pytest.raises(ValueError, match="not both"):
        list(stream_generate(model, tokenizer, "hello", 2, sampling=config, temperature=0.5))
    with pytest.raises(TypeError, match="unexpected keyword argument 'temprature'"):
        list(stream_generate(model, tokenizer, "hello", 2, temprature=0.5))
    with pytest.raises(SamplingError, match="top_p must be a finite number in"):
        ChatSession(model, tokenizer, top_p=0.0)


def test_command_line_messages_come_from_sampling_config(chat_model, tmp_path, monkeypatch):
    # A value SamplingConfig refuses is refused before the model loads (the folder does not exist)...
    result = run("generate", "-m", tmp_path / "missing", "-p", "hi", "--top-k", "-2")
    assert result.exit_code == 2
    assert "Error: Invalid value for '--top-k': must be a finite number >= 0, got -2" in result.stderr
    # ...with SamplingConfig's own message: change it, and the command line says the new one.
    refuse = SimpleNamespace(calls=0)

    def post_init(self):
        refuse.calls += 1
        if self.min_p == 0.5:
            raise SamplingError("min_p", "is refused by this test")

    monkeypatch.setattr(SamplingConfig, "__post_init__", post_init)
    for command, extra in (("generate", ["-p", "hi"]), ("chat", [])):
        result = run(command, "-m", chat_model, *extra, "--min-p", "0.5", input="hi\n")
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert result.stderr.strip().splitlines()[-1] == "Error: Invalid value for '--min-p': is refused by this test"
    assert refuse.calls == 2  # one check each, nothing else validated the option


def test_one_chat_prompt_for_chat_generate_and_serve(chat_model, loaded, monkeypatch):
    model, tokenizer = loaded
    expected = tokenizer.chat_prompt([{"role": "user", "content": "hello there"}], system="be brief")
    assert expected == tokenizer.apply_chat_template(
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}],
        add_generation_prompt=True, tokenize=True)
    # ChatSession: with max_tokens=1 the cache holds exactly the prompt.
    session = ChatSession(model, tokenizer, system="be brief", max_tokens=1, eos_token_ids=())
    list(session.send("hello there"))
    assert session._cached_ids == expected
    # mlx-llm generate: the prompt stream_generate receives.
    seen = []
    module = importlib.import_module("mlx_llm.generation.generate")  # the package's `generate` attribute is the function
    real = module.stream_generate

    def spy(model, tokenizer, prompt, *args, **kwargs):
        seen.append(prompt)
        return real(model, tokenizer, prompt, *args, **kwargs)

    monkeypatch.setattr(module, "stream_generate", spy)
    result = run("generate", "-m", chat_model, "--system", "be brief", "-p", "hello there", "--max-tokens", 1, "-q")
    assert result.exit_code == 0, result.output
    assert seen == [expected]
    # The server's /v1/chat/completions.
    request = parse_chat({"model": "m", "messages": [{"role": "system", "content": "be brief"},
                                                     {"role": "user", "content": "hello there"}]})
    assert prompt_ids(SimpleNamespace(tokenizer=tokenizer), request) == expected
    no_template = SimpleNamespace(_chat_template=None, apply_chat_template=None)
    with pytest.raises(ValueError, match="this model's tokenizer has no chat template"):
        type(tokenizer).chat_prompt(no_template, [{"role": "user", "content": "hi"}])


class _Characters:
    """A tokenizer stand-in whose tokens are characters (id = code point); id 0 is the end token."""

    def detokenizer(self):
        return _CharacterDetokenizer()


class _CharacterDetokenizer:
    def __init__(self):
        self.last_segment = ""

    def add_token(self, token):
        self.last_segment = chr(token)

    def finalize(self):
        self.last_segment = ""


def feed(text: SequenceText, characters: str) -> list[tuple[str, str | None]]:
    steps = []
    for character in characters:
        steps.append(text.add(ord(character) if character != "$" else 0))
        if steps[-1][1] is not None:
            break
    return steps


def test_sequence_text_ends_and_flushes():
    assert feed(SequenceText(_Characters(), 10, stop=["END"]), "abENxENDzz") == [
        ("a", None), ("b", None), ("", None), ("", None), ("ENx", None), ("", None), ("", None), ("", "stop")]
    # An end token emits no text of its own but flushes what a stop string held back.
    assert feed(SequenceText(_Characters(), 10, stop=["END"], eos_token_ids=[0]), "aE$b") == [
        ("a", None), ("", None), ("E", "eos")]
    # The max_tokens-th token ends it with "length", flushing too.
    assert feed(SequenceText(_Characters(), 3, stop=["END"]), "abEN") == [("a", None), ("b", None), ("E", "length")]
    with pytest.raises(ValueError, match="stop strings must not be empty"):
        SequenceText(_Characters(), 3, stop=[""])
