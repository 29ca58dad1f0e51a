"""Commands that train: ``tokenizer train``, ``train`` and ``eval``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .errors import InputError, library_errors

# mlx_llm.tokenizer_training.min_vocab_size() (GPT layout; BERT's needs one more, which the
# library reports), written out so that --help need not import sentencepiece; a test keeps them equal.
MIN_VOCAB_SIZE = 262


@click.group()
def tokenizer() -> None:
    """Train tokenizers."""


@tokenizer.command("train")
@click.option("--input", "inputs", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Text file, folder or JSONL; repeatable.")
@click.option("--vocab-size", required=True, type=click.IntRange(min=MIN_VOCAB_SIZE),
              help="Tokens, with 4 specials (5 with --bert) and 256 byte pieces; a corpus needs one per character too.")
@click.option("--type", "model_type", default="bpe", show_default=True, type=click.Choice(["bpe", "unigram"]))
@click.option("--bert", is_flag=True, help="Add BERT's [CLS] [SEP] [MASK] [PAD] [UNK] tokens.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@library_errors
def train_tokenizer_command(inputs, vocab_size, model_type, bert, out, overwrite) -> None:
    """Train a sentencepiece tokenizer (byte fallback) that mlx_llm.load and the trainer use."""
    from mlx_llm.tokenization import Tokenizer
    from mlx_llm.tokenizer_training import train_tokenizer

    folder = train_tokenizer(list(inputs), vocab_size, out, model_type=model_type, bert_special_tokens=bert,
                             overwrite=overwrite)
    click.echo(str(folder))
    click.echo(f"{Tokenizer.from_pretrained(folder).vocab_size} tokens", err=True)


def _size(value: str, arch: str):
    """A preset name, or the fields of a JSON config file, checked before any work starts."""
    from mlx_llm.pretrain import BERT_PRESETS, GPT_PRESETS, check_size_fields

    path = Path(value)
    if path.suffix != ".json":
        presets = GPT_PRESETS if arch == "gpt" else BERT_PRESETS
        if value not in presets:
            raise InputError(f"--config {value!r} is neither a {arch} size ({', '.join(presets)}) nor a .json file")
        return value
    if not path.is_file():
        raise InputError(f"--config {path} does not exist")
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InputError(f"--config {path} is not valid JSON: {error.msg} (line {error.lineno}, "
                         f"column {error.colno})") from None
    except UnicodeDecodeError:
        raise InputError(f"--config {path} is not UTF-8 text") from None
    try:
        check_size_fields(arch, fields)
    except ValueError as error:
        raise InputError(f"--config {path}: {error}") from None
    return fields


def _corpus_files(option: str, paths, pattern: str | None, report: bool = True) -> list[Path]:
    """The files --data (or --valid) stands for, listed on stderr: what is read is what was meant."""
    from mlx_llm.data.corpus_files import describe_files, list_corpus_files

    files = list_corpus_files(list(paths), pattern=pattern)
    if report:
        click.echo(f"{option}: {describe_files(files)}", err=True)
    return files


def _leader() -> bool:
    """True in the first process of a data-parallel run (and in a single process)."""
    import mlx.core as mx

    return mx.distributed.init().rank() == 0


@click.command()
@click.option("--arch", required=True, type=click.Choice(["gpt", "bert"]), help="Causal LM or masked LM + NSP.")
@click.option("--data", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Text file, folder or JSONL; repeatable.")
@click.option("--valid", "valid_data", multiple=True, type=click.Path(path_type=Path),
              help="Validation text (default: the last 10% of --data).")
@click.option("--data-glob", help="Files of --data/--valid folders to read, e.g. '*.md' (default: *.txt and *.jsonl).")
@click.option("--split-on-blank-lines", is_flag=True,
              help="A text file holds one document per blank-line separated block (BERT's format), not one in all.")
@click.option("--nsp-probability", type=click.FloatRange(0, 1),
              help="bert: chance that sentence B follows A (default 0.5; 1 trains on a single document).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run folder.")
@click.option("--config", "size", default="tiny", show_default=True,
              help="Size preset (gpt: tiny, demo, small, gpt2; bert: tiny, mini, small, base) or a JSON file.")
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="Tokenizer folder (otherwise one is trained; needs --vocab-size).")
@click.option("--vocab-size", type=click.IntRange(min=MIN_VOCAB_SIZE),
              help="Train a tokenizer of this size on --data (gpt at least 262, bert 263; more for real text).")
@click.option("--seq-len", default=256, show_default=True, type=click.IntRange(min=2))
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--grad-accum", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=1e-3, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--min-lr", type=click.FloatRange(min=0), help="Final learning rate (default lr / 10).")
@click.option("--warmup", default=100, show_default=True, type=click.IntRange(min=0))
@click.option("--steps", type=click.IntRange(min=1))
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True))
@click.option("--weight-decay", default=0.1, show_default=True, type=click.FloatRange(min=0))
@click.option("--dropout", default=0.1, show_default=True, type=click.FloatRange(0, 1))
@click.option("--eval-every", default=200, show_default=True, type=click.IntRange(min=0))
@click.option("--eval-batches", default=0, show_default=True, type=click.IntRange(min=0), help="0 = all.")
@click.option("--save-every", default=200, show_default=True, type=click.IntRange(min=0))
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "bfloat16"]))
@click.option("--save-dtype", type=click.Choice(["float32", "float16", "bfloat16"]), help="Store final weights so.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint.")
@click.option("--overwrite", is_flag=True, help="Start afresh in an --out that holds files (deletes them).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@library_errors
def train(arch, data, valid_data, data_glob, split_on_blank_lines, nsp_probability, out, size, tokenizer_dir, vocab_size, seq_len, batch_size, grad_accum, lr, min_lr, warmup,
          steps, epochs, weight_decay, dropout, eval_every, eval_batches, save_every, dtype, save_dtype, seed, resume,
          overwrite, quiet) -> None:
    """Pretrain a GPT or a BERT from scratch on local text.

    The run folder loads with mlx_llm.load and mlx-llm generate like a converted
    checkpoint; it also holds checkpoints/, metrics.jsonl and loss_curve.png.
    Data-parallel on several processes or machines: launch with mlx.launch.
    """
    from mlx_llm.pretrain import pretrain

    if (steps is None) == (epochs is None):
        raise click.UsageError("give exactly one of --steps and --epochs")
    if tokenizer_dir is None and vocab_size is None and not resume:
        raise click.UsageError("give --tokenizer DIR or --vocab-size N (to train a tokenizer on --data)")
    if nsp_probability is not None and arch != "bert":
        raise click.UsageError("--nsp-probability applies to --arch bert")
    preset = _size(size, arch)
    files = _corpus_files("--data", data, data_glob, report=False)
    valid_files = _corpus_files("--valid", valid_data, data_glob, report=False) if valid_data else None

    def list_files() -> None:  # once pretrain accepted the settings: a refused run prints only its error
        if _leader():
            from mlx_llm.data.corpus_files import describe_files

            click.echo(f"--data: {describe_files(files)}", err=True)
            if valid_files:
                click.echo(f"--valid: {describe_files(valid_files)}", err=True)

    result = pretrain(
        arch, files, out, preset=preset, valid_data=valid_files, tokenizer=tokenizer_dir, vocab_size=vocab_size, seq_len=seq_len,
        batch_size=batch_size, grad_accum=grad_accum, learning_rate=lr, min_learning_rate=min_lr,
        warmup_steps=warmup, steps=steps, epochs=epochs, weight_decay=weight_decay, dropout=dropout,
        eval_every=eval_every, eval_batches=eval_batches, save_every=save_every, dtype=dtype, save_dtype=save_dtype,
        seed=seed, resume=resume, overwrite=overwrite, progress=not quiet,
        split_on_blank_lines=split_on_blank_lines,
        next_sentence_probability=0.5 if nsp_probability is None else nsp_probability, on_start=list_files,
    )
    import mlx.core as mx

    if mx.distributed.init().rank() != 0:
        return  # one report per run, from the first process
    click.echo(str(result.out))
    summary = {"parameters": result.num_parameters, "steps": result.train.steps, "tokens": result.train.tokens,
               "seconds": round(result.train.seconds, 1), "final_train_loss": result.train.final_loss,
               **result.validation}
    click.echo(json.dumps(summary), err=True)


@click.command("eval")
@click.argument("model")
@click.option("--data", multiple=True, required=True, type=click.Path(path_type=Path, exists=True),
              help="Text file, folder or JSONL; repeatable.")
@click.option("--data-glob", help="Files of --data folders to read, e.g. '*.md' (default: *.txt and *.jsonl).")
@click.option("--seq-len", type=click.IntRange(min=2), help="Window length (default: the model's context).")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), help="Cast the weights.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no list of the files read.")
@library_errors
def evaluate(model, data, data_glob, seq_len, batch_size, dtype, quiet) -> None:
    """Loss, perplexity, nats per character and bits per byte of MODEL on text (one JSON object)."""
    from mlx_llm.blocks.model_output import DECODER
    from mlx_llm.model_files.loading import load
    from mlx_llm.pretrain import evaluate_text

    files = _corpus_files("--data", data, data_glob, report=False)
    loaded, tokenizer = load(model, dtype=dtype)
    if loaded.kind != DECODER:
        raise click.UsageError("mlx-llm eval measures causal language models (GPT-2, Llama family)")
    if not quiet:  # once the inputs are good: a refused run prints only its error
        from mlx_llm.data.corpus_files import describe_files

        click.echo(f"--data: {describe_files(files)}", err=True)
    click.echo(json.dumps(evaluate_text(loaded, tokenizer, files, seq_len=seq_len, batch_size=batch_size,
                                          progress=not quiet)))
