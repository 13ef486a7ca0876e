"""The live dashboard: one HTML page and its script, style sheet and icon, served by rollcall.

The page holds no data, so it is served without a token: it asks for an API token (read scope;
admin for its delivery log), keeps it in the tab's sessionStorage and reads everything from the
/v1 JSON API with it. The files live in service/static/ and are read once, when the routes are
made; only the names in `ASSETS` are served, so no request can name any other file. Every answer
says `no-cache` (the browser revalidates with the ETag) and the page is locked down by its
Content-Security-Policy: scripts, styles and everything else only from rollcall itself, no
inline script.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.http.responses import Error, json_response

STATIC: Final = Path(__file__).parent / "static"
PAGE: Final = "dashboard.html"
# The files /dashboard/{asset} serves, and their content types: nothing else is served.
ASSETS: Final = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_COMMON_HEADERS: Final = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
}


class _File:
    """One static file, in memory, with its content type and ETag."""

    def __init__(self, name: str, media_type: str) -> None:
        self.body = (STATIC / name).read_bytes()
        self.media_type = media_type
        self.etag = '"' + hashlib.sha256(self.body).hexdigest()[:32] + '"'

    def answer(self, request: Request) -> Response:
        headers = {**_COMMON_HEADERS, "ETag": self.etag}
        tags = _etags(request.headers.get("if-none-match", ""))
        if self.etag in tags or "*" in tags:
            return Response(status_code=304, headers=headers)
        return Response(self.body, media_type=self.media_type, headers=headers)


def routes() -> list[Route]:
    """GET /dashboard (the page) and GET /dashboard/{asset} (its script, styles, icon)."""
    page = _File(PAGE, "text/html; charset=utf-8")
    assets = {name: _File(name, media_type) for name, media_type in ASSETS.items()}

    async def dashboard(request: Request) -> Response:
        return page.answer(request)

    async def asset(request: Request) -> Response:
        found = assets.get(request.path_params["asset"])
        if found is None:
            body = Error(error="not_found", message="no such dashboard file")
            return json_response(body, status_code=404, headers={"Cache-Control": "no-cache"})
        return found.answer(request)

    return [
        Route("/dashboard", dashboard, methods=["GET"]),
        Route("/dashboard/{asset}", asset, methods=["GET"]),
    ]


def _etags(header: str) -> set[str]:
    """The entity tags of an If-None-Match header (weak ones compare as strong: RFC 9110)."""
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}
