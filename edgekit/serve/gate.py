"""The checks a request passes before :mod:`edgekit.serve.app` reads its body: size, key and Host.

An ASGI middleware (the pattern of Starlette's own middleware guide), so a refusal costs one look at
the headers, never the read or the parse of a body:

- a body over ``max_body_bytes`` gets 413 from its ``Content-Length`` alone; a body sent without one
  (chunked) is counted as it arrives and refused at the limit;
- with an API key set, a request without ``Authorization: Bearer <key>`` gets 401 (compared in
  constant time, :func:`hmac.compare_digest`); the liveness, readiness and health probes stay open;
- the Host check is Starlette's ``TrustedHostMiddleware`` (400 for a foreign Host), which
  :func:`edgekit.serve.app.create_app` puts in front with loopback names by default: a page a
  browser loads cannot reach a loopback server through DNS rebinding.
"""
from __future__ import annotations

import hmac
import json

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")
OPEN_PATHS = ("/health", "/health/live", "/health/ready")  # probes answer without the key
MAX_BODY_BYTES = 1 << 20


def allowed_hosts(host: str, extra: list[str] | None) -> list[str]:
    """The Host names a server bound to ``host`` answers: loopback names, the bound address unless it is
    a wildcard, and ``extra`` (``*`` allows any)."""
    names = list(LOOPBACK_HOSTS)
    if host not in ("0.0.0.0", "::", ""):
        names.append(host)
    return names + list(extra or [])


class RequestGate:
    """Refuse an over-long body (413) and a missing or wrong API key (401) before the app sees the request."""

    def __init__(self, app, max_body_bytes: int = MAX_BODY_BYTES, api_key: str | None = None,
                 on_refused=lambda path, status: None) -> None:
        self.app, self.max_body_bytes, self.on_refused = app, max_body_bytes, on_refused
        self.key = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        path = scope["path"]
        if self.key is not None and path not in OPEN_PATHS and \
                not hmac.compare_digest(headers.get(b"authorization", b""), self.key):
            return await self._refuse(send, path, 401, "a valid API key is required: send the header "
                                      "'Authorization: Bearer <key>'", "invalid_api_key",
                                      [(b"www-authenticate", b"Bearer")])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_body_bytes:
                return await self._refuse(send, path, 413, self._too_long(), "request_too_large")
            return await self.app(scope, receive, send)
        if scope["method"] in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        body, more = [], True  # chunked: read at most the limit, then replay what was read
        size = 0
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            body.append(message.get("body", b""))
            size += len(body[-1])
            more = message.get("more_body", False)
            if size > self.max_body_bytes:
                return await self._refuse(send, path, 413, self._too_long(), "request_too_large")
        replay = [{"type": "http.request", "body": b"".join(body), "more_body": False}]

        async def replayed():
            return replay.pop() if replay else await receive()

        return await self.app(scope, replayed, send)

    def _too_long(self) -> str:
        return f"the request body is over this server's {self.max_body_bytes}-byte limit; send a shorter prompt"

    async def _refuse(self, send, path: str, status: int, message: str, code: str, headers=()) -> None:
        self.on_refused(path, status)
        kind = "invalid_request_error"
        body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}
                          if path.startswith("/v1/") else {"error": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close"), *headers]})
        await send({"type": "http.response.body", "body": body})
