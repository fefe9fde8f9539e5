"""Admission control of ``fcnseg serve``: what bounds its memory and its model's queue.

Three budgets, each refused with 503 + Retry-After when spent, so that no number of
clients can exhaust the process: the bytes of uploads still being received (reserved by
their declared length before a byte is read), the number of admitted requests
(``concurrency + queue``), and the pixels of the admitted requests' images. Model calls run
in a pool of ``concurrency`` threads, shut down with the app (its lifespan).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from starlette.requests import Request

from .settings import ServeSettings


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def busy(what: str) -> ApiError:
    return ApiError(503, f"busy: {what}; retry shortly", {"Retry-After": "1"})


class Gate:
    """Bounded reception (bytes), admission (count, pixels) and model threads."""

    def __init__(self, settings: ServeSettings) -> None:
        self.limit = settings.concurrency + settings.queue
        self.pixel_budget = settings.pixel_budget
        self.body_budget = settings.body_budget
        self.receiving = 0  # bytes reserved by uploads being received, not yet admitted
        self.admitted = 0
        self.pixels = 0  # of the admitted requests' images: what their arrays scale with
        self.slots = asyncio.Semaphore(settings.concurrency)
        self.pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="fcnseg-model")
        self.draining = False

    def _refuse_when_draining(self) -> None:
        if self.draining:
            raise ApiError(503, "the server is shutting down", {"Retry-After": "5"})

    @contextmanager
    def reception(self, nbytes: int) -> Iterator[None]:
        """Hold ``nbytes`` of the reception budget while an upload is read, or raise 503.
        One upload is always let in (``max_upload_mb`` bounds it alone)."""
        self._refuse_when_draining()
        if self.receiving and self.receiving + nbytes > self.body_budget:
            raise busy(f"{self.receiving} bytes of uploads being received")
        self.receiving += nbytes
        try:
            yield
        finally:
            self.receiving -= nbytes

    @contextmanager
    def admission(self, pixels: int = 0) -> Iterator[None]:
        """Hold a place for a request whose image has ``pixels``, or raise 503."""
        self.admit(pixels)
        try:
            yield
        finally:
            self.leave(pixels)

    def admit(self, pixels: int = 0) -> None:
        """Take a place for a request whose image has ``pixels``, or raise 503."""
        self._refuse_when_draining()
        if self.admitted >= self.limit:
            raise busy(f"{self.limit} requests in progress or queued")
        if self.admitted and self.pixels + pixels > self.pixel_budget:
            raise busy(f"{self.pixels} pixels of images in progress or queued")
        self.admitted += 1
        self.pixels += pixels

    def leave(self, pixels: int = 0) -> None:
        self.admitted -= 1
        self.pixels -= pixels

    async def run(self, request: Request, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` in the model pool when a slot is free, unless the client leaves
        first (499, the model untouched)."""
        gone = asyncio.ensure_future(wait_for_disconnect(request))
        slot = asyncio.ensure_future(self.slots.acquire())
        try:
            await asyncio.wait({gone, slot}, return_when=asyncio.FIRST_COMPLETED)
            if gone.done() or await request.is_disconnected():
                raise ApiError(499, "client closed the request")
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        finally:
            gone.cancel()
            if slot.done() and not slot.cancelled():
                self.slots.release()
            else:
                slot.cancel()

    def close(self) -> None:
        """Stop the model threads (the app's lifespan ends)."""
        self.pool.shutdown(wait=False, cancel_futures=True)


async def wait_for_disconnect(request: Request) -> None:
    """Return when the client has gone. Once the body is read, the server's next message is
    the disconnect; waiting for it keeps the connection read, so a close is always seen."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
