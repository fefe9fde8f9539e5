"""The HTTP API and web page of ``fcnseg serve``: one :class:`Predictor`, loaded once.

A request's body is read first, within ``body_timeout_s`` (408 after it), so that slow
uploaders hold no place in the queue; then it is admitted, up to ``concurrency + queue`` at
a time (beyond that: 503 with Retry-After, so memory stays bounded under any load). Model
calls run off the event loop in a pool of ``concurrency`` threads; a request whose client
has gone before its turn is dropped without using the model (a watcher waits for the
disconnect itself, whatever the upload's size). Bad uploads get a JSON ``{"error": ...}``
with 400, 408, 411, 413 or 415; nothing a request carries reaches a shell or the file system.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from swagger_ui_bundle import swagger_ui_path

from .. import __version__
from ..data.io import (
    RASTER_FORMATS,
    ImageTooLargeError,
    NotAnImageError,
    image_pixels,
    mask_image,
    read_image,
)
from ..errors import FcnsegError
from ..inference import MODES, Predictor
from ..viz import overlay, png_bytes
from .settings import ServeSettings

STATIC = Path(__file__).parent / "static"
# Declared in the OpenAPI schema, so that /docs offers "Authorize" for servers with a key.
KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False,
                          description="required when the server runs with --api-key")
RAW_TYPES = ("image/", "application/octet-stream")


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class Gate:
    """Bounded admission, by count and by pixels, and a bounded pool of model threads."""

    def __init__(self, settings: ServeSettings) -> None:
        self.limit = settings.concurrency + settings.queue
        self.pixel_budget = settings.pixel_budget
        self.admitted = 0
        self.pixels = 0  # of the admitted requests' images: what their arrays scale with
        self.slots = asyncio.Semaphore(settings.concurrency)
        self.pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="fcnseg-model")
        self.draining = False

    def admit(self, pixels: int = 0) -> None:
        """Take a place for a request whose image has ``pixels``, or raise 503."""
        if self.draining:
            raise ApiError(503, "the server is shutting down", {"Retry-After": "5"})
        if self.admitted >= self.limit:
            raise ApiError(503, f"busy: {self.limit} requests in progress or queued; retry "
                                "shortly", {"Retry-After": "1"})
        if self.admitted and self.pixels + pixels > self.pixel_budget:
            raise ApiError(503, f"busy: {self.pixels} pixels of images in progress or "
                                "queued; retry shortly", {"Retry-After": "1"})
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


async def wait_for_disconnect(request: Request) -> None:
    """Return when the client has gone. Once the body is read, the server's next message is
    the disconnect; waiting for it keeps the connection read, so a close is always seen."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(predictor: Predictor, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI application serving ``predictor``."""
    settings = settings or ServeSettings()
    # /docs is served from the swagger-ui-bundle package, not a CDN: it works offline.
    app = FastAPI(title="fcnseg", version=__version__, docs_url=None, redoc_url=None,
                  description="Semantic segmentation with a Fully Convolutional Network.")
    app.state.gate = gate = Gate(settings)
    app.state.predictor = predictor

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(x) for x in e['loc'][1:]) or 'request'}: {e['msg']}"
                 for e in exc.errors()]
        return JSONResponse({"error": "; ".join(parts)}, 422)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:  # a bug, not the input
        return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, 500)

    async def api_key(sent: str | None = Security(KEY_HEADER)) -> None:
        # Bytes, not str: compare_digest refuses non-ASCII text, and a header's bytes are
        # whatever the client sent (the key itself is printable ASCII: ServeSettings).
        if settings.api_key and not hmac.compare_digest((sent or "").encode("latin-1"),
                                                        settings.api_key.encode()):
            raise ApiError(401, "missing or wrong X-API-Key header")

    get = ["GET", "HEAD"]  # every page and read-only route answers HEAD as well

    @app.api_route("/health", methods=get, summary="Liveness: the process answers")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.api_route("/ready", methods=get,
                   summary="Readiness: the model is loaded and requests are accepted")
    async def ready() -> JSONResponse:
        ok = not gate.draining
        return JSONResponse({"ready": ok}, 200 if ok else 503)

    @app.api_route("/v1/model", methods=get, dependencies=[Depends(api_key)],
                   summary="What the model is")
    async def model() -> dict[str, Any]:
        return describe(predictor, settings)

    @app.post("/v1/segment", dependencies=[Depends(api_key)],
              summary="Segment one image (multipart field 'image', or a raw image body)",
              responses={200: {"content": {"image/png": {}, "application/json": {}}}})
    async def segment(request: Request,
                      output: Literal["mask", "overlay", "json"] = "mask",
                      mode: Literal[MODES] | None = None,  # type: ignore[valid-type]
                      flip: bool = False,
                      alpha: float = Query(0.5, ge=0.0, le=1.0),
                      mask: bool = Query(False, description="json: include the mask PNG "
                                                            "(base64)")) -> Response:
        try:  # the body first: a slow uploader must not hold a place in the queue
            data, name = await asyncio.wait_for(read_upload(request, settings),
                                                settings.body_timeout_s)
        except asyncio.TimeoutError as exc:  # builtin TimeoutError from Python 3.11 on
            raise ApiError(408, f"the upload took longer than {settings.body_timeout_s:g} s: "
                                "send it faster, or a smaller image") from exc
        except ClientDisconnect as exc:  # the client left mid-upload: nobody to answer
            raise ApiError(499, "client closed the request") from exc
        if not data:
            raise ApiError(400, "empty upload")
        pixels = checked(image_pixels, data, name, settings.max_pixels)  # the header only
        gate.admit(pixels)  # by count and by pixels, before any pixel is decoded
        try:
            image = await run_in_threadpool(checked, read_image, data, name,
                                            settings.max_pixels)
            p = predictor.with_options(mode=mode or predictor.options.mode,
                                       flip=flip or predictor.options.flip)
            labels = (await gate.run(request, checked, p.predict_labels, [image]))[0]
            return await run_in_threadpool(render, predictor, image, labels, output, alpha,
                                           mask)
        finally:
            gate.leave(pixels)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/docs-static", StaticFiles(directory=str(swagger_ui_path)), name="docs-static")

    @app.api_route("/docs", methods=get, include_in_schema=False)
    async def docs() -> Response:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="fcnseg API",
                                   swagger_js_url="/docs-static/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-static/swagger-ui.css",
                                   swagger_favicon_url="/static/favicon.svg")

    @app.api_route("/", methods=get, include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.api_route("/favicon.ico", methods=get, include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    return app


def describe(predictor: Predictor, settings: ServeSettings) -> dict[str, Any]:
    """The ``/v1/model`` document."""
    meta = predictor.meta
    return {
        "classes": [{"id": i, "name": n, "color": list(c)} for i, (n, c) in
                    enumerate(zip(meta.class_names, meta.palette, strict=True))],
        "ignore_index": meta.ignore_index,
        "normalization": {"mean": list(meta.mean), "std": list(meta.std)},
        "model": {**predictor.info.get("model_args", {}), "source": Path(
            predictor.source).name if predictor.source else None, "dataset": meta.name},
        "runtime": predictor.runtime, "precision": predictor.precision,
        "options": {"mode": predictor.options.mode, "flip": predictor.options.flip,
                    "modes": list(MODES)},
        "input": {"formats": ", ".join(RASTER_FORMATS),
                  "max_upload_bytes": int(settings.max_upload_mb * 2**20),
                  "max_pixels": settings.max_pixels, "any_size": True},
        "limits": {k: v for k, v in asdict(settings).items() if k != "api_key"},
        "fcnseg_version": __version__,
    }


async def read_upload(request: Request, settings: ServeSettings) -> tuple[bytes, str]:
    """The image bytes of a multipart upload or a raw image body, within the size limit."""
    limit = int(settings.max_upload_mb * 2**20)
    length = request.headers.get("content-length")
    if length is None:
        raise ApiError(411, "send a Content-Length header (curl and browsers do)")
    if not length.isdigit() or int(length) > limit:
        raise ApiError(413, f"upload of {length} bytes is over the limit of {limit} bytes")
    kind = request.headers.get("content-type", "").lower()
    if kind.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=8)
        files = [v for v in form.values() if hasattr(v, "read")]
        if not files:
            raise ApiError(400, "no file in the form: send the image as the field 'image'")
        return await files[0].read(), Path(files[0].filename or "upload").name
    if kind.startswith(RAW_TYPES):
        return await request.body(), "upload"
    raise ApiError(415, f"unsupported content type {kind or 'none'!r}: send image/* bytes or "
                        "a multipart/form-data upload")


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


def render(predictor: Predictor, image: np.ndarray, labels: np.ndarray, output: str,
           alpha: float, with_mask: bool) -> Response:
    """The response body: palette PNG, overlay PNG, or per-class counts as JSON."""
    meta = predictor.meta
    if output == "overlay":
        return Response(png_bytes(overlay(image, labels, meta.palette, alpha, meta.ignore_index)),
                        media_type="image/png")
    mask_png = png_bytes(mask_image(labels, meta.palette))
    if output == "mask":
        return Response(mask_png, media_type="image/png")
    counts = np.bincount(labels.ravel(), minlength=meta.num_classes)
    total = int(labels.size)
    body: dict[str, Any] = {
        "width": int(labels.shape[1]), "height": int(labels.shape[0]),
        "classes": [{"id": i, "name": n, "color": list(c), "pixels": int(counts[i]),
                     "fraction": float(counts[i]) / total}
                    for i, (n, c) in enumerate(zip(meta.class_names, meta.palette,
                                                   strict=True))]}
    if with_mask:
        body["mask_png"] = base64.b64encode(mask_png).decode()
    return JSONResponse(body)
