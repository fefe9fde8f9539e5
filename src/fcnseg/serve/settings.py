"""The limits of ``fcnseg serve`` (no FastAPI import: the CLI's --help reads them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class ServeSettings:
    """Limits of the service (``fcnseg serve --help`` states the defaults)."""

    max_upload_mb: float = 20.0
    max_pixels: int = 25_000_000
    concurrency: int = 1  # model calls at once: one already uses every core of a CPU
    queue: int = 8  # requests waiting for the model before 503
    # Pixels of the images admitted at once (in the model or waiting for it): what bounds
    # the service's memory under a burst of large images (0: twice --max-pixels).
    max_pixels_in_flight: int = 0
    api_key: str | None = None
    # A client has this long to send its request's headers, and then its body; slower
    # clients get 408 (body) or a closed connection (headers), so they cannot hold slots.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0

    @property
    def pixel_budget(self) -> int:
        return self.max_pixels_in_flight or 2 * self.max_pixels

    def __post_init__(self) -> None:
        # A key a client cannot send in a header would lock every client out.
        key = self.api_key
        if key == "":
            from ..errors import FcnsegError

            raise FcnsegError("the API key (--api-key / FCNSEG_API_KEY) is empty, which "
                              "would serve every client without a word: give a key, or "
                              "leave both unset to serve without one")
        if key is not None and not (key.isascii() and key.isprintable() and key.strip() == key
                                    and key):
            from ..errors import FcnsegError

            raise FcnsegError("the API key (--api-key / FCNSEG_API_KEY) must be printable "
                              "ASCII without surrounding spaces, since clients send it in an "
                              "HTTP header: choose another key")
