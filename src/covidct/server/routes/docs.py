"""``GET /docs``: Swagger UI for the generated OpenAPI schema, served from the installed swagger-ui-bundle-v2.

FastAPI's own ``/docs`` loads Swagger UI from a CDN, which a hospital network without internet
cannot reach; the same page is built here on local copies (Swagger UI 5, which reads OpenAPI 3.1).
"""

from __future__ import annotations

import swagger_ui_bundle
from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

ASSETS_URL = "/docs-assets"
ASSETS_DIR = swagger_ui_bundle.swagger_ui_path

router = APIRouter()


@router.get("/docs", response_class=HTMLResponse, include_in_schema=False)
async def docs() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="covidct API",
        swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_URL}/favicon-32x32.png",
    )
