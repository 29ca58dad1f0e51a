"""``mlx-llm serve``: an OpenAI-compatible HTTP server with continuous batching.

Modules, by concern:

- `protocol`: request bodies as typed dataclasses, validated (no HTTP).
- `registry` / `worker`: served names -> models, loaded on first use, one
  thread per model owning all of its MLX work.
- `engine` / `batch_cache` / `prefix_cache`: continuous batching and the
  reuse of earlier requests' KV state.
- `prepare` / `responses`: prompts in, OpenAI objects out.
- `app` / `server`: the Starlette app and uvicorn (the ``serve`` extra).

Importing this package needs neither Starlette nor uvicorn; `app` and
`server.make_server` do.
"""

from .protocol import EmbeddingRequest, GenerationRequest, RequestError
from .registry import ModelRegistry

__all__ = ["EmbeddingRequest", "GenerationRequest", "ModelRegistry", "RequestError"]
