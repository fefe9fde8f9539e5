"""The limits of ``fcnseg serve``, checked here (no FastAPI import: the CLI's --help reads
them)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import FcnsegError

MB = 2**20


@dataclass(frozen=True, kw_only=True)
class ServeSettings:
    """Limits of the service (``fcnseg serve --help`` states the defaults); a bad value
    raises :class:`FcnsegError` naming it."""

    max_upload_mb: float = 20.0
    # Bytes of uploads being received and not yet admitted, reserved by their declared
    # length: what bounds memory under many uploaders at once (0: three --max-upload-mb).
    max_receiving_mb: float = 0.0
    max_pixels: int = 25_000_000
    # Images above this go through the model in tiles, a band of rows at a time, so a
    # request's working memory is bounded by the tile and the width, not the image.
    max_whole_pixels: int = 2_100_000  # Full HD (1920 x 1080) and smaller: one pass
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
    def upload_limit(self) -> int:
        """The largest upload, bytes."""
        return int(self.max_upload_mb * MB)

    @property
    def body_budget(self) -> int:
        """Bytes of uploads received at once before they are admitted."""
        return int((self.max_receiving_mb or 3 * self.max_upload_mb) * MB)

    @property
    def pixel_budget(self) -> int:
        return self.max_pixels_in_flight or 2 * self.max_pixels

    def __post_init__(self) -> None:
        positive = {"--concurrency": self.concurrency, "--max-pixels": self.max_pixels,
                    "--max-upload-mb": self.max_upload_mb,
                    "header timeout": self.header_timeout_s, "body timeout": self.body_timeout_s}
        at_least_zero = {"--queue": self.queue, "--max-receiving-mb": self.max_receiving_mb,
                         "--max-whole-pixels": self.max_whole_pixels,
                         "--max-pixels-in-flight": self.max_pixels_in_flight}
        for name, value in positive.items():
            if not value > 0:
                raise FcnsegError(f"{name} {value} must be more than 0")
        for name, value in at_least_zero.items():
            if not value >= 0:
                raise FcnsegError(f"{name} {value} must be 0 or more")
        check_key(self.api_key)


def check_key(key: str | None) -> None:
    """An API key clients can send: not empty, printable ASCII, no surrounding spaces."""
    if key == "":  # would serve every client without a word
        raise FcnsegError("the API key (--api-key / FCNSEG_API_KEY) is empty, which would "
                          "serve every client without a word: give a key, or leave both "
                          "unset to serve without one")
    if key is not None and not (key.isascii() and key.isprintable() and key.strip() == key):
        # A key a client cannot send in a header would lock every client out.
        raise FcnsegError("the API key (--api-key / FCNSEG_API_KEY) must be printable ASCII "
                          "without surrounding spaces, since clients send it in an HTTP "
                          "header: choose another key")
