"""``GET /``: the drag-and-drop page (plain HTML, CSS and JS from ``server/static``;
nothing from the internet)."""

from __future__ import annotations

import html
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from covidct.intended_use import RESEARCH_USE_STATEMENT

STATIC_DIR = files("covidct.server") / "static"

router = APIRouter()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    """The page loads without a key; the API calls it makes send the key the user types."""
    template = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    return HTMLResponse(template.replace("{{research_use}}", html.escape(RESEARCH_USE_STATEMENT)))
