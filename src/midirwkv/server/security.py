"""What the local server trusts: the Host it is reached by, the page a request comes from, and its headers.

The server has no login: it is meant for the machine it runs on. Three checks keep other web pages out:

- **Host** (DNS rebinding): a page served from a name that resolves to 127.0.0.1 reaches the server with that
  name in its ``Host`` header. Only loopback names are accepted (``localhost``, ``127.x.x.x``, ``[::1]``), plus
  the address given to ``midirwkv serve --host`` and the names in ``MIDIRWKV_ALLOWED_HOSTS`` (comma separated,
  for a server reached by another name on purpose).
- **Origin** (cross-site requests): a state-changing request (any method but GET, HEAD, OPTIONS) whose
  ``Origin`` is not the server's own (scheme, host and port, as the request's ``Host`` names it) or whose
  ``Sec-Fetch-Site`` is ``cross-site`` or ``same-site`` (another port of 127.0.0.1 is the same *site*) is
  refused. Clients that send neither header (curl, scripts) are not browsers acting for another page.
- **Content type** of uploads (``upload_content_type``): a MIDI or octet-stream type. A page on another origin
  can send ``text/plain`` without asking the server first; these types need a CORS preflight we never grant.

Every answer carries ``X-Content-Type-Options: nosniff``, a Content-Security-Policy (the page loads only its
own scripts, styles and data; nothing may frame it), ``Referrer-Policy: no-referrer`` and
``Cross-Origin-Resource-Policy: same-origin``.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from urllib.parse import urlsplit

from midirwkv.errors import MidiRwkvError

ALLOWED_HOSTS_ENV = "MIDIRWKV_ALLOWED_HOSTS"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
UPLOAD_TYPES = frozenset({"audio/midi", "audio/x-midi", "audio/mid", "application/x-midi", "application/octet-stream"})
"""Content types an upload may declare (parameters such as ``; charset`` are ignored)."""

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; media-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
"""Every answer's policy (the page and ``/docs`` alike): this server's files only (no inline script or style,
no eval), no plugins, never framed."""
HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cross-origin-resource-policy": "same-origin",
    "x-frame-options": "DENY",
    "content-security-policy": CSP,
}


class ForbiddenError(MidiRwkvError):
    """The request comes from a name or a page the server does not serve (Host, Origin, Sec-Fetch-Site)."""

    http_status = 403


class MediaTypeError(MidiRwkvError):
    """The request body's declared content type is not one the route accepts."""

    http_status = 415


def split_host(value: str) -> tuple[str, str | None]:
    """(host, port) of a ``Host`` header or URL authority, host lower-cased, IPv6 without brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        host, rest = value[1:end] if end > 0 else value[1:], value[end + 1:] if end > 0 else ""
        port = rest[1:] if rest.startswith(":") else None
    elif value.count(":") == 1:
        host, port = value.split(":")
    else:
        host, port = value, None
    return host.rstrip("."), port or None


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP literal (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HostPolicy:
    """Which ``Host`` values the server answers to: loopback, the bound address, and extra names."""

    def __init__(self, extra: Iterable[str] = ()):
        names = {split_host(h)[0] for h in extra if h and h.strip()}
        names |= {split_host(h)[0] for h in os.environ.get(ALLOWED_HOSTS_ENV, "").split(",") if h.strip()}
        # a wildcard bind address is no name a client can use in a Host header
        self.extra = frozenset(names - {"0.0.0.0", "::", ""})

    def allows(self, host_header: str | None) -> bool:
        if not host_header:
            return False
        host, _ = split_host(host_header)
        return is_loopback(host) or host in self.extra


def _same_origin(origin: str, host_header: str, scheme: str) -> bool:
    """Whether ``origin`` is the origin the request was addressed to (scheme, host, port)."""
    try:
        url = urlsplit(origin)
    except ValueError:
        return False
    if url.scheme != scheme or not url.netloc or url.path not in ("", "/"):
        return False
    default = "443" if scheme == "https" else "80"
    o_host, o_port = split_host(url.netloc)
    h_host, h_port = split_host(host_header)
    return o_host == h_host and (o_port or default) == (h_port or default)


def check_request(method: str, headers: dict[str, str], scheme: str, hosts: HostPolicy) -> None:
    """Raise ``ForbiddenError`` for a request from a foreign Host, or a foreign page's state-changing request."""
    host = headers.get("host")
    if not hosts.allows(host):
        raise ForbiddenError(
            "this server only answers requests addressed to localhost (DNS rebinding protection)",
            argument="Host", value=(host or "")[:100],
            fix="open http://127.0.0.1:<port>/ (or localhost); to reach it by another name on purpose, start it "
                f"with --host NAME or list the name in {ALLOWED_HOSTS_ENV}")
    if method.upper() in SAFE_METHODS:
        return
    site = headers.get("sec-fetch-site")
    if site is not None and site.lower() not in ("same-origin", "none"):
        raise ForbiddenError(
            "state-changing requests are only accepted from the server's own page",
            argument="Sec-Fetch-Site", value=site[:40],
            fix="use the page served at / (or a client that is not a browser, such as curl)")
    origin = headers.get("origin")
    if origin is not None and not _same_origin(origin, host, scheme):
        raise ForbiddenError(
            "state-changing requests are only accepted from the server's own page",
            argument="Origin", value=origin[:100],
            fix="use the page served at / (or a client that is not a browser, such as curl)")


def upload_content_type(value: str | None) -> str:
    """The media type of an upload (``MediaTypeError`` unless a MIDI or octet-stream type)."""
    media = (value or "").split(";")[0].strip().lower()
    if media not in UPLOAD_TYPES:
        raise MediaTypeError(
            "an upload must be sent as MIDI bytes", argument="Content-Type", value=(value or None),
            fix="send the file as the request body with Content-Type: audio/midi (or application/octet-stream)")
    return media


class GuardMiddleware:
    """ASGI middleware: ``check_request`` on every HTTP request; security headers (``HEADERS``, ``CSP``) on
    every answer. A refused request gets the usual JSON error body from ``error_response(exc)``."""

    def __init__(self, app, hosts: HostPolicy, error_response):
        self.app = app
        self.hosts = hosts
        self.error_response = error_response

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        extra = [(k.encode(), v.encode()) for k, v in HEADERS.items()]

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + [h for h in extra if h[0] not in names]
            await send(message)

        try:
            check_request(scope.get("method", "GET"), headers, scope.get("scheme", "http"), self.hosts)
        except ForbiddenError as exc:
            return await self.error_response(exc)(scope, receive, send_with_headers)
        return await self.app(scope, receive, send_with_headers)
