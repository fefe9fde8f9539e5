"""The limits of ``fcnseg serve`` (no FastAPI import: the CLI's --help reads them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeSettings:
    """Limits of the service (``fcnseg serve --help`` states the defaults)."""

    max_upload_mb: float = 20.0
    max_pixels: int = 25_000_000
    concurrency: int = 1  # model calls at once: one already uses every core of a CPU
    queue: int = 8  # requests waiting for the model before 503
    api_key: str | None = None
