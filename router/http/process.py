"""Entry point of an HTTP process beside the main one: uvicorn on the router's sockets, with
the routes served here and the others forwarded to the main process."""

from __future__ import annotations

import logging
import signal
import socket
from multiprocessing.connection import Connection
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from router.config import RouterConfig
from router.http.limits import bounded_head_protocol
from workers.parent import exit_with_parent

# Streams end within a token of the stop signal; a connection still open after this is cut.
GRACEFUL_SHUTDOWN_SECONDS = 5


class HttpProcessServer(uvicorn.Server):
    """Stops when the main process says so (SIGTERM); a terminal's Ctrl-C reaches the whole
    process group, and it is the main process's to act on."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGINT:
            super().handle_exit(sig, frame)


def run(config: RouterConfig, sockets: list[socket.socket], process: int, conn: Connection) -> None:
    exit_with_parent()
    configure_logging(config, f"[http {process}]")
    from router.http.app import create_http_app  # the slow imports, in the child only

    server = HttpProcessServer(uvicorn_config(create_http_app(config, conn, process), config))
    server.run(sockets=sockets)


def configure_logging(config: RouterConfig, process: str = "") -> None:
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper()),
        format=f"%(asctime)s %(levelname)s %(name)s{process}: %(message)s",
    )


def uvicorn_config(app: Starlette, config: RouterConfig) -> uvicorn.Config:
    """Every HTTP process serves the same way."""
    return uvicorn.Config(
        app,
        log_level="warning",
        lifespan="on",
        http=bounded_head_protocol(config.max_header_bytes),
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
