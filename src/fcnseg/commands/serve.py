"""``fcnseg serve``: a trained model behind an HTTP API and a web page (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .options import add_inference_options, load_predictor


def add_parser(subparsers: Any, help_text: str) -> None:
    from ..serve.settings import ServeSettings  # the defaults' one source (no FastAPI import)

    d = ServeSettings()
    p = subparsers.add_parser("serve", help=help_text, description=help_text)
    p.add_argument("--checkpoint", required=True, metavar="MODEL",
                   help="a best.pt / last.pt, or an exported model.onnx")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 "
                        "opens it to the network)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", default=None,
                   help="require this X-API-Key header on /v1/* (default: the "
                        "FCNSEG_API_KEY environment variable, else no key)")
    p.add_argument("--max-upload-mb", type=float, default=d.max_upload_mb,
                   help=f"largest upload, MB (default {d.max_upload_mb:g}; larger: 413)")
    p.add_argument("--max-receiving-mb", type=float, default=d.max_receiving_mb,
                   help="uploads being received at once, MB by their Content-Length, beyond "
                        "which new uploads get 503 + Retry-After: the bound on memory under "
                        "many uploaders (default: three --max-upload-mb)")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels,
                   help=f"largest image, pixels (default {d.max_pixels}; larger: 413)")
    p.add_argument("--max-whole-pixels", type=int, default=d.max_whole_pixels,
                   help="larger images are predicted by tiles (--tile), one band of rows at "
                        "a time: a request then needs about 5 bytes a pixel (the image and its "
                        "mask) plus a band of tile height x width x classes x 12 bytes, where "
                        "a whole pass needs about 160 + 12 x classes bytes a pixel "
                        f"(default {d.max_whole_pixels}: Full HD and smaller in one pass; "
                        "0: as the free memory allows)")
    p.add_argument("--concurrency", type=int, default=d.concurrency,
                   help=f"model calls at once (default {d.concurrency}: one call already "
                        "uses every core); an exported model gets as many --streams, each "
                        "call on its share of the cores")
    p.add_argument("--queue", type=int, default=d.queue,
                   help=f"requests waiting for the model before 503 + Retry-After "
                        f"(default {d.queue})")
    p.add_argument("--max-pixels-in-flight", type=int, default=d.max_pixels_in_flight,
                   help="pixels of the images in the model or waiting for it, beyond which "
                        "new requests get 503 + Retry-After: the bound on the service's "
                        "memory under a burst of large images (default: twice --max-pixels)")
    add_inference_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import FcnsegError
    from ..inference.runtimes import require

    require("fastapi", "serve")  # the serve extra: a clear line if it is missing
    from ..serve import ServeSettings, create_app
    from ..serve.server import check_address, run_server

    if not 0 <= args.port <= 65535:
        raise FcnsegError(f"--port {args.port} must be between 0 and 65535")
    settings = ServeSettings(
        max_upload_mb=args.max_upload_mb, max_receiving_mb=args.max_receiving_mb,
        max_pixels=args.max_pixels, max_whole_pixels=args.max_whole_pixels,
        concurrency=args.concurrency, queue=args.queue,
        max_pixels_in_flight=args.max_pixels_in_flight,
        api_key=os.environ.get("FCNSEG_API_KEY") if args.api_key is None else args.api_key)
    try:
        check_address(args.host, args.port)
    except OSError as exc:  # port in use, address not available: say so before loading
        raise FcnsegError(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc}): "
                          "choose another --port or --host") from exc
    predictor = load_predictor(args, streams=settings.concurrency)
    app = create_app(predictor, settings)
    key = "; X-API-Key required on /v1/*" if settings.api_key else ""
    print(f"fcnseg serve: {args.checkpoint} ({predictor.meta.num_classes} classes, "
          f"{predictor.reason}) on http://{args.host}:{args.port}/ (API docs: /docs{key})",
          file=sys.stderr, flush=True)
    run_server(app, args.host, args.port, header_timeout=settings.header_timeout_s)
    return 0
