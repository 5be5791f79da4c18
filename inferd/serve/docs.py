"""Swagger UI (`/docs`) and ReDoc (`/redoc`) served from files installed with a package, never from a CDN.

FastAPI's pages load their JavaScript from a CDN, so on a machine without internet access (where servers
often run) they are blank. `fastapi-offline` ships the Swagger UI and ReDoc bundles as package data; the
pages here load them from this server, with every outside fetch the UIs would make turned off (Swagger
UI's validator badge, ReDoc's Google fonts).
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS = "/docs"
REDOC = "/redoc"
ASSETS = "/docs/assets"
OAUTH2_REDIRECT = "/docs/oauth2-redirect"
_BUNDLES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")
# What a browser fetches to show the docs: the API key leaves it open, as it does the document itself.
OPEN_PATHS = (DOCS, REDOC, OAUTH2_REDIRECT, *(f"{ASSETS}/{name}" for name in _BUNDLES))


def install(app: FastAPI) -> None:
    """Serve the two pages and their assets; the app is made with FastAPI's own docs_url and redoc_url off."""
    bundles = resources.files("fastapi_offline") / "static"
    app.mount(ASSETS, StaticFiles(directory=str(bundles)), name="docs-assets")

    def url(request: Request, path: str) -> str:
        return f"{request.scope.get('root_path', '')}{path}"

    @app.get(DOCS, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=url(request, str(app.openapi_url)), title=f"{app.title} - Swagger UI",
            swagger_js_url=url(request, f"{ASSETS}/swagger-ui-bundle.js"),
            swagger_css_url=url(request, f"{ASSETS}/swagger-ui.css"),
            swagger_favicon_url=url(request, f"{ASSETS}/favicon.png"),
            oauth2_redirect_url=url(request, OAUTH2_REDIRECT),
            swagger_ui_parameters={"validatorUrl": None},  # else Swagger UI sends the document to swagger.io
        )

    @app.get(OAUTH2_REDIRECT, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=url(request, str(app.openapi_url)), title=f"{app.title} - ReDoc",
            redoc_js_url=url(request, f"{ASSETS}/redoc.standalone.js"),
            redoc_favicon_url=url(request, f"{ASSETS}/favicon.png"), with_google_fonts=False,
        )
