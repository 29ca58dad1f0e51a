"""Commands that generate text: ``generate`` and ``chat``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .errors import InputError, library_errors


def resolve_model(model: str | None) -> str:
    if model is not None:
        return model
    # The built-in demo model ships inside the package (see weights/README.md).
    from mlx_llm.demo import demo_model_path

    return str(demo_model_path())


def sampling_options(command):
    """The sampling options shared by generate and chat."""
    options = [
        click.option("--model", "-m", help="Local folder or Hub repo id (default: the built-in demo model)."),
        click.option("--max-tokens", default=256, show_default=True, type=click.IntRange(min=1)),
        click.option("--temp", default=0.0, show_default=True, type=float, help="Sampling temperature; 0 is greedy."),
        click.option("--top-k", default=0, show_default=True, type=click.IntRange(min=0), help="0 = off."),
        click.option("--top-p", default=1.0, show_default=True, type=float, help="Nucleus probability; 1 = off."),
        click.option("--min-p", default=0.0, show_default=True, type=float, help="0 = off."),
        click.option("--repetition-penalty", default=1.0, show_default=True, type=float, help="1 = off."),
        click.option("--seed", type=int, help="Seed for sampling."),
        click.option("--stop", multiple=True, help="Stop at this text (not printed); repeatable."),
        click.option("--system", help="System message (chat template)."),
        click.option("--max-kv-size", type=click.IntRange(min=2), help="Bound the KV cache to N positions."),
        click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), help="Cast the weights."),
        click.option("--revision", help="Hub branch, tag or commit."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def check_sampling(temp: float, top_p: float, min_p: float, repetition_penalty: float) -> None:
    # Checked here too so that the message names the option.
    if temp < 0:
        raise click.BadParameter(f"must be >= 0, got {temp}", param_hint="--temp")
    if not 0 < top_p <= 1:
        raise click.BadParameter(f"must be in (0, 1], got {top_p}", param_hint="--top-p")
    if not 0 <= min_p < 1:
        raise click.BadParameter(f"must be in [0, 1), got {min_p}", param_hint="--min-p")
    if repetition_penalty <= 0:
        raise click.BadParameter(f"must be > 0, got {repetition_penalty}", param_hint="--repetition-penalty")


def print_statistics(response) -> None:
    click.echo(
        f"\n[prompt: {response.prompt_tokens} tokens, {response.prompt_tps:.1f} tokens/s | "
        f"generation: {response.generation_tokens} tokens, {response.generation_tps:.1f} tokens/s | "
        f"time to first token: {response.time_to_first_token:.3f} s | peak memory: {response.peak_memory:.3f} GB | "
        f"finish: {response.finish_reason}]",
        err=True,
    )


@click.command()
@sampling_options
@click.option("--prompt", "-p", required=True, help="The prompt, or '-' to read it from standard input.")
@click.option("--chat-template/--no-chat-template", default=None,
              help="Wrap the prompt in the model's chat template (default: when it has one).")
@click.option("--truncate-prompt", is_flag=True, help="Keep the end of a prompt longer than the context.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the generated text.")
@library_errors
def generate(model, max_tokens, temp, top_k, top_p, min_p, repetition_penalty, seed, stop, system, max_kv_size,
             dtype, revision, prompt, chat_template, truncate_prompt, quiet) -> None:
    """Generate text from a prompt, streaming it to stdout; statistics go to stderr."""
    from mlx_llm.generate import stream_generate
    from mlx_llm.loading import load

    check_sampling(temp, top_p, min_p, repetition_penalty)
    if prompt == "-":
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise click.BadParameter("the prompt is empty", param_hint="--prompt")
    loaded, tokenizer = load(resolve_model(model), dtype=dtype, revision=revision)
    use_template = tokenizer.chat_template is not None if chat_template is None else chat_template
    if use_template and tokenizer.chat_template is None:
        raise InputError("--chat-template was given but this model's tokenizer has no chat template")
    if system is not None and not use_template:
        raise InputError("--system needs a chat template (the model has none, or --no-chat-template was given)")
    if use_template:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    last = None
    for response in stream_generate(
        loaded, tokenizer, prompt, max_tokens=max_tokens, temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p,
        repetition_penalty=repetition_penalty, seed=seed, stop=stop, truncate_prompt=truncate_prompt,
        max_kv_size=max_kv_size,
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
    from mlx_llm.chat import ChatSession
    from mlx_llm.loading import load

    check_sampling(temp, top_p, min_p, repetition_penalty)
    loaded, tokenizer = load(resolve_model(model), dtype=dtype, revision=revision)
    if seed is not None:
        import mlx.core as mx

        mx.random.seed(seed)
    session = ChatSession(loaded, tokenizer, system=system, max_kv_size=max_kv_size, max_tokens=max_tokens,
                          temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p,
                          repetition_penalty=repetition_penalty, stop=stop)
    click.echo("Chat started: /reset starts over, /exit quits, Ctrl-C stops an answer.", err=True)
    while True:
        try:
            message = input(">> ")
        except (EOFError, KeyboardInterrupt):
            click.echo(err=True)
            return
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
        click.echo()
        if not quiet and last is not None:
            print_statistics(last)
