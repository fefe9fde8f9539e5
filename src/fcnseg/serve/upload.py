"""Receiving an upload: its bytes counted as they arrive, its parsing off the event loop.

The declared Content-Length is required and reserved in the gate's reception budget before
a byte is read; the bytes actually received are counted against it and against
``--max-upload-mb``, whatever the headers say. A request carrying both Content-Length and
Transfer-Encoding is refused before routing (:class:`OneBodyLength`). Multipart parsing and
the image header are read in a worker thread, so the event loop only moves bytes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from ..data.io import ImageTooLargeError, NotAnImageError, image_pixels
from ..errors import FcnsegError
from .gate import ApiError, Gate
from .settings import ServeSettings

RAW_TYPES = ("image/", "application/octet-stream")


@dataclass(frozen=True)
class Upload:
    """An image upload, received whole and admitted by its header's pixel count."""

    data: bytes
    name: str
    pixels: int


async def receive_upload(request: Request, settings: ServeSettings, gate: Gate) -> Upload:
    """The request's image: received within ``body_timeout_s`` (408), counted (413),
    reserved in the reception budget (503), its header read off the event loop (400/415)."""
    declared = declared_length(request, settings.upload_limit)
    with gate.reception(declared):
        try:  # the body first: a slow uploader must not hold a place in the queue
            body = await asyncio.wait_for(read_body(request, declared), settings.body_timeout_s)
        except asyncio.TimeoutError as exc:  # builtin TimeoutError from Python 3.11 on
            raise ApiError(408, f"the upload took longer than {settings.body_timeout_s:g} s: "
                                "send it faster, or a smaller image") from exc
        except ClientDisconnect as exc:  # the client left mid-upload: nobody to answer
            raise ApiError(499, "client closed the request") from exc
        data, name = await run_in_threadpool(image_part, body,
                                             request.headers.get("content-type", ""))
        del body
        if not data:
            raise ApiError(400, "empty upload")
        pixels = await run_in_threadpool(checked, image_pixels, data, name, settings.max_pixels)
    return Upload(data, name, pixels)


def declared_length(request: Request, limit: int) -> int:
    """The Content-Length, required and within ``limit`` (411 / 413)."""
    length = request.headers.get("content-length")
    if length is None:
        raise ApiError(411, "send a Content-Length header (curl and browsers do)")
    if not length.isdigit() or int(length) > limit:
        raise ApiError(413, f"upload of {length} bytes is over the limit of {limit} bytes")
    return int(length)


async def read_body(request: Request, declared: int) -> bytes:
    """The body, stopped at the first byte past ``declared`` (413)."""
    body = bytearray()
    async for chunk in request.stream():
        if len(body) + len(chunk) > declared:
            raise ApiError(413, f"the body is longer than its Content-Length of {declared} "
                                "bytes")
        body += chunk
    return bytes(body)


def image_part(body: bytes, content_type: str) -> tuple[bytes, str]:
    """The image bytes and file name of a raw image body or a multipart form's one file."""
    kind = content_type.lower()
    if kind.startswith(RAW_TYPES):
        return body, "upload"
    if not kind.startswith("multipart/form-data"):
        raise ApiError(415, f"unsupported content type {kind or 'none'!r}: send image/* bytes "
                            "or a multipart/form-data upload")
    files = [p for p in multipart_parts(body, content_type) if p[1] is not None]
    if not files:
        raise ApiError(400, "no file in the form: send the image as the field 'image'")
    if len(files) > 1:
        raise ApiError(400, "send one file per request (the field 'image')")
    data, filename = files[0]
    return data, Path(filename or "upload").name


def multipart_parts(body: bytes, content_type: str,
                    max_parts: int = 8) -> list[tuple[bytes, str | None]]:
    """``(data, filename or None)`` of each part of a multipart/form-data body (400 when
    malformed or with more than ``max_parts`` parts)."""
    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if not boundary:
        raise ApiError(400, "a multipart upload without a boundary: let the client build "
                            "the form (curl -F image=@file.png)")
    parts: list[tuple[bytearray, list[bytes]]] = []
    field = bytearray()

    def header_field(data: bytes, start: int, end: int) -> None:
        field.extend(data[start:end])

    def header_value(data: bytes, start: int, end: int) -> None:
        if field.lower() == b"content-disposition":
            parts[-1][1].append(bytes(data[start:end]))

    callbacks: Any = {
        "on_part_begin": lambda: parts.append((bytearray(), [])),
        "on_part_data": lambda data, start, end: parts[-1][0].extend(data[start:end]),
        "on_header_field": header_field,
        "on_header_end": field.clear,
        "on_header_value": header_value,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except Exception as exc:  # python-multipart's errors: the form, not fcnseg
        raise ApiError(400, f"malformed multipart form ({exc})") from exc
    if len(parts) > max_parts:
        raise ApiError(400, f"a form of {len(parts)} parts: send the image alone")
    out = []
    for data, disposition in parts:
        params = parse_options_header(b"".join(disposition))[1]
        name = params.get(b"filename")
        out.append((bytes(data), None if name is None else name.decode("utf-8", "replace")))
    return out


def checked(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` on an upload (its header, its pixels, its prediction); the errors
    become 400 (empty, corrupt) / 413 (too large) / 415 (not an allowed image format)."""
    try:
        return fn(*args)
    except ImageTooLargeError as exc:
        raise ApiError(413, str(exc)) from exc
    except NotAnImageError as exc:
        raise ApiError(415, str(exc)) from exc
    except FcnsegError as exc:
        raise ApiError(400, str(exc)) from exc


class OneBodyLength:
    """ASGI middleware refusing (400, connection closed) a request that declares its body's
    length twice, by Content-Length and by Transfer-Encoding: servers behind and in front
    of fcnseg could read two different bodies, the shape of request smuggling."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            names = {name.lower() for name, _ in scope["headers"]}
            if b"content-length" in names and b"transfer-encoding" in names:
                response = JSONResponse(
                    {"error": "both Content-Length and Transfer-Encoding: send one"}, 400,
                    headers={"Connection": "close"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
