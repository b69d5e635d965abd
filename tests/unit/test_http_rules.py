"""HTTP message rules of the proxy: one framing decision per message (RFC 9112 6.3),
Host (3.2), what is refused, and the heads written from the decision."""

from __future__ import annotations

import pytest

from balancer import http

H = list[tuple[bytes, bytes]]


def req(headers: H, target: bytes = b"/", method: bytes = b"POST",
        version: str = "1.1") -> http.RequestHead:
    return http.request(method, target, version, headers)


def refused(headers: H, target: bytes = b"/", method: bytes = b"POST",
            version: str = "1.1") -> int:
    with pytest.raises(http.Refused) as e:
        req(headers, target, method, version)
    return e.value.status


HOST = (b"Host", b"site")


def test_framing_of_a_request() -> None:
    assert req([HOST, (b"Content-Length", b"12")]).framing.length == 12
    chunked = req([HOST, (b"TRANSFER-ENCODING", b"Chunked")]).framing
    assert chunked.chunked and chunked.length is None and chunked.fields == []
    none = req([HOST]).framing
    assert not none.chunked and none.length is None


@pytest.mark.parametrize(("headers", "status"), [
    ([HOST, (b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"3")], 400),
    ([HOST, (b"Transfer-Encoding", b"chunked, chunked")], 400),
    ([HOST, (b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"chunked")], 400),
    ([HOST, (b"Transfer-Encoding", b"chunked, identity")], 400),
    ([HOST, (b"Transfer-Encoding", b"xchunked")], 400),
    ([HOST, (b"Transfer-Encoding", b"")], 400),
    ([HOST, (b"Transfer-Encoding", b"gzip, chunked")], 501),
    ([HOST, (b"Transfer-Encoding", b"identity, chunked")], 501),
    ([HOST, (b"Content-Length", b"3"), (b"Content-Length", b"3")], 400),
    ([HOST, (b"Content-Length", b"+3")], 400),
    ([HOST, (b"Content-Length", b"3, 3")], 400),
    ([HOST, (b"Content-Length", b"")], 400),
    ([HOST, (b"Content-Length", b"1" * 19)], 400),
    ([], 400),
    ([HOST, HOST], 400),
    ([(b"Host", b"")], 400),
    ([(b"Host", b"a b")], 400),
    ([(b"Host", b"u@site")], 400),
    ([(b"Host", b"site/x")], 400),
    ([(b"Host", b"a:b:c")], 400),
    ([(b"Host", b"site:80x")], 400),
])
def test_ambiguous_requests_are_refused(headers: H, status: int) -> None:
    assert refused(headers) == status


def test_versions_methods_and_targets() -> None:
    assert refused([HOST], version="2.0") == 505
    assert refused([HOST], version="0.9") == 505
    assert refused([HOST], method=b"CONNECT", target=b"site:443") == 405
    assert refused([HOST], target=b"site/x") == 400
    assert refused([HOST], target=b"*", method=b"GET") == 400
    assert refused([(b"Transfer-Encoding", b"chunked")], version="1.0") == 400
    assert req([HOST], target=b"*", method=b"OPTIONS").target == b"*"
    assert req([], version="1.0").host is None  # HTTP/1.0 may omit Host


def test_absolute_form_wins_over_host() -> None:
    r = req([(b"Host", b"other")], target=b"HTTP://site.example:8080/p?q=1")
    assert (r.host, r.target) == (b"site.example:8080", b"/p?q=1")
    r = req([(b"Host", b"other")], target=b"https://site.example?q")
    assert (r.host, r.target) == (b"site.example", b"/?q")
    assert refused([HOST], target=b"http://u@site.example/") == 400


def test_connection_never_removes_framing_or_host() -> None:
    r = req([(b"Host", b"site"), (b"Connection", b"content-length, host, transfer-encoding"),
             (b"Content-Length", b"5")])
    assert (r.host, r.framing.length) == (b"site", 5)
    h = req([HOST, (b"Connection", b"X-Secret, keep-alive"), (b"X-Secret", b"s"),
             (b"Keep-Alive", b"timeout=5"), (b"X-Keep", b"1"), (b"Upgrade", b"h2c"),
             (b"TE", b"trailers"), (b"Proxy-Connection", b"keep-alive")], method=b"GET")
    assert [n for _, n, _ in h.framing.fields] == [b"X-Keep"]


