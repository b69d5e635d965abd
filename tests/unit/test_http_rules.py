"""HTTP message rules of the proxy: hop-by-hop headers, framing, X-Forwarded-*."""

from __future__ import annotations

from balancer import http


def test_analyse_framing_and_tokens() -> None:
    h = http.analyse([(b"Host", b"x"), (b"Content-Length", b" 12 "), (b"Connection", b"close")])
    assert h.content_length == 12 and not h.chunked
    assert h.connection_tokens == frozenset({b"close"})
    assert [n for _, n, _ in h.kept] == [b"Host", b"Content-Length"]
    c = http.analyse([(b"TRANSFER-ENCODING", b"gzip, Chunked")])
    assert c.chunked and c.kept == []


def test_headers_named_in_connection_are_dropped() -> None:
    h = http.analyse([(b"Connection", b"X-Secret, keep-alive"), (b"X-Secret", b"s"),
                      (b"Keep-Alive", b"timeout=5"), (b"X-Keep", b"1"), (b"Upgrade", b"h2c"),
                      (b"TE", b"trailers"), (b"Proxy-Connection", b"keep-alive")])
    assert [n for _, n, _ in h.kept] == [b"X-Keep"]


def test_request_head_rewrites() -> None:
    head = http.analyse([(b"Host", b"site"), (b"X-Forwarded-For", b"192.0.2.1"),
                         (b"X-Forwarded-Proto", b"https"), (b"Connection", b"close")])
    out = http.request_head(b"GET", b"/p?q=1", head, client_ip="203.0.113.10", proto=b"http",
                            host_fallback=b"10.0.0.1:80")
    assert out == (b"GET /p?q=1 HTTP/1.1\r\nHost: site\r\n"
                   b"X-Forwarded-For: 192.0.2.1, 203.0.113.10\r\nX-Forwarded-Proto: http\r\n\r\n")


def test_request_head_adds_host_and_rechunks() -> None:
    head = http.analyse([(b"Transfer-Encoding", b"chunked")])
    out = http.request_head(b"POST", b"/", head, client_ip="1.2.3.4", proto=b"http",
                            host_fallback=b"10.0.0.1:80")
    assert b"Host: 10.0.0.1:80\r\n" in out and out.endswith(b"Transfer-Encoding: chunked\r\n\r\n")


def test_response_head_keep_alive_and_close() -> None:
    head = http.analyse([(b"Content-Length", b"5"), (b"Connection", b"keep-alive"),
                         (b"Server", b"nginx")])
    ka = http.response_head(200, b"OK", head, keep_alive=True, client_http10=False,
                            chunked=False)
    assert ka == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: nginx\r\n\r\n"
    close = http.response_head(200, b"OK", head, keep_alive=False, client_http10=False,
                               chunked=False)
    assert close.endswith(b"Connection: close\r\n\r\n")
    ka10 = http.response_head(200, b"OK", head, keep_alive=True, client_http10=True,
                              chunked=False)
    assert ka10.endswith(b"Connection: keep-alive\r\n\r\n")


def test_rechunked_response_drops_content_length() -> None:
    head = http.analyse([(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"9")])
    out = http.response_head(200, b"OK", head, keep_alive=True, client_http10=False,
                             chunked=True)
    assert b"Content-Length" not in out and out.count(b"Transfer-Encoding: chunked") == 1


def test_chunk_and_error_response() -> None:
    assert http.chunk(b"hello") == b"5\r\nhello\r\n"
    r = http.error_response(503, "no server is available")
    head, _, body = r.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"Connection: close" in head
    assert body == b"503 Service Unavailable\nno server is available\n"
    assert f"Content-Length: {len(body)}".encode() in head
