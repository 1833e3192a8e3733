"""GET /: the web page, and /ui/: its script and style sheet.

The page is plain HTML, CSS and JavaScript under ``imagegate/server/ui/`` (no build step, no
request to the internet). ``index.html`` is a template: ``{{NAME}}`` placeholders are filled
with ImageRequest's limits, so the form's ``min``/``max``/``step`` never drift from the checks
at the edge, and with the version, so a new release's assets are not served from a cache.
Neither the page nor its assets hold data: auth lets them through, and the page asks for the
key and sends it as ``Authorization: Bearer`` with every API call.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from imagegate import request as limits

UI_DIR = Path(__file__).parent / "ui"

router = APIRouter(tags=["web"])

PLACEHOLDER = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>imagegate</title></head>
<body><h1>imagegate</h1>
<p>The web page is not installed. The API is at <a href="/docs">/docs</a>;
providers at <a href="/v1/providers">/v1/providers</a>.</p></body></html>
"""

PAGE_HEADERS = {
    "cache-control": "no-cache",
    "content-security-policy": (
        "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; "
        "style-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
}


def page_values() -> dict[str, str]:
    """What fills the template's ``{{NAME}}`` placeholders."""
    from imagegate import __version__

    return {
        "VERSION": __version__,
        "MIN_SIDE": str(limits.MIN_SIDE),
        "MAX_SIDE": str(limits.MAX_SIDE),
        "SIDE_STEP": "8",
        "MAX_STEPS": str(limits.MAX_STEPS),
        "MAX_GUIDANCE": str(int(limits.MAX_GUIDANCE)),
        "MAX_SEED": str(limits.MAX_SEED),
        "MAX_N": str(limits.MAX_N),
        "MAX_PROMPT_CHARS": str(limits.MAX_PROMPT_CHARS),
    }


@functools.cache
def render_page() -> str | None:
    """index.html with its placeholders filled; None when the page is not installed."""
    page = UI_DIR / "index.html"
    if not page.is_file():
        return None
    values = page_values()
    return re.sub(r"\{\{([A-Z_]+)\}\}", lambda m: values[m.group(1)], page.read_text("utf-8"))


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> Response:
    page = render_page()
    if page is None:
        return HTMLResponse(PLACEHOLDER)
    return HTMLResponse(page, headers=PAGE_HEADERS)


def mount_ui(app: FastAPI) -> None:
    """Serve the ui folder's files under /ui/ when the page is installed."""
    if (UI_DIR / "index.html").is_file():
        app.mount("/ui", StaticFiles(directory=UI_DIR), name="ui")
