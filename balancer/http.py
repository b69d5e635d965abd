"""HTTP/1.1 message rules for a proxy: hop-by-hop headers, framing, generated responses.

Pure functions over ``(name, value)`` byte pairs as httptools delivers them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# RFC 9110 7.6.1: connection-specific headers never cross a proxy.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization",
})
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
REASONS = {
    100: "Continue", 200: "OK", 204: "No Content", 301: "Moved Permanently",
    304: "Not Modified", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required",
    413: "Content Too Large", 414: "URI Too Long", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout",
}
Headers = list[tuple[bytes, bytes]]


@dataclass
class Head:
    """A message head as a proxy needs it, from one pass over the headers."""

    kept: list[tuple[bytes, bytes, bytes]] = field(default_factory=list)  # (lower, name, value)
    content_length: int | None = None
    chunked: bool = False
    connection_tokens: frozenset[bytes] = frozenset()


_PLAIN_TOKENS = frozenset({b"keep-alive", b"close"})


def analyse(headers: Headers) -> Head:
    """Framing, Connection tokens and the end-to-end headers (no hop-by-hop ones,
    none named in Connection); names compared case-insensitively."""
    head = Head()
    kept = head.kept
    tokens: set[bytes] = set()
    for name, value in headers:
        n = name.lower()
        if n in HOP_BY_HOP:
            if n == b"transfer-encoding":
                head.chunked = b"chunked" in value.lower()
            elif n == b"connection":
                tokens.update(t.strip().lower() for t in value.split(b","))
            continue
        if n == b"content-length":
            try:
                head.content_length = int(value.strip())
            except ValueError:
                head.content_length = None
        kept.append((n, name, value))
    if tokens:
        head.connection_tokens = frozenset(tokens)
        if not tokens <= _PLAIN_TOKENS:
            head.kept = [k for k in kept if k[0] not in tokens]
    return head


def request_head(method: bytes, target: bytes, head: Head, *, client_ip: str,
                 proto: bytes, host_fallback: bytes) -> bytes:
    """The request head sent to a server (HTTP/1.1, keep-alive, X-Forwarded-*)."""
    out = [method, b" ", target, b" HTTP/1.1\r\n"]
    xff = None
    has_host = False
    for ln, n, v in head.kept:
        if ln == b"x-forwarded-for":
            xff = v if xff is None else xff + b", " + v
            continue
        if ln == b"x-forwarded-proto":
            continue
        if ln == b"host":
            has_host = True
        out += (n, b": ", v, b"\r\n")
    ip = client_ip.encode()
    out += (b"X-Forwarded-For: ", (xff + b", " + ip) if xff else ip, b"\r\n")
    out += (b"X-Forwarded-Proto: ", proto, b"\r\n")
    if not has_host:
        out += (b"Host: ", host_fallback, b"\r\n")
    if head.chunked:
        out.append(b"Transfer-Encoding: chunked\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def response_head(status: int, reason: bytes, head: Head, *, keep_alive: bool,
                  client_http10: bool, chunked: bool) -> bytes:
    """The response head sent to the client; ``chunked``: we re-chunk the body."""
    out = [b"HTTP/1.1 ", str(status).encode(), b" ", reason, b"\r\n"]
    drop_length = chunked or head.chunked
    for ln, n, v in head.kept:
        if drop_length and ln == b"content-length":
            continue
        out += (n, b": ", v, b"\r\n")
    if chunked:
        out.append(b"Transfer-Encoding: chunked\r\n")
    if not keep_alive:
        out.append(b"Connection: close\r\n")
    elif client_http10:
        out.append(b"Connection: keep-alive\r\n")
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
