"""The Starlette application: routes, OpenAI error objects, server-sent events, auth, body limit, logs.

Handlers never touch MLX: they parse the body (`protocol`), get the model's
worker (`registry`, loading it in a thread-pool thread), tokenize the prompt
(`prepare`), hand a `Sequence` to the worker and relay its events.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from . import responses
from .engine import DoneEvent, ErrorEvent, Sequence, TokenEvent
from .prepare import prepare
from .protocol import GenerationRequest, RequestError, parse_chat, parse_completion, parse_embedding
from .registry import ModelRegistry
from .worker import EMBED, EmbeddingJob, EmbeddingResult, ModelWorker, WorkerClosed

log = logging.getLogger("mlx_llm.serve")

MAX_BODY_BYTES = 4 * 2**20
# How often a non-streamed request checks whether its client is still there.
DISCONNECT_POLL_SECONDS = 0.5


def error_response(error: RequestError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


class _Log:
    """What the one log line of a request says."""

    def __init__(self, request: Request):
        self.start = time.perf_counter()
        self.route = f"{request.method} {request.url.path}"
        self.model = "-"
        self.tokens = "-"

    def done(self, status: int) -> None:
        log.info("%s model=%s tokens=%s time=%.3fs status=%d", self.route, self.model, self.tokens,
                 time.perf_counter() - self.start, status)


def _usage_text(done: DoneEvent) -> str:
    return f"{done.prompt_tokens}+{done.completion_tokens} (cached {done.cached_tokens})"


class Server:
    """The handlers, sharing the registry and the settings.

    Args:
        registry: The served models.
        api_key: When set, every route but ``/health`` needs ``Authorization: Bearer <api_key>``.
        max_body_bytes: Larger request bodies get 413.
    """

    def __init__(self, registry: ModelRegistry, api_key: str | None = None, max_body_bytes: int = MAX_BODY_BYTES):
        self.registry = registry
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes

    # -- plumbing ---------------------------------------------------------------------------

    def _check_auth(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        expected = f"Bearer {self.api_key}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise RequestError("invalid or missing API key: send 'Authorization: Bearer <key>'", status=401,
                               code="invalid_api_key")

    async def _json(self, request: Request):
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            raise RequestError(f"the request body is larger than {self.max_body_bytes} bytes", status=413,
                               code="body_too_large")
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > self.max_body_bytes:
                raise RequestError(f"the request body is larger than {self.max_body_bytes} bytes", status=413,
                                   code="body_too_large")
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as error:
            raise RequestError(f"the request body is not valid JSON: {error}", code="invalid_json") from None

    async def _worker(self, name: str) -> ModelWorker:
        return await run_in_threadpool(self.registry.get, name)

    async def _submit(self, name: str, make_job) -> tuple[ModelWorker, object]:
        """Submit a job built by ``make_job(worker)``; a model unloaded in between is loaded again."""
        for _ in range(3):
            worker = await self._worker(name)
            job = await make_job(worker)
            try:
                worker.submit(job)
                return worker, job
            except WorkerClosed:
                continue
        raise RequestError(f"the model '{name}' is being unloaded and loaded too often; try again", status=503,
                           code="model_busy", type="server_error")

    def route(self, handler):
        """Wrap a handler: auth, OpenAI error objects for every failure, one log line per request."""

        async def endpoint(request: Request) -> Response:
            entry = _Log(request)
            try:
                self._check_auth(request)
                response = await handler(request, entry)
            except RequestError as error:
                entry.done(error.status)
                return error_response(error)
            except Exception:  # a bug: the client gets a 500 object, the traceback goes to the log only
                log.exception("%s failed", entry.route)
                entry.done(500)
                return error_response(RequestError("internal server error", status=500, type="server_error"))
            if not isinstance(response, StreamingResponse):  # a stream logs when it ends
                entry.done(response.status_code)
            return response

        return endpoint

    # -- routes -----------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "models": self.registry.names, "loaded": self.registry.loaded_names()})

    async def models(self, request: Request, entry: _Log) -> Response:
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "mlx-llm"} for name in self.registry.names]
        return JSONResponse({"object": "list", "data": data})

    async def chat(self, request: Request, entry: _Log) -> Response:
        return await self._generate(request, entry, parse_chat(await self._json(request)))

    async def completions(self, request: Request, entry: _Log) -> Response:
        return await self._generate(request, entry, parse_completion(await self._json(request)))

    async def embeddings(self, request: Request, entry: _Log) -> Response:
        parsed = parse_embedding(await self._json(request))
        entry.model = parsed.model
        loop = asyncio.get_running_loop()
        results: asyncio.Queue = asyncio.Queue()

        async def make_job(worker: ModelWorker) -> EmbeddingJob:
            if worker.kind != EMBED:
                raise RequestError(f"the model '{parsed.model}' generates text; /v1/embeddings serves encoder "
                                   "models (BERT family)", param="model", code="model_not_embedding")
            return EmbeddingJob(list(parsed.inputs), lambda result: loop.call_soon_threadsafe(results.put_nowait,
                                                                                              result))

        await self._submit(parsed.model, make_job)
        result = await results.get()
        if isinstance(result, ErrorEvent):
            raise RequestError(result.message, status=result.status, type="server_error")
        assert isinstance(result, EmbeddingResult)
        entry.tokens = str(result.prompt_tokens)
        return JSONResponse(responses.embeddings(parsed.model, result.vectors, result.prompt_tokens,
                                                 parsed.encoding_format))

    # -- generation -------------------------------------------------------------------------

    async def _generate(self, request: Request, entry: _Log, parsed: GenerationRequest) -> Response:
        entry.model = parsed.model
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(event) -> None:  # called in the worker thread
            loop.call_soon_threadsafe(events.put_nowait, event)

        async def make_job(worker: ModelWorker) -> Sequence:
            ids, settings = await run_in_threadpool(prepare, worker, parsed)
            return Sequence(ids, settings, emit)

        worker, sequence = await self._submit(parsed.model, make_job)
        formatter = responses.LogprobFormatter(worker.tokenizer, parsed.is_chat) if parsed.logprobs else None
        if parsed.stream:
            stream = self._stream(parsed, sequence, events, formatter, entry)
            return StreamingResponse(stream, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        texts: list[str] = []
        tokens: list[TokenEvent] = []
        try:
            while True:
                try:
                    event = await asyncio.wait_for(events.get(), DISCONNECT_POLL_SECONDS)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        sequence.cancel()
                        entry.tokens = "cancelled"
                        return Response(status_code=499)
                    continue
                if isinstance(event, ErrorEvent):
                    raise RequestError(event.message, status=event.status, type="server_error")
                if isinstance(event, DoneEvent):
                    break
                texts.append(event.text)
                tokens.append(event)
        finally:
            sequence.cancel()  # a no-op once done; frees the row if this handler was cancelled
        entry.tokens = _usage_text(event)
        logprobs = formatter.format(tokens) if formatter else None
        return JSONResponse(responses.completion(parsed, responses.new_id(parsed), "".join(texts), event, logprobs))

    async def _stream(self, parsed: GenerationRequest, sequence: Sequence, events: asyncio.Queue, formatter,
                      entry: _Log):
        """Server-sent events: a chunk per token event, the finish reason, the usage, ``[DONE]``."""
        response_id, created = responses.new_id(parsed), int(time.time())
        status = 200
        offset = 0

        def sse(body: dict) -> str:
            return f"data: {json.dumps(body)}\n\n"

        try:
            if parsed.is_chat:
                yield sse(responses.chunk(parsed, response_id, created, "", role=True))
            while True:
                event = await events.get()
                if isinstance(event, ErrorEvent):
                    status = event.status
                    yield sse(RequestError(event.message, status=event.status, type="server_error").body())
                    return
                if isinstance(event, DoneEvent):
                    entry.tokens = _usage_text(event)
                    yield sse(responses.chunk(parsed, response_id, created, None, finish_reason=event.finish_reason))
                    if parsed.include_usage:
                        yield sse(responses.chunk(parsed, response_id, created, None, usage_of=event))
                    yield "data: [DONE]\n\n"
                    return
                logprobs = formatter.format([event], offset) if formatter and event.token is not None else None
                offset += len(event.text)
                # One chunk per token, even with no text yet (part of a character, a possible stop
                # string): the client sees progress, and time to first token means what it says.
                yield sse(responses.chunk(parsed, response_id, created, event.text, logprobs=logprobs))
        except asyncio.CancelledError:  # the client went away: stop its generation, free its cache rows
            status = 499
            entry.tokens = "cancelled"
            raise
        finally:
            sequence.cancel()
            entry.done(status)


def create_app(registry: ModelRegistry, api_key: str | None = None, max_body_bytes: int = MAX_BODY_BYTES) -> Starlette:
    """The ASGI application serving ``registry``'s models with the OpenAI API.

    Args:
        registry: The served models.
        api_key: Require ``Authorization: Bearer <api_key>`` (all routes but ``/health``).
        max_body_bytes: Refuse larger bodies with 413.

    Returns:
        A Starlette app; its shutdown stops the model workers.
    """
    server = Server(registry, api_key, max_body_bytes)

    async def not_found(request: Request, error: HTTPException) -> Response:
        kind = "not_found" if error.status_code == 404 else "method_not_allowed"
        message = f"{request.method} {request.url.path}: " + ("no such route" if error.status_code == 404
                                                               else "method not allowed")
        return error_response(RequestError(message, status=error.status_code, code=kind))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await run_in_threadpool(registry.close)

    routes = [
        Route("/health", server.health, methods=["GET"]),
        Route("/v1/models", server.route(server.models), methods=["GET"]),
        Route("/v1/chat/completions", server.route(server.chat), methods=["POST"]),
        Route("/v1/completions", server.route(server.completions), methods=["POST"]),
        Route("/v1/embeddings", server.route(server.embeddings), methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: not_found}, lifespan=lifespan)
