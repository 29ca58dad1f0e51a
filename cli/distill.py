"""``mlx-llm distill``: compress a teacher into a smaller, faster student."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mlx_llm.distillation.tasks import DISTILL_TASKS

from .errors import library_errors


def _layer_map(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of layer numbers, e.g. 0,2,4",
                                 param_hint="--layer-map") from None


@click.command()
@click.option("--teacher", required=True, help="Teacher folder or Hub id (classify/tag: a fine-tuned run).")
@click.option("--task", required=True, type=click.Choice(list(DISTILL_TASKS)),
              help="Masked-LM (encoders), classification, tagging, or causal LM (decoders).")
@click.option("--data", multiple=True, required=True, type=click.Path(path_type=Path, exists=True),
              help="Training data: text (mlm, lm; repeatable) or the fine-tuning format (classify, tag).")
@click.option("--valid", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Validation data (mlm/lm default: the last 10% of --data).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run folder for the student.")
@click.option("--student-layers", type=click.IntRange(min=1), help="Copy this many teacher layers.")
@click.option("--student-config", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="JSON file of config fields for a fresh student (e.g. fewer layers, narrower).")
@click.option("--layer-map", help="Teacher layer of each student layer, e.g. 0,2,4 (default: every other).")
@click.option("--temperature", default=2.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--alpha-soft", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="Teacher's soft targets (KL x T^2).")
@click.option("--alpha-hard", default=1.0, show_default=True, type=click.FloatRange(min=0), help="The data's labels.")
@click.option("--alpha-cos", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="Cosine of last hidden states (DistilBERT).")
@click.option("--alpha-hidden", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="MSE of matched layers' states (TinyBERT).")
@click.option("--alpha-attention", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="MSE of matched layers' attention scores (TinyBERT).")
@click.option("--alpha-pkd", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="Normalized [CLS] distance of matched layers (BERT-PKD).")
@click.option("--divergence", default="forward", show_default=True, type=click.Choice(["forward", "reverse", "jsd"]),
              help="Causal LMs: forward KL, reverse KL or generalized Jensen-Shannon.")
@click.option("--jsd-beta", default=0.5, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True))
@click.option("--cache-teacher", is_flag=True, help="classify/tag: compute the teacher's logits once, then train.")
@click.option("--text-column", help="Classification data without a teacher run: the text column.")
@click.option("--text-pair-column", help="... and the second text column.")
@click.option("--label-column", default="label", show_default=True)
@click.option("--max-length", default=128, show_default=True, type=click.IntRange(min=2),
              help="Truncation length (mlm/lm: the sequence length).")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--epochs", default=3.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--steps", type=click.IntRange(min=1), help="Optimizer steps (overrides --epochs).")
@click.option("--lr", default=1e-4, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--warmup-ratio", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True))
@click.option("--weight-decay", default=0.0, show_default=True, type=click.FloatRange(min=0))
@click.option("--eval-every", type=click.IntRange(min=1), help="Validate every N steps (default: each epoch).")
@click.option("--eval-batches", default=0, show_default=True, type=click.IntRange(min=0),
              help="Validate on the first N batches (0 = all).")
@click.option("--save-every", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint.")
@click.option("--overwrite", is_flag=True, help="Start afresh in an --out that holds files (deletes them).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@library_errors
def distill(teacher, task, data, valid, out, student_layers, student_config, layer_map, temperature, alpha_soft,
            alpha_hard, alpha_cos, alpha_hidden, alpha_attention, alpha_pkd, divergence, jsd_beta, cache_teacher,
            text_column, text_pair_column, label_column, max_length, batch_size, epochs, steps, lr, warmup_ratio,
            weight_decay, eval_every, eval_batches, save_every, seed, resume, overwrite, quiet) -> None:
    """Distill TEACHER into a smaller student.

    Prints the student folder on stdout; on stderr, the teacher's and student's
    parameters, the measured inference speed-up on the same batch and both
    validation qualities (also in OUT/distill.json). The student loads,
    predicts and evaluates like any fine-tuned model. A non-empty OUT is
    refused unless --resume or --overwrite is given; OUT is never the TEACHER folder.
    """
    from mlx_llm.distillation.distill import DistillConfig
    from mlx_llm.distillation.distill import distill as run

    config = DistillConfig(
        task=task, teacher=teacher, data=[str(path) for path in data], out=str(out),
        valid=None if valid is None else str(valid), student_layers=student_layers,
        student_config=None if student_config is None else str(student_config), layer_map=_layer_map(layer_map),
        temperature=temperature, alpha_soft=alpha_soft, alpha_hard=alpha_hard, alpha_cos=alpha_cos,
        alpha_hidden=alpha_hidden, alpha_attention=alpha_attention, alpha_pkd=alpha_pkd, divergence=divergence,
        jsd_beta=jsd_beta, cache_teacher=cache_teacher, text_column=text_column, text_pair_column=text_pair_column,
        label_column=label_column, max_length=max_length, batch_size=batch_size, epochs=epochs, steps=steps,
        learning_rate=lr, warmup_ratio=warmup_ratio, weight_decay=weight_decay, eval_every=eval_every,
        eval_batches=eval_batches, save_every=save_every, seed=seed,
    )
    result = run(config, resume=resume, progress=not quiet, overwrite=overwrite)
    click.echo(str(result.out))
    click.echo(
        f"teacher {result.teacher_parameters:,} parameters, {result.teacher_examples_per_second:,.1f} examples/s; "
        f"student {result.student_parameters:,} parameters, {result.student_examples_per_second:,.1f} examples/s "
        f"({result.speedup:.2f}x faster)", err=True)
    click.echo(json.dumps({"teacher": result.teacher_metrics, "student": result.student_metrics,
                           "layer_map": result.layer_map}), err=True)
