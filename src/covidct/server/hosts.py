"""The Host-header check of a server on loopback without an API key: a defence against DNS rebinding.

A web page on evil.example can make its own name resolve to 127.0.0.1 and then call the API from the
user's browser; the browser still sends ``Host: evil.example``, so any name that is not loopback (or one
the settings allow) is refused with 421 before the request reaches a route.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from covidct.server.settings import ServerSettings, has_api_key, is_loopback


def needs_host_check(settings: ServerSettings) -> bool:
    """True on loopback without an API key, where the Host header is all that tells a rebinding page apart."""
    return is_loopback(settings.host) and not has_api_key(settings)


def host_name(header: str) -> str:
    """The name in a Host header, without its port: ``[::1]:8000`` -> ``::1``,
    ``localhost:80`` -> ``localhost``."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


class LoopbackHostGuard:
    """ASGI middleware: HTTP requests whose Host is neither loopback nor in ``allowed`` get 421."""

    def __init__(self, app: ASGIApp, *, allowed: list[str]) -> None:
        self.app = app
        self.allowed = {name.lower() for name in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            header = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            name = host_name(header).lower()
            if not (is_loopback(name) or name in self.allowed):
                detail = (
                    f"Host header '{header}' is not this server's address; "
                    "covidct on loopback without an API key answers "
                    "only requests for localhost or 127.0.0.1 (add other "
                    "names with COVIDCT_ALLOWED_HOSTS, or set an API key)"
                )
                await JSONResponse({"detail": detail}, status_code=421)(scope, receive, send)
                return
        await self.app(scope, receive, send)
