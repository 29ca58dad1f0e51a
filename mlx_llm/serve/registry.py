"""The models a server may load: names fixed at startup, loaded on first use, LRU-bounded.

A request names a model; only the names given on the command line exist, so
a request can never make the server open a path of its choosing.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Callable

from .protocol import RequestError
from .worker import ModelWorker

log = logging.getLogger("mlx_llm.serve")


def served_name(spec: str) -> str:
    """The name a ``--model`` value is served under: the value as given, less a trailing slash."""
    return spec.rstrip("/") or spec


class ModelRegistry:
    """Served names -> model workers, the ``max_models`` most recently used kept loaded.

    Args:
        models: Served name -> what `mlx_llm.load` takes (folder, ``.gguf`` or Hub id).
        max_models: Most models loaded at once; the least recently used is
            unloaded (after its running requests finish) to make room.
        worker_options: Passed on to each `ModelWorker` (``max_kv_size``, ...).
    """

    def __init__(self, models: dict[str, str], max_models: int = 1, worker_factory: Callable = ModelWorker,
                 **worker_options):
        if not models:
            raise ValueError("give at least one model to serve")
        if max_models < 1:
            raise ValueError(f"max_models must be >= 1, got {max_models}")
        self.models = dict(models)
        self.max_models = max_models
        self._factory = worker_factory
        self._options = worker_options
        self._workers: OrderedDict[str, ModelWorker] = OrderedDict()
        self._lock = threading.Lock()
        self.created = {name: 0 for name in models}  # load count per model, for /v1/models and tests

    @property
    def names(self) -> list[str]:
        return list(self.models)

    def loaded_names(self) -> list[str]:
        with self._lock:
            return list(self._workers)

    def get(self, name: str, timeout: float | None = None) -> ModelWorker:
        """The worker serving ``name``, loading it (and unloading the least recently used) if needed.

        Blocks until the model is loaded; call it from a worker thread, not the event loop.

        Raises:
            RequestError: 404 for a name not served; 500 when the model cannot be loaded.
        """
        if name not in self.models:
            raise RequestError(f"the model '{name}' does not exist; this server serves: {', '.join(self.models)}",
                               status=404, param="model", code="model_not_found")
        with self._lock:
            worker = self._workers.get(name)
            if worker is None:
                while len(self._workers) >= self.max_models:
                    evicted_name, evicted = self._workers.popitem(last=False)
                    log.info("unloading model %s (--max-models %d)", evicted_name, self.max_models)
                    evicted.close()
                worker = self._factory(name, self.models[name], **self._options)
                self._workers[name] = worker
                self.created[name] += 1
            self._workers.move_to_end(name)
        worker.loaded.wait(timeout)
        if worker.load_error is not None:
            with self._lock:
                if self._workers.get(name) is worker:
                    del self._workers[name]  # the next request tries again
            raise RequestError(f"the model '{name}' could not be loaded: {worker.load_error}", status=500,
                               code="model_load_failed", type="server_error")
        return worker

    def close(self, wait: float = 5.0) -> None:
        """Stop every worker, failing the generations still running (server shutdown)."""
        with self._lock:
            workers = list(self._workers.values())
            self._workers.clear()
        for worker in workers:
            worker.cancel_all()
        for worker in workers:
            worker.close(wait=wait)

