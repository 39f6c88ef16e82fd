"""The operators' page: one static HTML page with its script and style sheet, served on the api role's HTTP port
at ``/`` beside the JSON API it calls.

The files are package data (``static/*`` in pyproject) read through ``importlib.resources`` once, at import.
They hold no data, so they answer without a token (``public``); the page asks for the API token and sends it
as ``Authorization: Bearer`` with every call, so everything that shows patient data stays behind
``gateway.auth``. Every answer carries a Content-Security-Policy that allows only this origin's own files (no
inline script, no other site), ``nosniff``, and an ETag with ``no-cache``: the browser revalidates, so a new
version of the page shows after an upgrade, and an unchanged one costs a 304.
"""

from __future__ import annotations

import hashlib
from importlib.resources import files

from aiohttp import web

from gateway.auth import public

CONTENT_SECURITY_POLICY = "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
_TYPES = {"html": "text/html", "js": "text/javascript", "css": "text/css"}
_PAGE = "index.html"
_STATIC = ("app.js", "app.css")


class _File:
    def __init__(self, name: str) -> None:
        self.body = files(__name__).joinpath("static", name).read_bytes()
        self.content_type = _TYPES[name.rsplit(".", 1)[-1]]
        self.etag = f'"{hashlib.sha256(self.body).hexdigest()[:32]}"'

    def response(self, request: web.Request) -> web.Response:
        headers = {
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY",
            "Cache-Control": "no-cache",
            "ETag": self.etag,
        }
        if self.etag in (tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")):
            return web.Response(status=304, headers=headers)
        return web.Response(body=self.body, content_type=self.content_type, charset="utf-8", headers=headers)


_FILES = {name: _File(name) for name in (_PAGE, *_STATIC)}


@public
async def _page(request: web.Request) -> web.Response:
    return _FILES[_PAGE].response(request)


@public
async def _static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in _STATIC:
        raise web.HTTPNotFound(text="no such file")
    return _FILES[name].response(request)


routes: list[web.RouteDef] = [
    web.get("/", _page),
    web.get("/static/{name}", _static),
]
"""For the api role's HTTP port (``gateway.api.Api.routes``)."""
