"""Commands that generate text: ``generate`` and ``chat``."""

from __future__ import annotations

import io
import re
import sys

import click

from .errors import InputError, library_errors


def resolve_model(model: str | None) -> str:
    if model is not None:
        return model
    # The built-in demo model ships inside the package (see weights/README.md).
    from mlx_llm.model_files.demo import demo_model_path

    return str(demo_model_path())


# Unset sampling options come from the checkpoint (mlx_llm.generation.generation_config.resolve_sampling_config).
_FROM_CHECKPOINT = "default: the checkpoint's generation_config.json, else"
# SamplingConfig field -> the option that sets it, to name the option in SamplingConfig's messages.
SAMPLING_OPTIONS = {"temperature": "--temp", "top_k": "--top-k", "top_p": "--top-p", "min_p": "--min-p",
                    "repetition_penalty": "--repetition-penalty"}


def sampling_options(command):
    """The sampling options shared by generate and chat."""
    options = [
        click.option("--model", "-m", help="Local folder or Hub repo id (default: the built-in demo model)."),
        click.option("--max-tokens", type=click.IntRange(min=1),
                     help=f"Most tokens to generate ({_FROM_CHECKPOINT} 256; the context may cut it)."),
        click.option("--temp", type=float, help=f"Sampling temperature; 0 is greedy ({_FROM_CHECKPOINT} 0)."),
        click.option("--top-k", type=int, help=f"0 = off ({_FROM_CHECKPOINT} 0)."),
        click.option("--top-p", type=float, help=f"Nucleus probability; 1 = off ({_FROM_CHECKPOINT} 1)."),
        click.option("--min-p", type=float, help=f"0 = off ({_FROM_CHECKPOINT} 0)."),
        click.option("--repetition-penalty", type=float, help=f"1 = off ({_FROM_CHECKPOINT} 1)."),
        click.option("--seed", type=int, help="Seed for sampling."),
        click.option("--stop", multiple=True,
                     help="Stop at this text (not printed); repeatable. \\n, \\t and \\\\ mean newline, tab "
                          "and backslash."),
        click.option("--system", help="System message (chat template)."),
        click.option("--max-kv-size", type=click.IntRange(min=2), help="Bound the KV cache to N positions."),
        click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), help="Cast the weights."),
        click.option("--revision", help="Hub branch, tag or commit."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def given_sampling(temp, top_k, top_p, min_p, repetition_penalty) -> dict:
    """The sampling options given on the command line, checked by `SamplingConfig` before the
    model loads; its message for a refused value names the option (exit code 2).

    Returns:
        ``{SamplingConfig field: value}`` of the options given.
    """
    from mlx_llm.generation.sampling import SamplingConfig, SamplingError

    values = {"temperature": temp, "top_k": top_k, "top_p": top_p, "min_p": min_p,
              "repetition_penalty": repetition_penalty}
    given = {name: value for name, value in values.items() if value is not None}
    try:
        SamplingConfig(**given)
    except SamplingError as error:
        raise click.BadParameter(error.problem, param_hint=f"'{SAMPLING_OPTIONS[error.name]}'") from None
    return given


def sampling_settings(loaded, max_tokens, given: dict):
    """``(max_tokens, SamplingConfig)``: the options given, over the checkpoint's
    generation_config.json, over the built-in defaults."""
    from mlx_llm.generation.generation_config import GenerationDefaults, resolve_sampling_config

    defaults = getattr(loaded, "generation_defaults", GenerationDefaults())
    return resolve_sampling_config(defaults, max_tokens=max_tokens, **given)


_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def unescape_stop(text: str) -> str:
    """``\\n``, ``\\t`` and ``\\\\`` as newline, tab and backslash: a shell passes
    ``--stop "\\n\\n"`` as backslashes and letters. Other backslashes stay as typed."""
    return re.sub(r"\\([nt\\])", lambda match: _ESCAPES[match.group(1)], text)


def warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def valid_text(text: str, what: str) -> str:
    """``text`` with undecodable bytes replaced by U+FFFD, saying so on stderr.

    Python hands undecodable bytes of argv (and of stdin in a C.UTF-8 locale)
    over as lone surrogates, which no tokenizer accepts.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        warn(f"{what} is not valid UTF-8; its undecodable bytes were replaced with U+FFFD")
        return text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")


def read_stdin(what: str) -> str:
    """Standard input as text; undecodable bytes are replaced as in `valid_text`."""
    data = sys.stdin.buffer.read()
    return valid_text(data.decode("utf-8", errors="surrogateescape"), what)


def print_statistics(response) -> None:
    click.echo(
        f"\n[prompt: {response.prompt_tokens} tokens, {response.prompt_tps:.1f} tokens/s | "
        f"generation: {response.generation_tokens} tokens, {response.generation_tps:.1f} tokens/s | "
        f"time to first token: {response.time_to_first_token:.3f} s | peak memory: {response.peak_memory:.3f} GB | "
        f"finish: {response.finish_reason}]",
        err=True,
    )


def load_for_generation(model, dtype, revision, system, stop):
    """Check the text options, then load the model (the demo by default) and check that it
    generates: what generate and chat share.

    Returns:
        The model, its tokenizer, the system message and the stop strings (escapes applied).
    """
    from mlx_llm.generation.generate import check_can_generate
    from mlx_llm.model_files.loading import load

    if system is not None:
        system = valid_text(system, "the system message")
    stop = [unescape_stop(valid_text(text, "--stop")) for text in stop]
    model = resolve_model(model)
    loaded, tokenizer = load(model, dtype=dtype, revision=revision)
    check_can_generate(loaded, name=model)
    return loaded, tokenizer, system, stop


@click.command()
@sampling_options
@click.option("--prompt", "-p", required=True, help="The prompt, or '-' to read it from standard input.")
@click.option("--chat-template/--no-chat-template", default=None,
              help="Wrap the prompt in the model's chat template (default: when it has one).")
@click.option("--truncate-prompt", is_flag=True,
              help="Drop the oldest prompt tokens so that --max-tokens fit in the context.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the generated text (and warnings, on stderr).")
@library_errors
def generate(model, max_tokens, temp, top_k, top_p, min_p, repetition_penalty, seed, stop, system, max_kv_size,
             dtype, revision, prompt, chat_template, truncate_prompt, quiet) -> None:
    """Generate text from a prompt, streaming it to stdout; statistics go to stderr.

    Sampling options left unset come from the model's generation_config.json
    (as transformers reads it), else greedy decoding; --temp 0 is always greedy.
    """
    from mlx_llm.generation.generate import stream_generate

    given = given_sampling(temp, top_k, top_p, min_p, repetition_penalty)
    prompt = read_stdin("the prompt") if prompt == "-" else valid_text(prompt, "the prompt")
    if not prompt.strip():
        raise click.BadParameter("the prompt is empty", param_hint="--prompt")
    loaded, tokenizer, system, stop = load_for_generation(model, dtype, revision, system, stop)
    max_tokens, sampling = sampling_settings(loaded, max_tokens, given)
    use_template = tokenizer.chat_template is not None if chat_template is None else chat_template
    if use_template and tokenizer.chat_template is None:
        raise InputError("--chat-template was given but this model's tokenizer has no chat template")
    if system is not None and not use_template:
        raise InputError("--system needs a chat template (the model has none, or --no-chat-template was given)")
    if use_template:
        prompt = tokenizer.chat_prompt([{"role": "user", "content": prompt}], system=system)
    last = None
    for response in stream_generate(
        loaded, tokenizer, prompt, max_tokens, sampling=sampling, seed=seed, stop=stop,
        truncate_prompt=truncate_prompt, max_kv_size=max_kv_size, on_warning=warn,
    ):
        click.echo(response.text, nl=False)
        sys.stdout.flush()
        last = response
    click.echo()
    if not quiet and last is not None:
        print_statistics(last)


@click.command()
@sampling_options
@click.option("--quiet", "-q", is_flag=True, help="No statistics after each answer.")
@library_errors
def chat(model, max_tokens, temp, top_k, top_p, min_p, repetition_penalty, seed, stop, system, max_kv_size, dtype,
         revision, quiet) -> None:
    """Chat with a model in the terminal. The KV cache is kept between turns.

    Type a message and press Enter. /reset starts over, /exit (or Ctrl-D) quits,
    Ctrl-C stops the current answer.
    """
    from mlx_llm.generation.chat import ChatSession

    given = given_sampling(temp, top_k, top_p, min_p, repetition_penalty)
    loaded, tokenizer, system, stop = load_for_generation(model, dtype, revision, system, stop)
    if seed is not None:
        import mlx.core as mx

        mx.random.seed(seed)
    max_tokens, sampling = sampling_settings(loaded, max_tokens, given)
    session = ChatSession(loaded, tokenizer, system=system, max_kv_size=max_kv_size, sampling=sampling,
                          max_tokens=max_tokens, stop=stop, on_warning=warn)
    if isinstance(sys.stdin, io.TextIOWrapper):
        # Undecodable bytes then reach valid_text as surrogates, instead of a strict
        # decoder's UnicodeDecodeError losing the whole buffered input.
        sys.stdin.reconfigure(errors="surrogateescape")
    click.echo("Chat started: /reset starts over, /exit quits, Ctrl-C stops an answer.", err=True)
    while True:
        try:
            message = valid_text(input(">> "), "the message")
        except (EOFError, KeyboardInterrupt):
            click.echo(err=True)
            return
        except UnicodeDecodeError:  # a strict (non-UTF-8-mode) stdin: the line is lost, not the session
            click.echo("Error: the message is not valid UTF-8 text; type it again", err=True)
            continue
        command = message.strip()
        if command == "/exit":
            return
        if command == "/reset":
            session.reset()
            click.echo("[conversation reset]", err=True)
            continue
        if not command:
            continue
        last = None
        stream = session.send(message)
        try:
            for response in stream:
                click.echo(response.text, nl=False)
                sys.stdout.flush()
                last = response
        except KeyboardInterrupt:
            stream.close()
            click.echo("\n[stopped]", err=True)
        except ValueError as error:  # a template refusing this turn: the conversation goes on without it
            click.echo(f"Error: {error}", err=True)
            continue
        click.echo()
        if not quiet and last is not None:
            print_statistics(last)
