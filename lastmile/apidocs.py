"""The services' API docs pages, /docs (Swagger UI) and /redoc (ReDoc), with every asset served locally.

FastAPI's own pages load their JavaScript and CSS from a public CDN, which users in mainland China cannot
reach; these load the copies vendored in apidocs_static/ (rebuilt by scripts/vendor_apidocs) from /docs-assets/.
"""

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

ASSETS_PATH = "/docs-assets"
STATIC_DIR = Path(__file__).with_name("apidocs_static")


def install(app: FastAPI) -> None:
    """Serve the vendored assets under /docs-assets/ and add GET /docs and GET /redoc to `app`.

    Create the app without FastAPI's CDN-backed pages, then install these:
    `app = FastAPI(docs_url=None, redoc_url=None); install(app)`. The pages document `app.openapi_url` (nothing
    is added when it is None) and prefix their URLs with the request's root_path, as FastAPI's own pages do.
    """
    if app.openapi_url is None:
        return
    openapi_path = app.openapi_url
    app.mount(ASSETS_PATH, StaticFiles(directory=STATIC_DIR), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui_html(request: Request) -> HTMLResponse:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        assets = f"{root}{ASSETS_PATH}/swagger-ui"
        return get_swagger_ui_html(
            openapi_url=root + openapi_path,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon-32x32.png",
            init_oauth=app.swagger_ui_init_oauth,
            # validatorUrl None: no badge fetched from validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None, **(app.swagger_ui_parameters or {})},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc_html(request: Request) -> HTMLResponse:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return get_redoc_html(
            openapi_url=root + openapi_path,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_PATH}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_PATH}/swagger-ui/favicon-32x32.png",
            with_google_fonts=False,
        )
