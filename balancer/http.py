"""HTTP/1.1 message rules for a proxy: framing, Host, hop-by-hop headers, the heads we send.

Pure functions over ``(name, value)`` byte pairs as httptools delivers them. Every byte
comes from a client or a server and is hostile: each message gets one framing decision
(RFC 9112 6.3) made here, before any header is dropped, and an ambiguous message is
refused (``Refused``: 400/501/505 for a request, 502 for a response). The heads sent on
are written from the decision, never copied: one ``Host``, one ``Content-Length`` or
``Transfer-Encoding: chunked``, so the next hop frames the message as we did.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# RFC 9110 7.6.1: connection-specific headers never cross a proxy.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization",
})
# Written by us from the framing decision and the client's address, never copied:
# the client's own (or a server's) are dropped.
FRAMING = frozenset({b"content-length", b"transfer-encoding", b"host"})
FORWARDING = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-real-ip", b"forwarded"})
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
REASONS = {
    100: "Continue", 103: "Early Hints", 200: "OK", 204: "No Content",
    301: "Moved Permanently", 304: "Not Modified", 400: "Bad Request", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
    411: "Length Required", 413: "Content Too Large", 414: "URI Too Long",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout", 505: "HTTP Version Not Supported",
}
Headers = list[tuple[bytes, bytes]]
Field = tuple[bytes, bytes, bytes]  # (lower-case name, name, value)

# RFC 3986 authority without userinfo: IP-literal / IPv4 / reg-name, then an optional port
HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(?::[0-9]{0,5})?")
ABSOLUTE = re.compile(rb"(?i:https?)://([^/?#]*)([/?][^#]*)?")
DIGITS = re.compile(rb"[0-9]{1,18}")
OWS = b" \t"  # RFC 9110 5.5: not part of a field value


class Refused(Exception):
    """A message we do not pass on: ``status`` for the client, ``reason`` for the log."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Framing:
    """How a message's body is delimited (RFC 9112 6.3), once for all."""

    length: int | None = None  # Content-Length
    chunked: bool = False
    fields: list[Field] = field(default_factory=list)  # end-to-end, in order
    forwarded_for: bytes | None = None  # the client's own X-Forwarded-For, joined


@dataclass
class RequestHead:
    method: bytes
    target: bytes  # as sent to the server: origin-form (or "*")
    host: bytes | None  # None: HTTP/1.0 without Host
    http10: bool
    framing: Framing

    @property
    def has_body(self) -> bool:
        return self.framing.chunked or bool(self.framing.length)


@dataclass
class ResponseHead:
    status: int
    framing: Framing
    no_body: bool  # HEAD, 1xx, 204, 304
    until_close: bool  # no length: the body ends when the server closes


def _framing(headers: Headers, refuse: int) -> tuple[Framing, list[bytes]]:
    """One pass: (framing with the end-to-end fields, Host values).
    Headers named in Connection are dropped, but framing and Host never are: they
    were read here first."""
    f = Framing()
    lengths: list[bytes] = []
    codings: list[bytes] = []
    hosts: list[bytes] = []
    tokens: set[bytes] = set()
    kept = f.fields
    for name, value in headers:
        n = name.lower()
        if n in HOP_BY_HOP or n in FRAMING or n in FORWARDING:
            if n == b"connection":
                tokens.update(t.strip(OWS).lower() for t in value.split(b","))
            elif n == b"transfer-encoding":
                codings += [c.strip(OWS).lower() for c in value.split(b",")]
            elif n == b"content-length":
                lengths.append(value.strip(OWS))
            elif n == b"host":
                hosts.append(value.strip(OWS))
            elif n == b"x-forwarded-for":
                f.forwarded_for = value if f.forwarded_for is None else (
                    f.forwarded_for + b", " + value)
            continue
        kept.append((n, name, value))
    tokens -= {b"", b"close", b"keep-alive"}
    if tokens:
        f.fields = [k for k in kept if k[0] not in tokens]
        if b"x-forwarded-for" in tokens:
            f.forwarded_for = None
    if codings:
        if lengths:
            raise Refused(refuse, "Transfer-Encoding and Content-Length together")
        if codings[-1] != b"chunked" or codings.count(b"chunked") > 1 or b"" in codings:
            raise Refused(refuse, "invalid Transfer-Encoding")
        if len(codings) > 1:
            raise Refused(501 if refuse == 400 else refuse, "unknown transfer-coding "
                          + codings[0].decode(errors="replace")[:40])
        f.chunked = True
    if lengths:
        if len(lengths) > 1:
            raise Refused(refuse, "more than one Content-Length")
        if not DIGITS.fullmatch(lengths[0]):
            raise Refused(refuse, "invalid Content-Length")
        f.length = int(lengths[0])
    return f, hosts


