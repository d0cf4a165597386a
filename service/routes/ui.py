"""``/ui``: the web page (a static HTML page and its own small script and style
sheet under ``/ui/static``, nothing fetched from elsewhere). The page calls only
the public API; its Content-Security-Policy keeps it to this server."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["UI_DIR", "mount", "router"]

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

router = APIRouter(tags=["web page"])


# Not in the OpenAPI schema: a page for people, not an API operation.
@router.api_route("/ui", methods=["GET", "HEAD"], include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(
        UI_DIR / "index.html",
        media_type="text/html; charset=utf-8",
        headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-cache"},
    )


def mount(app: FastAPI) -> None:
    """Serve the page's script and style sheet under ``/ui/static``."""
    app.mount("/ui/static", StaticFiles(directory=UI_DIR), name="ui-static")
