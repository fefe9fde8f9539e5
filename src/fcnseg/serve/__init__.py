"""``fcnseg serve``: an HTTP API and a web page for a trained model (``pip install
"fcnseg[serve]"``). ``create_app`` is imported on first use: the settings (and so the
CLI's --help) need no FastAPI."""

from __future__ import annotations

from typing import Any

from .settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)
