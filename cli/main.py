"""``mlx-llm``: each command parses its options and calls one library function."""

from __future__ import annotations

import os
import sys

import click

import mlx_llm

from .distill import distill
from .finetune import evaluate as evaluate_task
from .finetune import export, finetune, fuse, predict
from .generate import chat, generate
from .models import convert, embed, info
from .serve import serve
from .train import evaluate, tokenizer, train

# A reader that stops early (`mlx-llm generate ... | head -1`) took what it wanted: exit
# quietly with 0, as `predict` always has, rather than SIGPIPE's 141, which fails
# `set -o pipefail` scripts for ordinary use (README, "Exit codes").
EXIT_BROKEN_PIPE = 0


class Main(click.Group):
    """The command group, exiting quietly when stdout's reader goes away."""

    def main(self, args=None, *rest, **kwargs):
        from .blas import reexec_with_mkl, show_library_warnings

        if args is None:  # run as the program, from sys.argv (CliRunner passes its arguments)
            reexec_with_mkl()  # Linux: MKL in place of the reference BLAS, before anything is read (cli/blas.py)
        show_library_warnings()
        return super().main(args, *rest, **kwargs)

    def invoke(self, ctx: click.Context):
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()  # a closed pipe shows up here, not in the interpreter's exit flush
            return result
        except BrokenPipeError:
            try:  # later flushes (at interpreter exit) must not fail again
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):  # stdout without a file descriptor (CliRunner)
                pass
            ctx.exit(EXIT_BROKEN_PIPE)


@click.group(cls=Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(mlx_llm.__version__, prog_name="mlx-llm")
def main() -> None:
    """Transformers on MLX: build, train, fine-tune, distill and run language models."""


@main.command()
@click.option("--batch-size", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--source-length", default=12, show_default=True, type=click.IntRange(min=1))
@click.option("--target-length", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--vocab-size", default=1000, show_default=True, type=click.IntRange(min=2))
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "float16", "bfloat16"]))
@click.option("--seed", default=0, show_default=True, type=int)
def demo(batch_size: int, source_length: int, target_length: int, vocab_size: int, dtype: str, seed: int) -> None:
    """Build a small encoder-decoder Transformer and print its output shape."""
    from mlx_llm.model_files.demo import run_demo

    result = run_demo(batch_size, source_length, target_length, vocab_size, dtype, seed)
    click.echo(
        f"EncoderDecoder: {result.num_parameters:,} parameters ({result.dtype}); "
        f"source {result.source_shape} + target {result.target_shape} -> logits {result.logits_shape}"
    )
    click.echo(f"forward pass: {result.seconds * 1000:.1f} ms", err=True)


main.add_command(convert)
main.add_command(info)
main.add_command(embed)
main.add_command(generate)
main.add_command(chat)
main.add_command(tokenizer)
main.add_command(train)
main.add_command(evaluate)
main.add_command(finetune)
main.add_command(predict)
main.add_command(evaluate_task)
main.add_command(fuse)
main.add_command(export)
main.add_command(distill)
main.add_command(serve)

if __name__ == "__main__":
    main()
