"""Running the app with uvicorn, and a graceful shutdown: on SIGTERM / SIGINT new requests
get 503 while those in progress finish; a second signal exits at once."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .settings import ServeSettings


class DrainingServer(uvicorn.Server):
    """uvicorn's server, draining the app's :class:`~fcnseg.serve.app.Gate` before exiting."""

    def __init__(self, config: uvicorn.Config, gate: Any, drain_seconds: float = 60.0) -> None:
        super().__init__(config)
        self.gate, self.drain_seconds = gate, drain_seconds

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.gate.draining:  # second signal: stop now, abandoning the requests in flight
            # (uvicorn would wait for them, and the interpreter for the model's threads)
            os._exit(128 + sig)
        self.gate.draining = True  # from now on new requests get 503

        def wait_then_exit() -> None:
            deadline = time.monotonic() + self.drain_seconds
            while self.gate.admitted > 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            super(DrainingServer, self).handle_exit(sig, frame)

        threading.Thread(target=wait_then_exit, daemon=True).start()


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request headers have not all
    arrived ``header_timeout`` seconds after it opened or after its last response (a
    slow-loris client); a request being answered is never cut."""

    header_timeout = ServeSettings.header_timeout_s

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._expire)

    def _disarm(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()

    def _expire(self) -> None:
        waiting = self.cycle is None or self.cycle.response_complete  # no request under way
        if waiting and not self.transport.is_closing():
            self.transport.close()


def check_address(host: str, port: int) -> None:
    """Raise OSError now if ``host:port`` cannot be listened on (before loading a model)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))


def run_server(app: Any, host: str, port: int, log_level: str = "warning",
               header_timeout: float = ServeSettings.header_timeout_s) -> None:
    """Serve ``app`` on ``host:port`` until SIGTERM / SIGINT (drained, see above)."""
    protocol = type("Protocol", (HeaderTimeoutProtocol,), {"header_timeout": header_timeout})
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, http=protocol,
                            timeout_graceful_shutdown=30)
    # Uploads are parsed in worker threads, some of it Python code holding the GIL; the
    # event loop waits for the GIL at most this long at each turn (default 5 ms), so that
    # /health and other clients answer promptly while large uploads are parsed.
    sys.setswitchinterval(0.0005)
    DrainingServer(config, app.state.gate).run()