def request(method: bytes, target: bytes, version: str, headers: Headers) -> RequestHead:
    """The framing decision of a request, or ``Refused`` (400, 405, 501, 505)."""
    if version not in ("1.1", "1.0"):
        raise Refused(505, f"HTTP/{version} is not served")
    if method == b"CONNECT":
        raise Refused(405, "CONNECT is not served")
    http10 = version == "1.0"
    f, hosts = _framing(headers, 400)
    if f.chunked and http10:
        raise Refused(400, "Transfer-Encoding in an HTTP/1.0 request")
    if len(hosts) > 1 or (not hosts and not http10):
        raise Refused(400, "missing Host" if not hosts else "more than one Host")
    if hosts and not HOST.fullmatch(hosts[0]):
        raise Refused(400, "invalid Host")
    host = hosts[0] if hosts else None
    if target.startswith(b"/") or (target == b"*" and method == b"OPTIONS"):
        pass
    elif m := ABSOLUTE.fullmatch(target):
        # RFC 9112 3.2.2: the target's authority wins over Host; the server gets
        # origin-form and a Host made from it
        authority, path = m.group(1), m.group(2) or b"/"
        if not HOST.fullmatch(authority):
            raise Refused(400, "invalid authority in the request target")
        host = authority
        target = path if path.startswith(b"/") else b"/" + path
    else:
        raise Refused(400, "invalid request target")
    return RequestHead(method, target, host, http10, f)


def response(status: int, version: str, headers: Headers, method: bytes) -> ResponseHead:
    """The framing decision of a server's response, or ``Refused`` (502)."""
    if version not in ("1.1", "1.0"):
        raise Refused(502, f"server answered HTTP/{version}")
    if status == 101 or not 100 <= status <= 999:
        raise Refused(502, f"server answered status {status}")
    f, _ = _framing(headers, 502)
    no_body = method == b"HEAD" or status < 200 or status in (204, 304)
    if no_body and status == 204:
        f.length = None
    until_close = not no_body and not f.chunked and f.length is None
    return ResponseHead(status, f, no_body, until_close)


def request_head(req: RequestHead, *, client_ip: str, proto: bytes,
                 host_fallback: bytes) -> bytes:
    """The request head sent to a server: HTTP/1.1, our framing, forwarding headers."""
    f = req.framing
    out = [req.method, b" ", req.target, b" HTTP/1.1\r\nHost: ",
           req.host if req.host is not None else host_fallback, b"\r\n"]
    for _, n, v in f.fields:
        out += (n, b": ", v, b"\r\n")
    ip = client_ip.encode()
    node = b'"[' + ip + b']"' if b":" in ip else ip
    out += (b"X-Forwarded-For: ", (f.forwarded_for + b", " + ip) if f.forwarded_for else ip,
            b"\r\nX-Forwarded-Proto: ", proto, b"\r\nX-Real-IP: ", ip,
            b"\r\nForwarded: for=", node, b";proto=", proto, b"\r\n")
    if f.chunked:
        out.append(b"Transfer-Encoding: chunked\r\n")
    elif f.length is not None:
        out += (b"Content-Length: ", b"%d" % f.length, b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def response_head(resp: ResponseHead, reason: bytes, *, keep_alive: bool,
                  client_http10: bool, rechunk: bool) -> bytes:
    """The response head sent to the client; ``rechunk``: we chunk the body ourselves."""
    out = [b"HTTP/1.1 ", b"%d" % resp.status, b" ", reason, b"\r\n"]
    for _, n, v in resp.framing.fields:
        out += (n, b": ", v, b"\r\n")
    if rechunk:
        out.append(b"Transfer-Encoding: chunked\r\n")
    elif resp.framing.length is not None:
        out += (b"Content-Length: ", b"%d" % resp.framing.length, b"\r\n")
    if not keep_alive:
        out.append(b"Connection: close\r\n")
    elif client_http10:
        out.append(b"Connection: keep-alive\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def interim_head(status: int, fields: list[Field]) -> bytes:
    """A 1xx response passed on (100 Continue, 103 Early Hints) with its end-to-end fields."""
    out = [b"HTTP/1.1 ", b"%d" % status, b" ", REASONS.get(status, "Informational").encode(),
           b"\r\n"]
    for _, n, v in fields:
        out += (n, b": ", v, b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def error_response(status: int, message: str, *, keep_alive: bool = False) -> bytes:
    """A response the balancer itself gives (503 when no server is left, 400, ...)."""
    body = f"{status} {REASONS.get(status, '')}\n{message}\n".encode()
    head = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
    ]
    if not keep_alive:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body
