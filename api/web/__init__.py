"""Web pages served by the API process: sign in with a key, see jobs, results and images.

Server-rendered from Jinja2 templates (autoescaped), with a little JavaScript for live
progress; the CSS and script are served by the service itself, so the pages work offline.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from api.web import pages
from api.web.docs import install_offline_docs
from api.web.session import install_sign_in_redirect

STATIC_DIR = Path(__file__).parent / "static"


def install_web(app: FastAPI) -> None:
    """Serve the pages and their static files on ``app``."""
    # The more specific mount first: /static/swagger is not a file of /static.
    install_offline_docs(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(pages.router)
    install_sign_in_redirect(app)