def test_request_head_is_written_from_the_decision() -> None:
    r = req([(b"host", b"site"), (b"X-Forwarded-For", b"192.0.2.1"),
             (b"X-Forwarded-Proto", b"https"), (b"X-Real-IP", b"6.6.6.6"),
             (b"Forwarded", b"for=6.6.6.6"), (b"Connection", b"close"),
             (b"Content-Length", b"2")], target=b"/p?q=1")
    out = http.request_head(r, client_ip="203.0.113.10", proto=b"http",
                            host_fallback=b"10.0.0.1:80")
    assert out == (b"POST /p?q=1 HTTP/1.1\r\nHost: site\r\n"
                   b"X-Forwarded-For: 192.0.2.1, 203.0.113.10\r\nX-Forwarded-Proto: http\r\n"
                   b"X-Real-IP: 203.0.113.10\r\nForwarded: for=203.0.113.10;proto=http\r\n"
                   b"Content-Length: 2\r\n\r\n")
    r10 = req([(b"Transfer-Encoding", b"chunked"), HOST])
    out = http.request_head(r10, client_ip="::1", proto=b"http", host_fallback=b"x:80")
    assert b'Forwarded: for="[::1]";proto=http\r\n' in out
    assert out.endswith(b"Transfer-Encoding: chunked\r\n\r\n")
    bare = http.request_head(req([], method=b"GET", version="1.0"), client_ip="1.2.3.4",
                             proto=b"http", host_fallback=b"10.0.0.1:80")
    assert bare.startswith(b"GET / HTTP/1.1\r\nHost: 10.0.0.1:80\r\n")


@pytest.mark.parametrize("headers", [
    [(b"Transfer-Encoding", b"gzip")],
    [(b"Transfer-Encoding", b"gzip, chunked")],
    [(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"3")],
    [(b"Content-Length", b"1"), (b"Content-Length", b"2")],
    [(b"Content-Length", b"0x1")],
])
def test_ambiguous_responses_are_refused_with_502(headers: H) -> None:
    with pytest.raises(http.Refused) as e:
        http.response(200, "1.1", headers, b"GET")
    assert e.value.status == 502


def test_response_framing() -> None:
    assert http.response(200, "1.1", [(b"Content-Length", b"5")], b"GET").framing.length == 5
    assert http.response(200, "1.0", [], b"GET").until_close
    assert http.response(204, "1.1", [(b"Content-Length", b"5")], b"GET").framing.length is None
    head = http.response(200, "1.1", [(b"Content-Length", b"5")], b"HEAD")
    assert head.no_body and head.framing.length == 5
    for bad in ((200, "2.0"), (101, "1.1")):
        with pytest.raises(http.Refused):
            http.response(bad[0], bad[1], [], b"GET")


def test_response_head_keep_alive_close_and_framing() -> None:
    r = http.response(200, "1.1", [(b"Content-Length", b"5"), (b"Connection", b"keep-alive"),
                                   (b"Server", b"nginx")], b"GET")
    ka = http.response_head(r, b"OK", keep_alive=True, client_http10=False, rechunk=False)
    assert ka == b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 5\r\n\r\n"
    close = http.response_head(r, b"OK", keep_alive=False, client_http10=False, rechunk=False)
    assert close.endswith(b"Connection: close\r\n\r\n")
    ka10 = http.response_head(r, b"OK", keep_alive=True, client_http10=True, rechunk=False)
    assert ka10.endswith(b"Connection: keep-alive\r\n\r\n")
    # a server naming Content-Length in Connection does not unframe its response
    smug = http.response(200, "1.1", [(b"Connection", b"content-length"),
                                      (b"Content-Length", b"5")], b"GET")
    out = http.response_head(smug, b"OK", keep_alive=True, client_http10=False, rechunk=False)
    assert b"Content-Length: 5\r\n" in out
    c = http.response(200, "1.1", [(b"Transfer-Encoding", b"chunked")], b"GET")
    out = http.response_head(c, b"OK", keep_alive=True, client_http10=False, rechunk=True)
    assert b"Content-Length" not in out and out.count(b"Transfer-Encoding: chunked") == 1


def test_interim_head_keeps_its_fields() -> None:
    r = http.response(103, "1.1", [(b"Link", b"</a.css>; rel=preload"),
                                   (b"Connection", b"keep-alive")], b"GET")
    assert http.interim_head(103, r.framing.fields) == (
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")


def test_chunk_and_error_response() -> None:
    assert http.chunk(b"hello") == b"5\r\nhello\r\n"
    r = http.error_response(503, "no server is available")
    head, _, body = r.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"Connection: close" in head
    assert body == b"503 Service Unavailable\nno server is available\n"
    assert f"Content-Length: {len(body)}".encode() in head
