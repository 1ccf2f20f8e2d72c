"""The web page: `/` and its files under /web/, public, and not part of the API document."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

WEB = Path(__file__).resolve().parent.parent / "web"
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'",
}


async def web_page(request: Request) -> Response:
    return FileResponse(WEB / "index.html", headers=PAGE_HEADERS)


routes = [Route("/", web_page, methods=["GET"]), Mount("/web", StaticFiles(directory=WEB))]
