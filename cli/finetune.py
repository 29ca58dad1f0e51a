"""Commands that adapt and use fine-tuned models: ``finetune``, ``predict``,
``evaluate``, ``fuse`` and ``export``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from mlx_llm.tasks import TASKS

from .errors import InputError, library_errors


@click.command()
@click.option("--task", required=True, type=click.Choice(list(TASKS)),
              help=" ".join(f"{name}: {task.help}" for name, task in TASKS.items()))
@click.option("--model", required=True, help="Pretrained model folder or Hub id.")
@click.option("--train", "train_file", required=True, type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="CSV/TSV/JSONL (classify), CoNLL or JSONL (tag), JSONL text / prompt+completion / messages (lm), "
                   "JSONL/CSV/TSV input and target (seq2seq).")
@click.option("--valid", "valid_file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Validation data in the same format: metrics, best checkpoint, early stopping.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run folder.")
@click.option("--text-column", help="Text column (default: text, sentence, sentence1 or question; seq2seq: input).")
@click.option("--text-pair-column", help="Second text column, for sentence-pair tasks.")
@click.option("--label-column", help="Label column (default: label; seq2seq: the target, default target).")
@click.option("--problem", default="single_label", show_default=True,
              type=click.Choice(["single_label", "multi_label", "regression"]), help="Classification kind.")
@click.option("--scheme", type=click.Choice(["IOB2", "IOBES"]), help="Tag scheme (default: from the tags).")
@click.option("--lora", is_flag=True, help="Train LoRA adapters instead of every weight.")
@click.option("--rank", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--alpha", default=16.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--lora-dropout", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True))
@click.option("--lora-layers", type=click.IntRange(min=1), help="Adapt the last N layers (default: all).")
@click.option("--target-modules", help="Comma-separated linear layers to adapt (default: q_proj,v_proj; qkv_proj for GPT-2).")
@click.option("--quantize", type=click.Choice(["4", "8"]), help="QLoRA: quantize the frozen base to 4 or 8 bits.")
@click.option("--epochs", default=3.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--steps", type=click.IntRange(min=1), help="Optimizer steps (overrides --epochs).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Peak learning rate (5e-5; LoRA 2e-4).")
@click.option("--warmup-ratio", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True))
@click.option("--weight-decay", default=0.0, show_default=True, type=click.FloatRange(min=0))
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--grad-accum", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--max-length", default=128, show_default=True, type=click.IntRange(min=2),
              help="Truncate inputs to this many tokens.")
@click.option("--mask-prompt/--no-mask-prompt", default=True, show_default=True,
              help="Instruction tuning: no loss on prompt tokens.")
@click.option("--eval-every", type=click.IntRange(min=1), help="Validate every N steps (default: each epoch).")
@click.option("--best-metric", help="Validation metric that picks the kept weights (default: by task).")
@click.option("--early-stopping", "patience", default=0, show_default=True, type=click.IntRange(min=0),
              help="Stop after N evaluations without improvement (0 = never).")
@click.option("--save-every", default=0, show_default=True, type=click.IntRange(min=0),
              help="Checkpoint every N steps.")
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "bfloat16"]))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint.")
@click.option("--overwrite", is_flag=True, help="Start afresh in an --out that holds files (deletes them).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@library_errors
def finetune(task, model, train_file, valid_file, out, text_column, text_pair_column, label_column, problem, scheme,
             lora, rank, alpha, lora_dropout, lora_layers, target_modules, quantize, epochs, steps, lr, warmup_ratio,
             weight_decay, batch_size, grad_accum, max_length, mask_prompt, eval_every, best_metric, patience,
             save_every, dtype, seed, resume, overwrite, quiet) -> None:
    """Fine-tune MODEL for classification, tagging, instruction following or sequence to sequence.

    Prints the run folder on stdout and a JSON summary (validation metrics,
    examples/s, parameters) on stderr. The folder loads with mlx-llm predict,
    evaluate, generate and mlx_llm.load. A non-empty OUT is refused unless
    --resume or --overwrite is given; OUT is never the MODEL folder.
    """
    from mlx_llm.finetune import FinetuneConfig
    from mlx_llm.finetune import finetune as run

    config = FinetuneConfig(
        task=task, model=model, train=str(train_file), out=str(out),
        valid=None if valid_file is None else str(valid_file),
        text_column=text_column, text_pair_column=text_pair_column, label_column=label_column, problem=problem,
        scheme=scheme, max_length=max_length, batch_size=batch_size, grad_accum=grad_accum, epochs=epochs,
        steps=steps, learning_rate=lr, warmup_ratio=warmup_ratio, weight_decay=weight_decay, lora=lora, rank=rank,
        alpha=alpha, lora_dropout=lora_dropout, lora_layers=lora_layers,
        target_modules=None if target_modules is None else tuple(m.strip() for m in target_modules.split(",")),
        quantize=None if quantize is None else int(quantize), mask_prompt=mask_prompt, eval_every=eval_every,
        best_metric=best_metric, early_stopping_patience=patience, save_every=save_every, dtype=dtype, seed=seed,
    )
    result = run(config, resume=resume, progress=not quiet, overwrite=overwrite)
    click.echo(str(result.out))
    summary = {"steps": result.steps, "seconds": round(result.seconds, 1),
               "examples_per_second": round(result.examples_per_second, 2),
               "parameters": result.num_parameters, "trainable_parameters": result.trainable_parameters,
               "best": result.best, **{f"valid_{name}": value for name, value in result.metrics.items()}}
    click.echo(json.dumps(summary), err=True)


@click.command()
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="A run folder of mlx-llm finetune (or mlx-llm fuse).")
@click.option("--input", "input_file", required=True, type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Records in the training format; labels are optional.")
@click.option("--output", type=click.Path(path_type=Path, dir_okay=False), help="JSONL file (default: stdout).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--max-tokens", default=256, show_default=True, type=click.IntRange(min=1),
              help="Instruction and seq2seq models: longest completion / target.")
@click.option("--temp", default=0.0, show_default=True, type=click.FloatRange(min=0), help="Sampling temperature.")
@click.option("--text-column", help="Classification and seq2seq: the text (input) column (default: the run's).")
@click.option("--text-pair-column", help="... and the second text column (default: the run's).")
@library_errors
def predict(model_dir, input_file, output, batch_size, max_tokens, temp, text_column, text_pair_column) -> None:
    """Predict with a fine-tuned model: one JSON object per input record
    (label and probabilities, tags per word, a completion, or a generated target)."""
    from mlx_llm.finetune import predict as run
    from mlx_llm.finetune import write_predictions

    if output is not None and not output.parent.is_dir():
        # Checked before the model runs; no folder is created that the user did not ask for.
        raise InputError(f"--output {output}: the folder {output.parent} does not exist; create it first")
    try:
        columns = {"text_column": text_column, "text_pair_column": text_pair_column}
        count = write_predictions(run(model_dir, input_file, batch_size=batch_size, max_tokens=max_tokens,
                                      temperature=temp, columns=columns), output)
    except BrokenPipeError:  # the reader stopped early (`| head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    click.echo(f"{count} predictions" + (f" written to {output}" if output else ""), err=True)


@click.command()
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="A run folder of mlx-llm finetune (or mlx-llm fuse).")
@click.option("--data", "data_file", required=True, type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Labelled data in the training format.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--text-column", help="Classification and seq2seq: the text (input) column (default: the run's).")
@click.option("--text-pair-column", help="... the second text column (default: the run's).")
@click.option("--label-column", help="... the label (target) column (default: the run's).")
@library_errors
def evaluate(model_dir, data_file, batch_size, text_column, text_pair_column, label_column) -> None:
    """The task's metrics of a fine-tuned model on labelled data (one JSON object):
    accuracy and macro-F1, entity precision/recall/F1, loss and perplexity, or seq2seq loss and exact match."""
    from mlx_llm.finetune import evaluate as run

    columns = {"text_column": text_column, "text_pair_column": text_pair_column, "label_column": label_column}
    click.echo(json.dumps(run(model_dir, data_file, batch_size=batch_size, columns=columns)))


@click.command()
@click.argument("model_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--dequantize", is_flag=True, help="Write float weights even if the base was quantized.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@library_errors
def fuse(model_dir, out, dequantize, overwrite) -> None:
    """Merge the LoRA adapters of MODEL_DIR into its base model: a standalone folder."""
    from mlx_llm.finetune import fuse as run

    click.echo(str(run(model_dir, out, dequantize=dequantize, overwrite=overwrite)))


@click.command()
@click.argument("model_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--to-hf", "out", required=True, type=click.Path(path_type=Path),
              help="Folder that transformers loads with the matching AutoModelFor... class.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), help="Cast the weights.")
@click.option("--overwrite", is_flag=True, help="Replace the folder if it exists.")
@library_errors
def export(model_dir, out, dtype, overwrite) -> None:
    """Export MODEL_DIR (converted, trained, fine-tuned or LoRA) for Hugging Face transformers."""
    from mlx_llm.model_files.export import export_to_hf

    click.echo(str(export_to_hf(model_dir, out, dtype=dtype, overwrite=overwrite)))
