"""The generate and chat commands on bad input (issue 13): one line, exit code 2,
never a traceback; stop-string escapes; context warnings; checkpoint settings;
a reader that leaves early."""

import json
import subprocess
import sys

import pytest
import torch
import transformers
from click.testing import CliRunner
from test_generation_config import REFUSING_TEMPLATE, encoders, tiny_gpt2  # noqa: F401 (fixture)
from tokenizer_fixtures import update_json

from mlx_llm.generation.generate import generate
from mlx_llm.generation.generation_config import read_generation_defaults, resolve_sampling
from mlx_llm.model_files.loading import load
from mlx_llm_cli.generate import unescape_stop
from mlx_llm_cli.main import main


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """A tiny causal model whose chat template refuses messages holding 'forbidden'."""
    folder = tiny_gpt2(tmp_path_factory.mktemp("refusing") / "model")
    (folder / "generation_config.json").unlink(missing_ok=True)
    update_json(folder / "tokenizer_config.json", chat_template=REFUSING_TEMPLATE)
    return folder


def run(*arguments, input=None):
    return CliRunner().invoke(main, [str(argument) for argument in arguments], input=input)


def error_line(result) -> str:
    """The one error line of a failed command (no traceback, nothing after it)."""
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_undecodable_prompt_is_replaced_with_a_warning(chat_model):
    model, tokenizer = load(chat_model)
    expected = generate(model, tokenizer, "hi \ufffd", max_tokens=4)
    warning = "warning: the prompt is not valid UTF-8; its undecodable bytes were replaced with U+FFFD\n"
    for arguments, stdin in ((["-p", "-"], b"hi \xff"), (["-p", "hi \udcff"], None)):  # stdin, then argv
        result = run("generate", "-m", chat_model, "--no-chat-template", "--max-tokens", 4, "-q", *arguments,
                     input=stdin)
        assert result.exit_code == 0, result.output
        assert result.stderr == warning and result.stdout == expected + "\n"


def test_chat_replaces_undecodable_input_and_goes_on(chat_model):
    result = run("chat", "-m", chat_model, "--max-tokens", 3, "-q", input=b"hi \xff\nhello\n/exit\n")
    assert result.exit_code == 0 and "Traceback" not in result.output
    assert "warning: the message is not valid UTF-8" in result.stderr
    assert result.stdout.count(">> ") == 3  # the session read all three lines


def test_template_refusal_in_generate_is_one_line(chat_model):
    result = run("generate", "-m", chat_model, "-p", "a forbidden word")
    assert result.exit_code == 2
    assert error_line(result) == "Error: the chat template refused the conversation: No forbidden words, please."


def test_broken_template_in_generate_is_one_line(chat_model, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    for file in chat_model.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    update_json(folder / "tokenizer_config.json", chat_template="{% for message in messages %}{{ message")
    result = run("generate", "-m", folder, "-p", "hello")
    assert result.exit_code == 2
    assert error_line(result).startswith("Error: the chat template is not valid Jinja (line 1: ")


def test_template_refusal_in_chat_keeps_the_session(chat_model):
    result = run("chat", "-m", chat_model, "--max-tokens", 3, "-q", input="a forbidden word\nhello\n/exit\n")
    assert result.exit_code == 0 and "Traceback" not in result.output
    assert "Error: the chat template refused the conversation: No forbidden words, please.\n" in result.stderr
    assert result.stdout.count(">> ") == 3


@pytest.mark.parametrize("command", ["generate", "chat"])
def test_models_that_cannot_generate(encoders, command):  # noqa: F811 (fixture)
    prompt = ["-p", "hello"] if command == "generate" else []
    result = run(command, "-m", encoders["bert"], *prompt, input="hello\n")
    assert result.exit_code == 2
    assert error_line(result) == (
        f"Error: {encoders['bert']} is a BERT encoder with a sequence-classification head; it cannot generate "
        "text: use mlx-llm predict / evaluate / embed")
    result = run(command, "-m", encoders["classifier"], *prompt, input="hello\n")
    assert result.exit_code == 2
    assert error_line(result) == (
        f"Error: {encoders['classifier']} is a GPT-2 decoder with a sequence-classification head (a fine-tuned "
        "classifier); it cannot generate text: use mlx-llm predict / evaluate")


@pytest.mark.parametrize("option, value, requirement", [
    ("--temp", "nan", ">= 0"), ("--temp", "inf", ">= 0"), ("--temp", "-1", ">= 0"),
    ("--repetition-penalty", "nan", "> 0"), ("--repetition-penalty", "inf", "> 0"),
    ("--top-p", "nan", "in (0, 1]"), ("--min-p", "nan", "in [0, 1)"),
])
@pytest.mark.parametrize("command", ["generate", "chat"])
def test_nan_and_inf_sampling_options_are_refused(chat_model, command, option, value, requirement):
    prompt = ["-p", "hello"] if command == "generate" else []
    result = run(command, "-m", chat_model, *prompt, option, value)
    assert result.exit_code == 2
    assert error_line(result) == (f"Error: Invalid value for '{option}': must be a finite number {requirement}, "
                                  f"got {float(value)}")


def test_stop_escapes():
    assert unescape_stop("\\n\\n") == "\n\n"
    assert unescape_stop("a\\tb\\\\n") == "a\tb\\n"  # an escaped backslash stays one backslash
    assert unescape_stop("\\x41 \\") == "\\x41 \\"  # other escapes are left as typed


def test_stop_in_the_shell_form_stops(chat_model):
    model, tokenizer = load(chat_model)
    full = generate(model, tokenizer, "hello", max_tokens=30, eos_token_ids=())
    stop = full[5:7]  # two characters the greedy completion reaches
    assert stop and "\\" not in stop
    shell_form = stop.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")
    result = run("generate", "-m", chat_model, "--no-chat-template", "-p", "hello", "--max-tokens", 30,
                 "--stop", shell_form)
    assert result.exit_code == 0, result.output
    assert result.stdout == full[: full.index(stop)] + "\n" and "finish: stop" in result.stderr


def demo_available() -> bool:
    from mlx_llm.model_files.demo import demo_model_path

    try:
        return (demo_model_path() / "generation_config.json").is_file()
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not demo_available(), reason="the built-in demo model is not installed")
def test_readme_stop_example_stops_at_a_blank_line():
    # README: echo "First Citizen:" | mlx-llm generate --prompt - --stop "\n\n"
    for seed in (0, 1):
        result = run("generate", "--prompt", "-", "--stop", "\\n\\n", "--seed", seed, input="First Citizen:\n")
        assert result.exit_code == 0, result.output
        assert "finish: stop" in result.stderr and "\n\n" not in result.stdout.rstrip("\n")


