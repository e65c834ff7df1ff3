"""``/docs``: Swagger UI from assets the service serves itself, so it renders offline.

FastAPI's default page loads Swagger UI from a CDN; the swagger-ui-bundle-v2 package ships
the same files (Apache-2.0), mounted here under ``/static/swagger``.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

SWAGGER_STATIC = "/static/swagger"


def install_offline_docs(app: FastAPI) -> None:
    """Serve ``/docs`` (the app must be built with ``docs_url=None``)."""
    app.mount(SWAGGER_STATIC, StaticFiles(directory=str(swagger_ui_path)), name="swagger")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{SWAGGER_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{SWAGGER_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{SWAGGER_STATIC}/favicon-32x32.png",
        )
