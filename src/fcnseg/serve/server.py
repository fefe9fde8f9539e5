"""Running the app with uvicorn, and a graceful shutdown: on SIGTERM / SIGINT new requests
get 503 while those in progress finish; a second signal exits at once."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn


class DrainingServer(uvicorn.Server):
    """uvicorn's server, draining the app's :class:`~fcnseg.serve.app.Gate` before exiting."""

    def __init__(self, config: uvicorn.Config, gate: Any, drain_seconds: float = 60.0) -> None:
        super().__init__(config)
        self.gate, self.drain_seconds = gate, drain_seconds

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.gate.draining:  # second signal: stop now
            super().handle_exit(sig, frame)
            return
        self.gate.draining = True  # from now on new requests get 503

        def wait_then_exit() -> None:
            deadline = time.monotonic() + self.drain_seconds
            while self.gate.admitted > 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            super(DrainingServer, self).handle_exit(sig, frame)

        threading.Thread(target=wait_then_exit, daemon=True).start()


def check_address(host: str, port: int) -> None:
    """Raise OSError now if ``host:port`` cannot be listened on (before loading a model)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))


def run_server(app: Any, host: str, port: int, log_level: str = "warning") -> None:
    """Serve ``app`` on ``host:port`` until SIGTERM / SIGINT (drained, see above)."""
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=30)
    DrainingServer(config, app.state.gate).run()