def test_context_cut_is_reported_on_one_line(chat_model):
    prompt = "the quick brown fox " * 5
    _, tokenizer = load(chat_model)
    length = len(tokenizer.encode(prompt))
    assert 18 < length < 48
    result = run("generate", "-m", chat_model, "--no-chat-template", "-p", prompt, "--max-tokens", 30, "-q")
    assert result.exit_code == 0
    assert result.stderr == (f"warning: the model's context holds 48 tokens, so after the {length}-token prompt "
                             f"there is room for {48 - length} new tokens, not 30\n")
    long_prompt = prompt * 3
    result = run("generate", "-m", chat_model, "--no-chat-template", "-p", long_prompt, "--max-tokens", 30,
                 "--truncate-prompt", "-q")
    assert result.exit_code == 0
    assert result.stderr == (f"warning: the prompt was cut from {len(tokenizer.encode(long_prompt))} to its last 18 "
                             "tokens to leave room for 30 new tokens in the model's 48-token context\n")


def test_checkpoint_settings_are_the_defaults_and_flags_win(chat_model, tmp_path):
    folder = tmp_path / "configured"
    folder.mkdir()
    for file in chat_model.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    (folder / "generation_config.json").write_text(json.dumps(
        {"do_sample": True, "temperature": 1.5, "top_k": 0, "max_new_tokens": 12}))
    model, tokenizer = load(folder)
    settings = resolve_sampling(read_generation_defaults(folder))
    sampled = generate(model, tokenizer, "hello", seed=3, **settings)
    greedy = generate(model, tokenizer, "hello", max_tokens=12)
    assert sampled != greedy  # the checkpoint's temperature matters for this test to mean anything
    base = ["generate", "-m", folder, "--no-chat-template", "-p", "hello", "-q", "--seed", 3]
    assert run(*base).stdout == sampled + "\n"
    assert run(*base, "--temp", 0).stdout == greedy + "\n"  # --temp 0 forces greedy
    assert run(*base, "--max-tokens", 4).stdout == generate(
        model, tokenizer, "hello", seed=3, **{**settings, "max_tokens": 4}) + "\n"
    # Without generation_config.json: greedy.
    assert run("generate", "-m", chat_model, "--no-chat-template", "-p", "hello", "-q", "--max-tokens", 12,
               "--seed", 3).stdout == greedy + "\n"


@pytest.mark.skipif(not demo_available(), reason="the built-in demo model is not installed")
def test_reader_leaving_early_is_not_an_error():
    command = [sys.executable, "-m", "mlx_llm_cli.main", "generate", "-p", "ROMEO:", "--max-tokens", "200",
               "--temp", "0"]
    script = " ".join(f"'{part}'" for part in command) + " | head -1; exit ${PIPESTATUS[0]}"
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1
    assert "Broken pipe" not in result.stderr and "Traceback" not in result.stderr and "Error" not in result.stderr
