"""``fcnseg serve``: an HTTP API and a web page for a trained model (``pip install
"fcnseg[serve]"``)."""

from .app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]
