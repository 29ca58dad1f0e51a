"""The thread that owns one loaded model.

MLX streams belong to the thread that made them, and arrays built in one
thread cannot be evaluated in another, so a model's loading, prefills,
decoding steps and embeddings all run in its worker thread. Handlers talk to
it through `submit` (a thread-safe queue) and hear back through the callback
each job carries.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..blocks.model_output import ENCODER, ENCODER_DECODER
from .engine import ErrorEvent, Scheduler, Sequence
from .prefix_cache import PrefixCache
from .weights import place_for_batches

log = logging.getLogger("mlx_llm.serve")

GENERATE, EMBED = "generate", "embed"


class WorkerClosed(RuntimeError):
    """The worker stopped (its model was unloaded); load it again."""


@dataclass
class EmbeddingJob:
    """Texts to embed; ``emit`` receives an `EmbeddingResult` or an `ErrorEvent`."""

    texts: list[str]
    emit: Callable[[object], None]


@dataclass
class EmbeddingResult:
    vectors: np.ndarray  # (N, H) float32, L2-normalized
    prompt_tokens: int


def _load(path: str):
    from ..model_files.loading import load

    return load(path)


class ModelWorker:
    """Loads a model in its own thread, then serves its jobs there.

    A model that can generate text gets a `Scheduler` (continuous batching);
    an encoder (BERT family) serves embeddings.

    Args:
        name: The served name (for logs).
        path: What `mlx_llm.load` takes: a folder, a ``.gguf`` file or a Hub id.
        max_kv_size: Most positions a sequence may hold (prompt + completion).
        prefix_cache_entries: Finished sequences kept for prefix reuse.
        max_batch: Most sequences decoded together.
        loader: ``path -> (model, tokenizer)`` (tests replace it).
    """

    def __init__(self, name: str, path: str, max_kv_size: int | None = None, prefix_cache_entries: int = 8,
                 max_batch: int = 32, loader: Callable = _load):
        self.name = name
        self.path = path
        self.max_kv_size = max_kv_size
        self.prefix_cache = PrefixCache(prefix_cache_entries)
        self.max_batch = max_batch
        self._loader = loader
        self._inbox: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._closing = False
        self._stopped = False
        self.loaded = threading.Event()
        self.load_error: Exception | None = None
        self.kind: str | None = None
        self.tokenizer = None
        self.context_limit: int | None = None
        self.generation_defaults = None
        self._thread = threading.Thread(target=self._run, name=f"mlx-llm-serve:{name}", daemon=True)
        self._thread.start()

    def submit(self, job: Sequence | EmbeddingJob) -> None:
        """Hand a job to the worker thread.

        Raises:
            WorkerClosed: the worker is shutting down.
        """
        with self._lock:
            if self._closing:
                raise WorkerClosed(f"model {self.name} was unloaded")
            self._inbox.put(job)

    def close(self, wait: float | None = None) -> None:
        """Stop taking jobs; the thread finishes what it holds, then exits.

        Args:
            wait: Seconds to wait for the thread (``None``: do not wait).
        """
        with self._lock:
            self._closing = True
            self._inbox.put(None)  # wakes a thread blocked on an empty inbox
        if wait is not None:
            self._thread.join(wait)

    def cancel_all(self) -> None:
        """Ask every running generation to stop (server shutdown)."""
        self._stopped = True
        self._inbox.put(None)

    def _run(self) -> None:
        try:
            model, tokenizer = self._loader(self.path)
            self._setup(model, tokenizer)
        except Exception as error:
            log.error("could not load model %s from %s: %s", self.name, self.path, error)
            self.load_error = error
            self.loaded.set()
            self._fail_queued(f"model {self.name} could not be loaded")
            return
        self.loaded.set()
        try:
            self._serve()
        except Exception:  # a bug in the loop itself: fail what is queued rather than hang its clients
            log.exception("worker for %s stopped", self.name)
            self._closing = True
            if self.scheduler is not None:
                self.scheduler.fail_all("the model's worker stopped")
            self._fail_queued("the model's worker stopped")

    def _setup(self, model, tokenizer) -> None:
        from ..generation.generate import check_can_generate, context_length

        self.model, self.tokenizer = model, tokenizer
        self.generation_defaults = getattr(model, "generation_defaults", None)
        self.scheduler = None
        try:
            check_can_generate(model, name=self.name)
        except ValueError:
            if model.kind != ENCODER:
                raise  # a decoder classifier or the like: neither generation nor embeddings
            self.kind = EMBED
            return
        if model.kind == ENCODER_DECODER:
            raise ValueError(f"{self.name} is an encoder-decoder; this server serves decoder-only models")
        self.kind = GENERATE
        try:
            placed = place_for_batches(model)
            log.debug("model %s: %d weights stored (in, out) for batched decoding", self.name, placed)
        except Exception:  # only speed is at stake: serve with the weights as loaded
            log.warning("could not time the weight order of %s", self.name, exc_info=True)
        limits = [limit for limit in (context_length(model), self.max_kv_size) if limit is not None]
        self.context_limit = min(limits) if limits else None
        self.scheduler = Scheduler(model, tokenizer, tokenizer.eos_token_ids, self.prefix_cache, self.max_batch)

    def _serve(self) -> None:
        scheduler = self.scheduler
        while True:
            busy = scheduler is not None and scheduler.busy
            jobs = [self._inbox.get()] if not busy else []  # idle: sleep until a job (or None) arrives
            while True:
                try:
                    jobs.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            if self._stopped:
                if scheduler is not None:
                    scheduler.fail_all("the server is shutting down")
                for job in jobs:
                    if job is not None:
                        job.emit(ErrorEvent("the server is shutting down"))
                self._closing = True
                self._fail_queued("the server is shutting down")
                return
            for job in jobs:
                if isinstance(job, EmbeddingJob):
                    self._embed(job)
                elif job is not None:
                    scheduler.add(job)
            if scheduler is not None and scheduler.busy:
                scheduler.step()
            elif self._closing and self._inbox.empty():
                return

    def _embed(self, job: EmbeddingJob) -> None:
        from ..embeddings import embed

        try:
            vectors = embed(self.model, self.tokenizer, job.texts, pooling="mean", normalize=True)
            truncation = self.tokenizer.model_max_length is not None
            ids = self.tokenizer(job.texts, truncation=truncation)["input_ids"]
            result = EmbeddingResult(np.array(vectors, dtype=np.float32), sum(len(row) for row in ids))
        except Exception as error:  # this request fails alone
            log.exception("embedding failed")
            job.emit(ErrorEvent(f"embedding failed: {type(error).__name__}: {error}"))
            return
        job.emit(result)

    def _fail_queued(self, message: str) -> None:
        while True:
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                try:
                    job.emit(ErrorEvent(message))
                except Exception:
                    log.debug("could not deliver an event", exc_info=True)
