"""The HTTP API and web page of ``fcnseg serve``: one :class:`Predictor`, loaded once.

A request's body is received first (:mod:`.upload`: counted, within ``body_timeout_s``,
within the reception budget), so that slow uploaders hold no place in the queue; then it
is admitted by count and by pixels (:mod:`.gate`: beyond either, 503 with Retry-After, so
memory stays bounded under any load). Parsing, decoding, the model and encoding run off the
event loop: the model in a pool of ``concurrency`` threads, the rest in worker threads. A
request whose client has gone before its turn is dropped without using the model. Bad
uploads get a JSON ``{"error": ...}`` with 400, 408, 411, 413 or 415; nothing a request
carries reaches a shell or the file system.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from swagger_ui_bundle import swagger_ui_path

from .. import __version__
from ..data.io import RASTER_FORMATS, mask_image, read_image
from ..inference import MODES, Predictor
from ..viz import overlay, png_bytes
from .gate import ApiError, Gate
from .settings import ServeSettings
from .upload import OneBodyLength, Upload, checked, receive_upload

STATIC = Path(__file__).parent / "static"
# Declared in the OpenAPI schema, so that /docs offers "Authorize" for servers with a key.
KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False,
                          description="required when the server runs with --api-key")


# -- dependencies: what a route needs, from app.state -------------------------------------
def get_settings(request: Request) -> ServeSettings:
    return request.app.state.settings


def get_gate(request: Request) -> Gate:
    return request.app.state.gate


def get_predictor(request: Request) -> Predictor:
    return request.app.state.predictor


async def api_key(settings: Annotated[ServeSettings, Depends(get_settings)],
                  sent: Annotated[str | None, Security(KEY_HEADER)] = None) -> None:
    """401 unless the server has no key or the request sends it."""
    # Bytes, not str: compare_digest refuses non-ASCII text, and a header's bytes are
    # whatever the client sent (the key itself is printable ASCII: ServeSettings).
    if settings.api_key and not hmac.compare_digest((sent or "").encode("latin-1"),
                                                    settings.api_key.encode()):
        raise ApiError(401, "wrong API key" if sent else "this server needs an API key: "
                            "send it in the X-API-Key header")


async def admitted_upload(request: Request, settings: Annotated[ServeSettings,
                          Depends(get_settings)], gate: Annotated[Gate, Depends(get_gate)]
                          ) -> AsyncIterator[Upload]:
    """The request's image, received, then holding a place in the queue until answered."""
    upload = await receive_upload(request, settings, gate)
    with gate.admission(upload.pixels):  # before any pixel is decoded
        yield upload


# -- routes --------------------------------------------------------------------------------
pages = APIRouter()
api = APIRouter(prefix="/v1", dependencies=[Depends(api_key)])


def read_only(router: APIRouter, path: str, **kwargs: Any) -> Any:
    """``router.get(path)`` answering HEAD as well (kept out of the schema: one operation)."""
    def register(fn: Any) -> Any:
        router.add_api_route(path, fn, methods=["HEAD"],
                             **{**kwargs, "include_in_schema": False})
        return router.get(path, **kwargs)(fn)
    return register


@read_only(pages, "/health", summary="Liveness: the process answers")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@read_only(pages, "/ready", summary="Readiness: the model is loaded and requests are accepted")
async def ready(gate: Annotated[Gate, Depends(get_gate)]) -> JSONResponse:
    # in_flight: requests admitted and not yet answered (predicting or waiting for a slot).
    return JSONResponse({"ready": not gate.draining, "in_flight": gate.admitted},
                        503 if gate.draining else 200)


@read_only(pages, "/docs", include_in_schema=False)
async def docs(request: Request) -> Response:
    # /docs is served from the swagger-ui-bundle package, not a CDN: it works offline.
    return get_swagger_ui_html(openapi_url=request.app.openapi_url, title="fcnseg API",
                               swagger_js_url="/docs-static/swagger-ui-bundle.js",
                               swagger_css_url="/docs-static/swagger-ui.css",
                               swagger_favicon_url="/static/favicon.svg")


@read_only(pages, "/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html")


@read_only(pages, "/favicon.ico", include_in_schema=False)
async def favicon() -> FileResponse:
    return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")


@read_only(api, "/model", summary="What the model is")
async def model(predictor: Annotated[Predictor, Depends(get_predictor)],
                settings: Annotated[ServeSettings, Depends(get_settings)]) -> dict[str, Any]:
    return describe(predictor, settings)


@api.post("/segment", summary="Segment one image (multipart field 'image', or a raw image "
                              "body)",
          responses={200: {"content": {"image/png": {}, "application/json": {}}}})
async def segment(request: Request, upload: Annotated[Upload, Depends(admitted_upload)],
                  predictor: Annotated[Predictor, Depends(get_predictor)],
                  settings: Annotated[ServeSettings, Depends(get_settings)],
                  gate: Annotated[Gate, Depends(get_gate)],
                  output: Literal["mask", "overlay", "json"] = "mask",
                  mode: Literal[MODES] | None = None,  # type: ignore[valid-type]
                  flip: bool = False,
                  alpha: float = Query(0.5, ge=0.0, le=1.0),
                  mask: bool = Query(False, description="json: include the mask PNG (base64)")
                  ) -> Response:
    image = await run_in_threadpool(checked, read_image, upload.data, upload.name,
                                    settings.max_pixels)
    p = predictor.with_options(mode=mode or predictor.options.mode,
                               flip=flip or predictor.options.flip)
    labels = (await gate.run(request, checked, p.predict_labels, [image]))[0]
    return await run_in_threadpool(render, predictor, image, labels, output, alpha, mask)


# -- the application -----------------------------------------------------------------------
async def api_error(_: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)


async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"error": str(exc.detail)}, exc.status_code,
                        headers=getattr(exc, "headers", None))


async def bad_parameter(_: Request, exc: RequestValidationError) -> JSONResponse:
    parts = [f"{'.'.join(str(x) for x in e['loc'][1:]) or 'request'}: {e['msg']}"
             for e in exc.errors()]
    return JSONResponse({"error": "; ".join(parts)}, 422)


async def unexpected(_: Request, exc: Exception) -> JSONResponse:  # a bug, not the input
    return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, 500)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The gate's model threads stop with the app."""
    yield
    app.state.gate.close()


def create_app(predictor: Predictor, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI application serving ``predictor`` within ``settings``' limits."""
    settings = settings or ServeSettings()
    app = FastAPI(
        title="fcnseg", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan,
        description="Semantic segmentation with a Fully Convolutional Network.",
        exception_handlers={ApiError: api_error, StarletteHTTPException: http_error,
                            RequestValidationError: bad_parameter, Exception: unexpected})
    app.state.settings = settings
    app.state.gate = Gate(settings)  # created here: the server drains it on SIGTERM
    # Images above max_whole_pixels go by tiles: a request's memory is bounded by the tile.
    app.state.predictor = predictor.with_options(max_whole_pixels=settings.max_whole_pixels)
    app.add_middleware(OneBodyLength)
    app.include_router(pages)
    app.include_router(api)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/docs-static", StaticFiles(directory=str(swagger_ui_path)), name="docs-static")
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
        "input": {"formats": ", ".join(RASTER_FORMATS), "max_upload_bytes": settings.upload_limit,
                  "max_pixels": settings.max_pixels, "any_size": True},
        "limits": {k: v for k, v in asdict(settings).items() if k != "api_key"},
        "fcnseg_version": __version__,
    }


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
