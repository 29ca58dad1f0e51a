"""Commands that convert and inspect checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .errors import library_errors


@click.command()
@click.argument("source")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), help="Cast floating weights.")
@click.option("--quantize", is_flag=True, help="Quantize linear and embedding layers.")
@click.option("--bits", default=4, show_default=True, type=click.Choice(["2", "3", "4", "5", "6", "8"]),
              help="Bits per weight with --quantize.")
@click.option("--group-size", default=64, show_default=True, type=click.Choice(["32", "64", "128"]),
              help="Weights per quantization group.")
@click.option("--revision", help="Hub branch, tag or commit of SOURCE.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@library_errors
def convert(source: str, out: Path, dtype: str | None, quantize: bool, bits: str, group_size: str,
            revision: str | None, overwrite: bool) -> None:
    """Convert SOURCE (a local folder or Hub repository id) to an MLX folder that
    loads with no network."""
    from mlx_llm.model_files.hub import check_output_dir
    from mlx_llm.model_files.loading import convert as convert_checkpoint

    if not quantize and (bits != "4" or group_size != "64"):
        raise click.UsageError("--bits and --group-size take effect only with --quantize")
    check_output_dir(out, overwrite, inputs={"SOURCE": source})  # before a download that the folder would refuse
    report = convert_checkpoint(source, out, dtype=dtype, quantize=quantize, bits=int(bits),
                                group_size=int(group_size), revision=revision, overwrite=overwrite)
    click.echo(str(report.out))
    click.echo(
        f"{report.num_parameters:,} parameters, {report.bytes_written / 1e6:.1f} MB written in "
        f"{report.seconds:.1f} s ({report.megabytes_per_second:.0f} MB/s)",
        err=True,
    )


@click.command()
@click.argument("model")
@click.option("--revision", help="Hub branch, tag or commit.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@library_errors
def info(model: str, revision: str | None, as_json: bool) -> None:
    """Architecture, parameters, dtype, quantization and context length of MODEL."""
    from mlx_llm.model_files.loading import describe

    details = describe(model, revision=revision)
    if as_json:
        click.echo(json.dumps(details.as_dict()))
        return
    quantization = (
        f"{details.quantization['bits']}-bit, group size {details.quantization['group_size']}"
        if details.quantization
        else "none"
    )
    rows = [
        ("path", str(details.path)),
        ("architecture", f"{details.architecture} ({details.model_type})"),
        *((("family", details.family),) if details.family else ()),
        *((("features", ", ".join(details.features)),) if details.features else ()),
        ("parameters", f"{details.num_parameters:,} ({details.num_parameters / 1e6:.1f}M)"),
        ("dtype", details.dtype),
        ("quantization", quantization),
        ("context length", str(details.context_length) if details.context_length else "unbounded (relative positions)"),
        ("size on disk", f"{details.size_bytes / 1e6:.1f} MB"),
        ("format", "GGUF" if details.file_format == "gguf" else "mlx_llm" if details.converted else "Hugging Face"),
        *(("note", note) for note in details.notes),  # GGUF: which tensor types stay quantized, which are dequantized
    ]
    for name, value in rows:
        click.echo(f"{name:<15} {value}")


@click.command()
@click.argument("model")
@click.argument("texts", nargs=-1)
@click.option("--input", "input_file", type=click.File("r"), help="Read texts from FILE, one per line ('-' for stdin).")
@click.option("--pooling", default="mean", show_default=True, type=click.Choice(["mean", "cls", "last"]))
@click.option("--normalize/--no-normalize", default=True, show_default=True, help="Unit-length embeddings.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--max-length", type=click.IntRange(min=1), help="Truncate longer inputs (tokens).")
@click.option("--revision", help="Hub branch, tag or commit.")
@library_errors
def embed(model: str, texts: tuple[str, ...], input_file, pooling: str, normalize: bool, batch_size: int,
          max_length: int | None, revision: str | None) -> None:
    """Embed TEXTS (or lines of --input) with MODEL; prints one JSON object per input:
    {"text": ..., "embedding": [...]}."""
    from mlx_llm.embeddings import embed as embed_texts
    from mlx_llm.model_files.loading import load

    inputs = list(texts)
    if input_file is not None:
        inputs += [line.rstrip("\n") for line in input_file if line.strip()]
    if not inputs:
        raise click.UsageError("give TEXTS or --input FILE")
    loaded_model, tokenizer = load(model, revision=revision)
    vectors = embed_texts(loaded_model, tokenizer, inputs, pooling=pooling, normalize=normalize,
                          batch_size=batch_size, max_length=max_length)
    for text, vector in zip(inputs, vectors.tolist()):
        click.echo(json.dumps({"text": text, "embedding": [round(value, 7) for value in vector]}))
