"""Running the app with uvicorn: the listening socket, logging to stderr, clean shutdown."""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys

from .registry import ModelRegistry

LOCAL_NAMES = ("localhost",)


def is_local_host(host: str) -> bool:
    """Whether ``host`` binds the loopback interface only."""
    if host in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one).

    Raises:
        OSError: the address is taken or cannot be bound.
    """
    family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def setup_logging(level: int = logging.INFO) -> None:
    """Request lines and server messages go to stderr, one per line."""
    logger = logging.getLogger("mlx_llm.serve")
    if not any(getattr(handler, "_mlx_llm_serve", False) for handler in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        handler._mlx_llm_serve = True
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def make_server(registry: ModelRegistry, api_key: str | None = None, graceful_seconds: int = 5, **app_options):
    """A `uvicorn.Server` for the app (not started).

    Args:
        registry: The served models.
        api_key: See `mlx_llm.serve.app.create_app`.
        graceful_seconds: On shutdown, how long open requests may take to finish.
    """
    import uvicorn

    from .app import create_app

    app = create_app(registry, api_key=api_key, **app_options)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=graceful_seconds)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            # uvicorn re-raises a caught SIGINT/SIGTERM after its graceful shutdown, so the process
            # would end with a traceback (SIGINT) or status -15; once shut down, exit 0 instead.
            self._captured_signals.clear()

    return Server(config)


def run(models: dict[str, str], host: str = "127.0.0.1", port: int = 8080, api_key: str | None = None,
        max_kv_size: int | None = None, max_models: int = 1, echo=print) -> None:
    """Serve ``models`` until SIGINT or SIGTERM.

    Args:
        models: Served name -> folder, ``.gguf`` file or Hub id.
        host, port: Where to listen (port 0: any free port, printed).
        api_key: Require ``Authorization: Bearer <api_key>``.
        max_kv_size: Most positions a sequence may hold (prompt and completion).
        max_models: Most models loaded at once.
        echo: Where the startup lines go (stderr by default).
    """
    setup_logging()
    registry = ModelRegistry(models, max_models=max_models, max_kv_size=max_kv_size)
    sock = bind(host, port)
    bound_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    echo(f"mlx-llm serve: listening on http://{shown}:{bound_port} (models: {', '.join(models)})")
    server = make_server(registry, api_key=api_key)
    try:
        server.run(sockets=[sock])  # uvicorn handles SIGINT / SIGTERM: stop accepting, finish, shut down
    finally:
        registry.close(wait=2.0)
        sock.close()
    echo("mlx-llm serve: stopped")
