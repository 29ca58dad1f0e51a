"""``mlx-llm serve``: an OpenAI-compatible server for local models."""

from __future__ import annotations

import importlib.util

import click

from .errors import InputError

INSTALL_HINT = "mlx-llm serve needs the serve extra: pip install 'mlx-llm-kit[serve]'"


@click.command()
@click.option("--model", "-m", "models", multiple=True, required=True,
              help="A local folder, .gguf file or Hub id to serve, under this name; repeatable.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on; anything but loopback makes the server reachable from other machines.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option("--api-key", envvar="MLX_LLM_API_KEY",
              help="Require 'Authorization: Bearer KEY' (also read from MLX_LLM_API_KEY).")
@click.option("--max-kv-size", type=click.IntRange(min=2),
              help="Most positions one request may hold (prompt + completion); longer prompts get 400.")
@click.option("--max-models", default=1, show_default=True, type=click.IntRange(min=1),
              help="Most models loaded at once; the least recently used is unloaded.")
def serve(models, host, port, api_key, max_kv_size, max_models) -> None:
    """Serve models with the OpenAI API: chat, completions (streamed or not) and embeddings.

    Requests that arrive together are decoded together (continuous batching);
    models load on first use. Logs (one line per request) go to stderr.
    """
    if any(importlib.util.find_spec(name) is None for name in ("starlette", "uvicorn")):
        click.echo(f"Error: {INSTALL_HINT}", err=True)
        raise SystemExit(2)
    from mlx_llm.serve.registry import served_name
    from mlx_llm.serve.server import is_local_host, run

    served: dict[str, str] = {}
    for spec in models:
        name = served_name(spec)
        if name in served:
            raise click.BadParameter(f"{spec!r} is given twice", param_hint="--model")
        served[name] = spec
    if not is_local_host(host):
        lock = "" if api_key else "; set --api-key to require a key"
        click.echo(f"warning: --host {host} makes the server reachable from other machines{lock}", err=True)
    try:
        run(served, host=host, port=port, api_key=api_key, max_kv_size=max_kv_size, max_models=max_models,
            echo=lambda line: click.echo(line, err=True))
    except OSError as error:
        raise InputError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
