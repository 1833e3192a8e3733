"""GET /: the web page.

The page itself is built separately under ``imagegate/server/ui/``. When that folder holds an
``index.html``, ``/`` serves it and ``/ui/`` serves the folder's files; until then ``/`` is a
placeholder that points at the API.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

UI_DIR = Path(__file__).parent / "ui"

router = APIRouter(tags=["web"])

PLACEHOLDER = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>imagegate</title></head>
<body><h1>imagegate</h1>
<p>The web page is not built yet. The API is at <a href="/docs">/docs</a>;
providers at <a href="/v1/providers">/v1/providers</a>.</p></body></html>
"""


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> Response:
    page = UI_DIR / "index.html"
    if page.is_file():
        return FileResponse(page, media_type="text/html")
    return HTMLResponse(PLACEHOLDER)


def mount_ui(app: FastAPI) -> None:
    """Serve the ui folder's files under /ui/ when the page has been built."""
    if (UI_DIR / "index.html").is_file():
        app.mount("/ui", StaticFiles(directory=UI_DIR, html=True), name="ui")
