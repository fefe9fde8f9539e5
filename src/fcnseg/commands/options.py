"""Option parsing shared by several sub-commands."""

from __future__ import annotations

from typing import Any

from ..errors import FcnsegError


def parse_data_options(items: list[str] | None) -> dict[str, Any]:
    """``["size=64", "image-size=96"]`` -> ``{"size": 64, "image_size": 96}``
    (the repeatable ``--data-option KEY=VALUE`` flag, passed on to ``build_dataset``)."""
    options: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise FcnsegError(f"--data-option {item!r} must look like KEY=VALUE")
        options[key.replace("-", "_")] = parse_value(raw)
    return options


def parse_value(raw: str) -> Any:
    """'64' -> 64, '0.5' -> 0.5, 'true' -> True, anything else stays a string."""
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(raw.lower(), raw)
