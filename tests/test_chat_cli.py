"""Chat sessions (KV cache kept between turns) and the generate / chat commands."""


import pytest
import torch
import transformers
from click.testing import CliRunner
from tokenizer_fixtures import build_byte_level_bpe, build_chat_llama

from mlx_llm.generation.chat import ChatSession
from mlx_llm.generation.generate import generate
from mlx_llm.model_files.loading import load
from mlx_llm_cli.main import main


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chat")
    build_chat_llama(folder, max_positions=512)
    return folder


def test_chat_reuses_cache_and_equals_fresh_generation(chat_model):
    model, tokenizer = load(chat_model)
    session = ChatSession(model, tokenizer, system="be brief", max_tokens=10, eos_token_ids=())
    first = list(session.send("hello there"))
    second = list(session.send("and then what"))
    answer = "".join(r.text for r in second)
    # Only the new turn went through the model...
    full_prompt = tokenizer.apply_chat_template(session.messages[:-1], add_generation_prompt=True, tokenize=True)
    assert second[-1].prompt_tokens <= len(full_prompt) - first[-1].prompt_tokens
    # ...and the answer is the one a fresh run on the whole conversation gives.
    assert answer == generate(model, tokenizer, full_prompt, max_tokens=10, eos_token_ids=())
    session.reset()
    assert session.messages == [{"role": "system", "content": "be brief"}] and session.cache[0].offset == 0


def test_chat_stopped_answer_is_kept(chat_model):
    model, tokenizer = load(chat_model)
    session = ChatSession(model, tokenizer, max_tokens=10, eos_token_ids=())
    stream = session.send("hello there")
    next(stream)
    stream.close()  # what Ctrl-C does
    assert session.messages[-1]["role"] == "assistant"
    answer = "".join(r.text for r in session.send("again"))
    full = tokenizer.apply_chat_template(session.messages[:-1], add_generation_prompt=True, tokenize=True)
    assert answer == generate(model, tokenizer, full, max_tokens=10, eos_token_ids=())


def test_chat_needs_a_template(tmp_path):
    folder = tmp_path / "plain"
    build_byte_level_bpe(folder)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=400, n_embd=16, n_layer=1, n_head=2,
                                                          n_positions=32)).save_pretrained(folder)
    model, tokenizer = load(folder)
    with pytest.raises(ValueError, match="no chat template"):
        ChatSession(model, tokenizer)


def test_generate_command(chat_model):
    runner = CliRunner()
    result = runner.invoke(main, ["generate", "--model", str(chat_model), "--prompt", "hello", "--max-tokens", "8",
                                  "--no-chat-template"])
    assert result.exit_code == 0, result.output
    model, tokenizer = load(chat_model)
    assert result.stdout.rstrip("\n") == generate(model, tokenizer, "hello", max_tokens=8)
    assert "tokens/s" in result.stderr and "peak memory" in result.stderr
    # Prompt from stdin, with the chat template and a system message; --quiet prints no statistics.
    result = runner.invoke(main, ["generate", "-m", str(chat_model), "-p", "-", "--system", "be brief",
                                  "--max-tokens", "5", "--quiet"], input="hello from stdin")
    assert result.exit_code == 0, result.output
    templated = tokenizer.apply_chat_template(
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello from stdin"}],
        add_generation_prompt=True, tokenize=True)
    assert result.stdout.rstrip("\n") == generate(model, tokenizer, templated, max_tokens=5)
    assert result.stderr == ""


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--prompt", ""], "prompt is empty"),
        (["--prompt", "hi", "--top-p", "1.5"], "--top-p"),
        (["--prompt", "hi", "--temp", "-1"], "--temp"),
        (["--prompt", "word " * 600], "context holds 512"),
    ],
)
def test_generate_command_bad_input_exits_2(chat_model, arguments, message):
    result = CliRunner().invoke(main, ["generate", "--model", str(chat_model), "--no-chat-template", *arguments])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_generate_command_unknown_model_and_no_default(tmp_path):
    result = CliRunner().invoke(main, ["generate", "--model", str(tmp_path / "nope"), "--prompt", "hi"])
    assert result.exit_code == 2 and "does not exist" in result.output
    from mlx_llm.model_files.demo import demo_model_path

    try:
        demo_model_path()
    except FileNotFoundError:
        result = CliRunner().invoke(main, ["generate", "--prompt", "hi"])
        assert result.exit_code == 2 and "pass --model" in result.output


def test_chat_command(chat_model):
    result = CliRunner().invoke(main, ["chat", "--model", str(chat_model), "--max-tokens", "4", "--quiet"],
                                input="hello\n/reset\nhi again\n/exit\n")
    assert result.exit_code == 0, result.output
    assert "[conversation reset]" in result.stderr
    assert result.stdout.count(">> ") == 4  # four prompts read
