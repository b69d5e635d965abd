"""Conformance and request smuggling: issue 13's proof, against the daemon on loopback.

A raw-socket client talks to the real balancer process; behind it a ``RecordingBackend``
(tests/unit/rawpeers.py) records the exact bytes the balancer sends upstream and answers
whatever a case needs, malicious responses included. The contract is the README's
"Security: what the balancer refuses and trusts"; where the cases come from:

* **the issue**: the ``Connection: content-length`` smuggle (a hop-by-hop list naming the
  framing header must not un-frame the request: its body stays a body), and its
  siblings ``Connection: transfer-encoding`` / ``host``;
* **RFC 9112**: 2.2 (bare LF, CR in a line), 3 and 3.2 (request line, request target
  forms, Host: missing, repeated, invalid; absolute-form wins over Host), 2.3 and the
  version (505), 5.1 and 5.2 (no whitespace before the colon, obs-fold), 6.1
  (Transfer-Encoding: chunked last and once, unknown codings 501, not on HTTP/1.0),
  6.3 (Transfer-Encoding with Content-Length, Content-Length syntax and duplicates),
  7.1 (chunk sizes, extensions and trailers); RFC 9110 9.3.6 (CONNECT), 7.8 (Upgrade),
  15.2 (no 1xx to HTTP/1.0 clients), 7.6.1 (hop-by-hop), 5.5 (OWS is not part of a
  field value); RFC 7239 (Forwarded);
* **smuggler** (github.com/defparsio/smuggler, ``configs/default.py`` and
  ``configs/exhaustive.py``; read from indexed copies of the repository and its README,
  the repository itself could not be fetched here): every Transfer-Encoding mutation of
  both lists, rendered with its ``render_template`` request (the gadget line right after
  the request line, Host, User-Agent, Content-type, Content-Length) and sent as single
  bytes (latin-1: ``%c`` of 0x80-0xff is one byte).
  default.py: ``nameprefix1``, ``tabprefix1``, ``tabprefix2``, ``space1`` and, for the
  bytes 01 04 08 09 0a 0b 0c 0d 1f 20 7f a0 ff, the ten positions ``midspace``
  ``postspace`` ``prespace`` ``endspace`` ``xprespace`` ``endspacex`` ``rxprespace``
  ``xnprespace`` ``endspacerx`` ``endspacexn``. exhaustive.py: its named list
  (``vanilla``, ``nameprefix2``, ``spacejoin1``, ``underjoin1``, ``smashed``,
  ``contentEnc``, ``linewrapped1``, ``quoted``, ``lazygrep``, ``sarcasm``, ``0dsuffix``,
  ``revdualchunk``, ``nested``, ``connection``, ``spjunk``, ``backslash``, ``nel``,
  ``nbsp``, ``shy``, ``doublewrapped``, ``gareth1``, ``badsetupCR/LF``, ``0dwrap``,
  ``tabwrap``, ``bodysplit``, ``http1.0``, ``encode``, ``qencode``, ``dualchunk``,
  ``commaCowIdentity`` ...) and the four positions ``midspace`` ``postspace``
  ``prespace`` ``endspace`` for every byte 01-1f and 7f-ff. Duplicates (the same bytes
  in both lists) run once, under their first name: 764 cases. Besides, the request-line
  variants (``reqline-*``: tab, double space, trailing CR, NBSP, VT, FF) of a newer
  default.py seen in an indexed copy whose repository is not named (a fork, perhaps).

The smuggler property is the same for every mutation and does not depend on how the
balancer reads the mutated header: the attack is a POST whose Content-Length covers a
body that, read as chunked, ends at once and is followed by a complete smuggled request
and the start of another one (the classic poison for the next request on the server
connection). Then either the balancer rejects it (4xx/5xx, then closes the connection,
and nothing of it reached the server) or the server received exactly one request for it,
with a well-formed head (one Host, one framing line of its own) and exactly the
Content-Length body, and no smuggled request anywhere; in both cases a victim on another
connection right after gets its own response.

Where the spec leaves room, the strict reading: "anything but 1.0 / 1.1" is 505 for any
well-formed version (HTTP/1.2 and HTTP/3.0 too, not 400); an absolute-form request
without a Host line is still an HTTP/1.1 request without Host (400, RFC 9112 3.2);
``Content-Length: 5`` with OWS around the 5 is valid (RFC 9110 5.5); the headers a 103
names in its Connection are hop-by-hop too; no 103 goes to an HTTP/1.0 client; a bad
chunk, a bare LF or an obs-fold in a *response* (the spec names no status) may give a
502 or a response cut short, or (header anomalies only) a clean response.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.poll import wait_until

from .backends import Running, free_port, running
from .rawpeers import (
    RecordingBackend,
    Reply,
    Response,
    SeenRequest,
    head_problems,
    listed,
    parse_responses,
    read_all,
    response,
    talk,
)

T = 3.0  # seconds: any single read from the balancer
CONFIG = "[timeouts]\nclient_header = 2000\nclient = 5000\nserver = 3000\n" \
         "[health]\ncheck = \"tcp\"\n"


# --- fixtures and checks -------------------------------------------------------------------

@pytest.fixture(scope="module")
def rec() -> Iterator[RecordingBackend]:
    backend = RecordingBackend("rec0").start()
    yield backend
    backend.stop()


@pytest.fixture(scope="module")
def lb(rec: RecordingBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running(tmp_path_factory.mktemp("smuggling"), listed(rec), extra=CONFIG,
                 admin_port=free_port()) as r:
        yield r


@pytest.fixture
def mark(rec: RecordingBackend, lb: Running) -> int:
    """No pooled connection left from an earlier case; the index of this case's first."""
    rec.policy = None
    rec.drop_all()
    return rec.mark()


def victim(port: int, rec: RecordingBackend, tag: str) -> None:
    """A request on a fresh connection gets its own, correct response."""
    got = talk(port, f"GET /victim-{tag} HTTP/1.1\r\nHost: v\r\n\r\n".encode(), timeout=T)
    rs = got.responses()
    assert [r.status for r in rs] == [200], got.data[:300]
    assert rs[0].value("X-Seen-Path") == f"/victim-{tag}".encode(), rs[0].raw[:300]
    assert rs[0].body == f"{rec.name} GET /victim-{tag} 0\n".encode()


def one_request(rec: RecordingBackend, mark: int, prefix: str) -> SeenRequest:
    """The single request whose target starts with ``prefix`` the server got since
    ``mark``; its head well-formed and its body complete."""
    mine = [r for r in rec.requests(mark) if r.path.startswith(prefix)]
    assert len(mine) == 1, [r.head for r in mine]
    problems = head_problems(mine[0])
    assert not problems, (problems, mine[0].head)
    assert mine[0].complete, mine[0].head
    return mine[0]


def clean_streams(rec: RecordingBackend, mark: int) -> None:
    """Every byte the server got since ``mark`` framed into well-formed requests (the
    last one may be cut only if the balancer closed that connection), none smuggled."""
    for c in rec.since(mark):
        assert not c.leftover, (c.index, c.leftover[:200], bytes(c.data[:400]))
        for r in c.requests:
            assert not head_problems(r), (head_problems(r), r.head)
            assert b"smuggled" not in r.target and b"poison" not in r.target, r.head
        cut = [r for r in c.requests if not r.complete]
        assert not cut or (cut == c.requests[-1:] and c.peer_closed), [r.head for r in cut]


def stats(lb: Running) -> dict[str, dict[str, object]]:
    admin = int(lb.path.read_text().split('[admin]\nbind = "127.0.0.1:')[1].split('"')[0])
    snap = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats.json",
                                             timeout=T).read())
    return {s["name"]: s for s in snap["servers"]}


@dataclass
class Outcome:
    first: Response
    rest: list[Response]  # any further response (there must be none)
    closed: bool
    unparsed: bytes


def attack(port: int, data: bytes, methods: tuple[bytes, ...] = ()) -> Outcome:
    """Send ``data``; read one response; after an error status, read until the balancer
    closes (it must, within T); after a success, half-close and read what else comes."""
    with socket.create_connection(("127.0.0.1", port), timeout=T) as s:
        with contextlib.suppress(OSError):
            s.sendall(data)
        got = read_all(s, T, responses=1, methods=methods)
        everything, closed = got.data, got.closed
        rs, _ = parse_responses(everything, eof=closed, methods=methods)
        finals = [r for r in rs if r.status >= 200 or r.malformed]
        assert finals and finals[0].complete, everything[:300]
        if not closed:
            if finals[0].status < 400:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_WR)
            more = read_all(s, T)
            everything, closed = everything + more.data, more.closed
    rs, unparsed = parse_responses(everything, eof=closed, methods=methods)
    finals = [r for r in rs if r.status >= 200 or r.malformed]
    return Outcome(finals[0], finals[1:], closed, unparsed)


def reject_or_serve(lb: Running, rec: RecordingBackend, mark: int, tag: str, data: bytes,
                    body: bytes) -> str:
    """The smuggling property (see the module docstring); "rejected" or "served"."""
    out = attack(lb.port, data)
    victim(lb.port, rec, tag)
    clean_streams(rec, mark)
    if out.first.status >= 400:
        assert out.first.status < 600 and out.closed, (out.first.raw[:200], out.closed)
        assert not [r for r in rec.requests(mark) if r.path.startswith(f"/attack-{tag}")]
        outcome = "rejected"
    else:
        assert out.first.status == 200, out.first.raw[:300]
        assert (out.first.value("X-Seen-Path") or b"").startswith(f"/attack-{tag}".encode()), \
            out.first.raw[:300]
        seen = one_request(rec, mark, f"/attack-{tag}")
        assert bytes(seen.body) == body, (bytes(seen.body[:200]), seen.head)
        outcome = "served"
    assert not out.rest and not out.unparsed, ([r.raw[:200] for r in out.rest],
                                               out.unparsed[:200])  # one answer, one request
    assert all(r.path.startswith(("/attack-", "/victim-")) for r in rec.requests(mark))
    return outcome


# --- the smuggle: Connection naming a framing header ------------------------------

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\nGET /poison HTTP/1.1\r\nX-Ignore: "


@pytest.mark.parametrize("connection", [
    b"content-length", b"Content-Length", b"keep-alive, content-length",
    b"content-length, host", b"Host", b"close, Host",
])
def test_connection_naming_content_length_keeps_the_body_a_body(
        lb: Running, rec: RecordingBackend, mark: int, connection: bytes) -> None:
    data = (b"POST /attack-cl HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
            b"Connection: %s\r\n\r\n%s" % (len(SMUGGLED), connection, SMUGGLED))
    out = attack(lb.port, data)
    assert out.first.status == 200, out.first.raw[:300]
    assert out.first.value("X-Seen-Path") == b"/attack-cl"
    assert not out.rest
    victim(lb.port, rec, "cl")
    seen = one_request(rec, mark, "/attack-cl")
    assert bytes(seen.body) == SMUGGLED and seen.values("content-length") == [b"%d" % len(
        SMUGGLED)]
    assert seen.values("host") == [b"x"]
    clean_streams(rec, mark)
    assert [r.path for r in rec.requests(mark)] in (["/attack-cl", "/victim-cl"],
                                                     ["/victim-cl", "/attack-cl"])


@pytest.mark.parametrize("connection", [
    b"transfer-encoding", b"Transfer-Encoding, close", b"content-length, transfer-encoding, host",
])
def test_connection_naming_transfer_encoding_keeps_the_chunked_body(
        lb: Running, rec: RecordingBackend, mark: int, connection: bytes) -> None:
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (SMUGGLED[:20], SMUGGLED[20:]))
    data = (b"POST /attack-te HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: %s\r\n\r\n%s0\r\n\r\n" % (connection, chunks))
    out = attack(lb.port, data)
    assert out.first.status == 200 and out.first.value("X-Seen-Path") == b"/attack-te"
    assert not out.rest
    victim(lb.port, rec, "te")
    seen = one_request(rec, mark, "/attack-te")
    assert bytes(seen.body) == SMUGGLED and seen.values("host") == [b"x"]
    clean_streams(rec, mark)


# --- smuggler's Transfer-Encoding mutations ----------------------------------------------

def _smuggler_corpus() -> list[tuple[str, bytes, bytes]]:
    """(name, gadget, request-line version) of default.py and exhaustive.py, deduplicated."""
    named: list[tuple[str, str]] = [
        # default.py
        ("nameprefix1", " Transfer-Encoding: chunked"),
        ("tabprefix1", "Transfer-Encoding:\tchunked"),
        ("tabprefix2", "Transfer-Encoding\t:\tchunked"),
        ("space1", "Transfer-Encoding : chunked"),
        # exhaustive.py
        ("vanilla", "Transfer-Encoding: chunked"),
        ("nameprefix2", "Foo: bar\r\n\tTransfer-Encoding: chunked"),
        ("nospace1", "Transfer-Encoding:chunked"),
        ("connection", "Connection: Transfer-Encoding\r\nTransfer-Encoding: chunked"),
        ("spjunk", "Transfer-Encoding x: chunked"),
        ("backslash", "Transfer\\Encoding: chunked"),
        ("badsetupCR", "Foo: bar\rTransfer-Encoding: chunked"),
        ("badsetupLF", "Foo: bar\nTransfer-Encoding: chunked"),
        ("nel", "Transfer-Encoding\x85: chunked"),
        ("shy", "Transfer\xadEncoding: chunked"),
        ("encode", "Transfer-%45ncoding: chunked"),
        ("spacejoin1", "Transfer Encoding: chunked"),
        ("underjoin1", "Transfer_Encoding: chunked"),
        ("smashed", "Transfer Encoding:chunked"),
        ("valueprefix1", "Transfer-Encoding:  chunked"),
        ("vertprefix1", "Transfer-Encoding:\x0bchunked"),
        ("commaCow", "Transfer-Encoding: chunked, cow"),
        ("cowComma", "Transfer-Encoding: cow, chunked"),
        ("contentEnc", "Content-Encoding: chunked"),
        ("linewrapped1", "Transfer-Encoding:\n chunked"),
        ("quoted", "Transfer-Encoding: \"chunked\""),
        ("aposed", "Transfer-Encoding: 'chunked'"),
        ("lazygrep", "Transfer-Encoding: chunk"),
        ("sarcasm", "TrAnSFer-EnCODinG: cHuNkeD"),
        ("yelling", "TRANSFER-ENCODING: CHUNKED"),
        ("0dsuffix", "Transfer-Encoding: chunked\r"),
        ("tabsuffix", "Transfer-Encoding: chunked\t"),
        ("revdualchunk", "Transfer-Encoding: cow\r\nTransfer-Encoding: chunked"),
        ("0dspam", "Transfer\r-Encoding: chunked"),
        ("nested", "Transfer-Encoding: cow chunked bar"),
        ("spaceFF", "Transfer-Encoding:\xffchunked"),
        ("accentCH", "Transfer-Encoding: ch\x96nked"),
        ("accentTE", "Transf\x82r-Encoding: chunked"),
        ("x-rout", "X:X\rTransfer-Encoding: chunked"),
        ("x-nout", "X:X\nTransfer-Encoding: chunked"),
        ("vertwrap", "Transfer-Encoding: chunked\n\x0b"),
        ("nbsp", "Transfer-Encoding\xa0: chunked"),
        ("shy2", "Transfer-Encoding\xad: chunked"),
        ("doublewrapped", "Transfer-Encoding:\r\n \r\n chunked"),
        ("gareth1", "Transfer-Encoding\n : chunked"),
        ("multiCase", "tRANSFER-eNCODING: chunked"),
        ("0dwrap", "Foo: bar\r\n\rTransfer-Encoding: chunked"),
        ("tabwrap", "Transfer-Encoding: chunked\r\n\t"),
        ("bodysplit", "Foo: bar\n\nTransfer-Encoding: chunked"),
        ("qencode", "Transfer-Encoding: =?iso-8859-1?B?Y2h1bmtlZA==?="),
        ("qencodeutf", "Transfer-Encoding: =?UTF-8?B?Y2h1bmtlZA==?="),
        ("dualchunk", "Transfer-Encoding: chunked\r\nTransfer-encoding: identity"),
        ("commaCowIdentity", "Transfer-Encoding: chunked, identity"),
        ("cowCommaIdentity", "Transfer-Encoding: identity, chunked"),
        ("nestedIdentity", "Transfer-Encoding: identity, chunked, identity"),
        ("unispace", "Transfer-Encoding:\xa0chunked"),
    ]
    out: list[tuple[str, bytes, bytes]] = [(n, g.encode("latin-1"), b"HTTP/1.1")
                                           for n, g in named]
    out.append(("http1.0", b"Transfer-Encoding: chunked", b"HTTP/1.0"))
    default_bytes = [0x1, 0x4, 0x8, 0x9, 0xA, 0xB, 0xC, 0xD, 0x1F, 0x20, 0x7F, 0xA0, 0xFF]
    for i in default_bytes:
        c = chr(i)
        for name, g in (
                ("midspace", f"Transfer-Encoding:{c}chunked"),
                ("postspace", f"Transfer-Encoding{c}: chunked"),
                ("prespace", f"{c}Transfer-Encoding: chunked"),
                ("endspace", f"Transfer-Encoding: chunked{c}"),
                ("xprespace", f"X: X{c}Transfer-Encoding: chunked"),
                ("endspacex", f"Transfer-Encoding: chunked{c}X: X"),
                ("rxprespace", f"X: X\r{c}Transfer-Encoding: chunked"),
                ("xnprespace", f"X: X{c}\nTransfer-Encoding: chunked"),
                ("endspacerx", f"Transfer-Encoding: chunked\r{c}X: X"),
                ("endspacexn", f"Transfer-Encoding: chunked{c}\nX: X")):
            out.append((f"{name}-{i:02x}", g.encode("latin-1"), b"HTTP/1.1"))
    for i in [*range(0x1, 0x20), *range(0x7F, 0x100)]:
        c = chr(i)
        for name, g in (("midspace", f"Transfer-Encoding:{c}chunked"),
                        ("postspace", f"Transfer-Encoding{c}: chunked"),
                        ("prespace", f"{c}Transfer-Encoding: chunked"),
                        ("endspace", f"Transfer-Encoding: chunked{c}")):
            out.append((f"{name}-{i:02x}", g.encode("latin-1"), b"HTTP/1.1"))
    seen: set[tuple[bytes, bytes]] = set()
    unique = []
    for name, gadget, version in out:
        if (gadget, version) not in seen:
            seen.add((gadget, version))
            unique.append((name, gadget, version))
    return unique


SMUGGLER = _smuggler_corpus()
# the request-line variants of a newer default.py (gadget: a plain TE: chunked line)
REQLINE = [
    ("reqline-tab", b"POST\t/attack-{t}\tHTTP/1.1"),
    ("reqline-double-sp", b"POST  /attack-{t}  HTTP/1.1"),
    ("reqline-trail-cr", b"POST /attack-{t} HTTP/1.1\rX: X"),
    ("reqline-nbsp", b"POST /attack-{t}\xa0HTTP/1.1"),
    ("reqline-vt", b"POST /attack-{t}\x0bHTTP/1.1"),
    ("reqline-ff", b"POST /attack-{t}\x0cHTTP/1.1"),
    ("reqline-mixed", b"POST \t/attack-{t} \tHTTP/1.1"),
]
UA = (b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
      b"Chrome/78.0.3904.87 Safari/537.36")


def smuggler_request(request_line: bytes, gadget: bytes | None, body: bytes) -> bytes:
    """smuggler's ``render_template``: the gadget line right after the request line."""
    lines = [request_line]
    if gadget is not None:
        lines.append(gadget)
    else:
        lines.append(b"Transfer-Encoding: chunked")
    lines += [b"Host: x", b"User-Agent: " + UA,
              b"Content-type: application/x-www-form-urlencoded; charset=UTF-8",
              b"Content-Length: %d" % len(body)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def smuggle_body(tag: str) -> bytes:
    """Content-Length covers all; read as chunked, it ends at once and a smuggled request
    and the start of another follow."""
    return (b"0\r\n\r\nGET /smuggled-%s HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /poison-%s HTTP/1.1\r\nX-Ignore: " % (tag.encode(), tag.encode()))


@pytest.mark.parametrize(("name", "gadget", "version"), SMUGGLER, ids=[n for n, _, _ in SMUGGLER])
def test_smuggler_mutation(lb: Running, rec: RecordingBackend, mark: int, name: str,
                           gadget: bytes, version: bytes) -> None:
    tag = f"m{mark}z"
    body = smuggle_body(tag)
    data = smuggler_request(b"POST /attack-%s?cb=%s %s" % (tag.encode(), name.encode(),
                                                           version), gadget, body)
    outcome = reject_or_serve(lb, rec, mark, tag, data, body)
    if gadget == b"Transfer-Encoding: chunked":  # TE and CL together: never served
        assert outcome == "rejected"


@pytest.mark.parametrize(("name", "line"), REQLINE, ids=[n for n, _ in REQLINE])
def test_smuggler_request_line_variant(lb: Running, rec: RecordingBackend, mark: int,
                                       name: str, line: bytes) -> None:
    tag = f"m{mark}z"
    body = smuggle_body(tag)
    data = smuggler_request(line.replace(b"{t}", tag.encode()), None, body)
    # every variant carries TE: chunked and Content-Length: rejected whatever the line
    assert reject_or_serve(lb, rec, mark, tag, data, body) == "rejected"


# --- RFC 9112 framing and the spec's request table: exact statuses --------------------------

def _rejects() -> list[tuple[str, bytes, int]]:
    h = b"Host: x\r\n"
    cases: list[tuple[str, bytes, int]] = [
        # Host (RFC 9112 3.2)
        ("no-host", b"GET /{t} HTTP/1.1\r\n\r\n", 400),
        ("two-hosts", b"GET /{t} HTTP/1.1\r\nHost: x\r\nHost: x\r\n\r\n", 400),
        ("two-hosts-differ", b"GET /{t} HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
    ]
    for i, bad in enumerate([b"", b"a b", b"a@b", b"a/b", b"a:b:c", b"a:80x", b"[::1",
                             b"a\\b", b"a?b", b"a#b"]):
        cases.append((f"host-invalid-{i}", b"GET /{t} HTTP/1.1\r\nHost: " + bad + b"\r\n\r\n",
                      400))
    cases += [
        # request targets (RFC 9112 3.2)
        ("absolute-userinfo", b"GET http://u@h.example/{t} HTTP/1.1\r\n" + h + b"\r\n", 400),
        ("absolute-userinfo-pass", b"GET http://u:p@h.example/{t} HTTP/1.1\r\n" + h + b"\r\n",
         400),
        ("absolute-empty-authority", b"GET http:///{t} HTTP/1.1\r\n" + h + b"\r\n", 400),
        ("absolute-bad-port", b"GET http://h.example:80x/{t} HTTP/1.1\r\n" + h + b"\r\n", 400),
        ("absolute-form-no-host-line", b"GET http://h.example/{t} HTTP/1.1\r\n\r\n", 400),
        ("absolute-ftp", b"GET ftp://h.example/{t} HTTP/1.1\r\n" + h + b"\r\n", 400),
        ("target-relative", b"GET {t} HTTP/1.1\r\n" + h + b"\r\n", 400),
        ("target-star-get", b"GET * HTTP/1.1\r\n" + h + b"\r\n", 400),
        ("connect", b"CONNECT h.example:443 HTTP/1.1\r\nHost: h.example:443\r\n\r\n", 405),
        # versions
        ("http-2.0", b"GET /{t} HTTP/2.0\r\n" + h + b"\r\n", 505),
        ("http-1.2", b"GET /{t} HTTP/1.2\r\n" + h + b"\r\n", 505),
        ("http-3.0", b"GET /{t} HTTP/3.0\r\n" + h + b"\r\n", 505),
        ("http-0.9-with-headers", b"GET /{t} HTTP/0.9\r\n" + h + b"\r\n", 505),
        # Transfer-Encoding (RFC 9112 6.1, 6.3)
        ("te-on-http10", b"POST /{t} HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
         400),
        ("cl-te", b"POST /{t} HTTP/1.1\r\n" + h + b"Content-Length: 6\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nG", 400),
        ("te-cl", b"POST /{t} HTTP/1.1\r\n" + h + b"Transfer-Encoding: chunked\r\n"
         b"Content-Length: 4\r\n\r\n5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n", 400),
        ("te-cl-zero", b"POST /{t} HTTP/1.1\r\n" + h + b"Content-Length: 0\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        ("te-te-last-not-chunked", b"POST /{t} HTTP/1.1\r\n" + h + b"Transfer-Encoding: chunked"
         b"\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n", 400),
        ("te-chunked-gzip", b"POST /{t} HTTP/1.1\r\n" + h + b"Transfer-Encoding: chunked, gzip"
         b"\r\n\r\n0\r\n\r\n", 400),
        ("te-gzip", b"POST /{t} HTTP/1.1\r\n" + h + b"Transfer-Encoding: gzip\r\n\r\nxx", 400),
        ("te-identity", b"POST /{t} HTTP/1.1\r\n" + h + b"Transfer-Encoding: identity\r\n\r\n",
         400),
        ("te-chunked-twice", b"POST /{t} HTTP/1.1\r\n" + h + b"Transfer-Encoding: chunked, "
         b"chunked\r\n\r\n0\r\n\r\n", 400),
        ("te-two-chunked-lines", b"POST /{t} HTTP/1.1\r\n" + h + b"Transfer-Encoding: chunked"
         b"\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        ("te-empty", b"POST /{t} HTTP/1.1\r\n" + h + b"Transfer-Encoding: \r\n\r\n", 400),
        ("te-xchunked", b"POST /{t} HTTP/1.1\r\n" + h + b"Transfer-Encoding: xchunked\r\n\r\n"
         b"0\r\n\r\n", 400),
        ("te-chunked-vt", b"POST /{t} HTTP/1.1\r\n" + h + b"Transfer-Encoding: chunked\x0b\r\n"
         b"\r\n0\r\n\r\n", 400),
        ("te-space-before-colon", b"POST /{t} HTTP/1.1\r\n" + h + b"Transfer-Encoding : "
         b"chunked\r\n\r\n0\r\n\r\n", 400),
        ("te-gzip-chunked", b"POST /{t} HTTP/1.1\r\n" + h + b"Transfer-Encoding: gzip, chunked"
         b"\r\n\r\n0\r\n\r\n", 501),
        ("te-identity-chunked", b"POST /{t} HTTP/1.1\r\n" + h + b"Transfer-Encoding: identity,"
         b" chunked\r\n\r\n0\r\n\r\n", 501),
        ("te-deflate-line-chunked-line", b"POST /{t} HTTP/1.1\r\n" + h + b"Transfer-Encoding: "
         b"deflate\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
    ]
    # Content-Length (RFC 9112 6.3, RFC 9110 8.6)
    for i, bad in enumerate([b"+3", b"-1", b"0x3", b"3, 3", b"3 3", b"", b"3.0", b"1e1",
                             b"abc"]):
        cases.append((f"cl-invalid-{i}", b"POST /{t} HTTP/1.1\r\n" + h + b"Content-Length: "
                      + bad + b"\r\n\r\nabc", 400))
    cases += [
        ("cl-two-equal", b"POST /{t} HTTP/1.1\r\n" + h + b"Content-Length: 3\r\n"
         b"Content-Length: 3\r\n\r\nabc", 400),
        ("cl-two-differ", b"POST /{t} HTTP/1.1\r\n" + h + b"Content-Length: 3\r\n"
         b"Content-Length: 4\r\n\r\nabcd", 400),
        # line syntax (RFC 9112 2.2, 5.1, 5.2)
        ("bare-lf", b"GET /{t} HTTP/1.1\nHost: x\n\n", 400),
        ("bare-lf-one-line", b"GET /{t} HTTP/1.1\r\nHost: x\nX: y\r\n\r\n", 400),
        ("bare-lf-request-line", b"GET /{t} HTTP/1.1\nHost: x\r\n\r\n", 400),
        ("bare-cr", b"GET /{t} HTTP/1.1\r\nHost: x\rX: y\r\n\r\n", 400),
        ("obs-fold", b"GET /{t} HTTP/1.1\r\n" + h + b"X: a\r\n b\r\n\r\n", 400),
        ("obs-fold-tab", b"GET /{t} HTTP/1.1\r\n" + h + b"X: a\r\n\tb\r\n\r\n", 400),
        ("nul-in-value", b"GET /{t} HTTP/1.1\r\n" + h + b"X: a\x00b\r\n\r\n", 400),
        ("cr-in-value", b"GET /{t} HTTP/1.1\r\n" + h + b"X: a\rb\r\n\r\n", 400),
        ("space-before-colon", b"GET /{t} HTTP/1.1\r\n" + h + b"X-Foo : bar\r\n\r\n", 400),
        ("host-space-before-colon", b"GET /{t} HTTP/1.1\r\nHost : x\r\n\r\n", 400),
        ("method-paren", b"G(T /{t} HTTP/1.1\r\n" + h + b"\r\n", 400),
        ("method-ctl", b"GE\x01T /{t} HTTP/1.1\r\n" + h + b"\r\n", 400),
        ("method-del", b"GET\x7f /{t} HTTP/1.1\r\n" + h + b"\r\n", 400),
        ("method-empty", b" /{t} HTTP/1.1\r\n" + h + b"\r\n", 400),
    ]
    return cases


REJECTS = _rejects()


@pytest.mark.parametrize(("request_bytes", "status"), [(r, s) for _, r, s in REJECTS],
                         ids=[n for n, _, _ in REJECTS])
def test_request_rejected_exactly(lb: Running, rec: RecordingBackend, mark: int,
                                  request_bytes: bytes, status: int) -> None:
    tag = f"rej{mark}"
    out = attack(lb.port, request_bytes.replace(b"{t}", tag.encode()))
    assert out.first.status == status, out.first.raw[:300]
    assert out.closed, "the connection stays open after the error"
    assert not out.rest
    assert out.first.closes, out.first.raw[:300]  # said so: Connection: close
    assert not [r for r in rec.requests(mark) if tag.encode() in r.target]
    victim(lb.port, rec, tag)
    clean_streams(rec, mark)


def test_http09_request_line_is_refused(lb: Running, rec: RecordingBackend, mark: int) -> None:
    out = attack(lb.port, b"GET /\r\n\r\n")
    assert out.first.status in (400, 505) and out.closed, out.first.raw[:200]
    assert rec.requests(mark) == []
    victim(lb.port, rec, "h09")


# bodies that break while the exchange runs: the head went to the server already
BAD_CHUNKS = [
    ("chunk-size-junk", b"5\r\nhello\r\nzz\r\nxx\r\n0\r\n\r\n"),
    ("chunk-size-overflow", b"5\r\nhello\r\nfffffffffffffffffff\r\nxx\r\n0\r\n\r\n"),
    ("chunk-no-crlf-after-data", b"5\r\nhelloXX0\r\n\r\n"),
    ("chunk-size-bare-lf", b"5\r\nhello\r\n3\nabc\r\n0\r\n\r\n"),
    ("chunk-size-negative", b"5\r\nhello\r\n-3\r\nabc\r\n0\r\n\r\n"),
    ("chunk-size-space-inside", b"5\r\nhello\r\n1 0\r\n" + b"a" * 16 + b"\r\n0\r\n\r\n"),
]


@pytest.mark.parametrize("body", [b for _, b in BAD_CHUNKS], ids=[n for n, _ in BAD_CHUNKS])
def test_bad_chunk_in_a_running_exchange(lb: Running, rec: RecordingBackend, mark: int,
                                         body: bytes) -> None:
    tag = f"chunk{mark}"
    with socket.create_connection(("127.0.0.1", lb.port), timeout=T) as s:
        s.sendall(f"POST /{tag} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  .encode())
        wait_until(lambda: [r for r in rec.requests(mark) if r.path == f"/{tag}"], T,
                   "the request head at the server")
        s.sendall(body)
        got = read_all(s, T)
    rs = parse_responses(got.data, eof=got.closed)[0]
    assert [r.status for r in rs] == [400] and got.closed, got.data[:300]
    conns = [c for c in rec.since(mark) if any(r.path == f"/{tag}" for r in c.requests)]
    assert len(conns) == 1
    wait_until(lambda: conns[0].closed, T, "the server connection closed by the balancer")
    seen = conns[0].requests[0]
    assert not seen.complete and b"hello".startswith(bytes(seen.body)), bytes(seen.body)
    victim(lb.port, rec, tag)
    clean_streams(rec, mark)


# --- served, with exactly what the server must see -----------------------------------------

@dataclass(frozen=True)
class Served:
    name: str
    request: bytes  # {t}: the case's tag, in the target
    target: bytes  # as the server must see it
    host: bytes | None  # None: the backend's own address
    body: bytes = b""
    framing: str = "none"  # none (or an empty Content-Length), length, chunked


SERVED = [
    Served("http10-no-host", b"GET /{t} HTTP/1.0\r\n\r\n", b"/{t}", None),
    Served("absolute-form-wins", b"GET http://h.example:81/p/{t}?q=1 HTTP/1.1\r\nHost: other"
           b"\r\n\r\n", b"/p/{t}?q=1", b"h.example:81"),
    Served("absolute-form-case", b"GET HTTP://H.Example/{t} HTTP/1.1\r\nHost: x\r\n\r\n",
           b"/{t}", b"H.Example"),
    Served("absolute-form-https", b"GET hTTpS://h.example:8443/{t} HTTP/1.1\r\nHost: x"
           b"\r\n\r\n", b"/{t}", b"h.example:8443"),
    Served("absolute-form-empty-path", b"GET http://h.example?{t} HTTP/1.1\r\nHost: x\r\n\r\n",
           b"/?{t}", b"h.example"),
    Served("host-port", b"GET /{t} HTTP/1.1\r\nHost: a.example:8080\r\n\r\n", b"/{t}",
           b"a.example:8080"),
    Served("host-ipv4", b"GET /{t} HTTP/1.1\r\nHost: 192.0.2.1\r\n\r\n", b"/{t}",
           b"192.0.2.1"),
    Served("host-ipv6", b"GET /{t} HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", b"/{t}", b"[::1]:80"),
    Served("host-ipv6-no-port", b"GET /{t} HTTP/1.1\r\nHost: [2001:db8::1]\r\n\r\n", b"/{t}",
           b"[2001:db8::1]"),
    Served("http10-with-host", b"GET /{t} HTTP/1.0\r\nHost: a.example\r\n\r\n", b"/{t}",
           b"a.example"),
    Served("options-star", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", b"*", b"x"),
    Served("post-length", b"POST /{t} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
           b"/{t}", b"x", b"hello", "length"),
    # RFC 9110 5.5: OWS around a field value is not part of it: "5" is 1*DIGIT
    Served("post-length-leading-ows", b"POST /{t} HTTP/1.1\r\nHost: x\r\nContent-Length:  5\r\n"
           b"\r\nhello", b"/{t}", b"x", b"hello", "length"),
    Served("post-length-trailing-ows", b"POST /{t} HTTP/1.1\r\nHost: x\r\nContent-Length: 5 \t"
           b"\r\n\r\nhello", b"/{t}", b"x", b"hello", "length"),
    Served("post-chunked-ext-trailers", b"POST /{t} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: "
           b"chunked\r\n\r\n5;ext=1\r\nhello\r\n6;a=\"b;c\"\r\n world\r\n0;z\r\n"
           b"X-Trailer: 1\r\n\r\n", b"/{t}", b"x", b"hello world",
           "chunked"),
    Served("post-chunked-case", b"POST /{t} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: CHUNKED"
           b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n", b"/{t}", b"x", b"abc", "chunked"),
    Served("post-chunked-hex-upper", b"POST /{t} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: "
           b"chunked\r\n\r\nA\r\n0123456789\r\n00\r\n\r\n", b"/{t}", b"x", b"0123456789",
           "chunked"),
    Served("underscore-te-is-no-framing", b"POST /{t} HTTP/1.1\r\nHost: x\r\n"
           b"Transfer_Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello", b"/{t}", b"x",
           b"hello", "length"),
    Served("content-encoding-chunked", b"POST /{t} HTTP/1.1\r\nHost: x\r\nContent-Encoding: "
           b"chunked\r\nContent-Length: 5\r\n\r\nhello", b"/{t}", b"x", b"hello", "length"),
]


@pytest.mark.parametrize("case", SERVED, ids=[c.name for c in SERVED])
def test_request_served_exactly(lb: Running, rec: RecordingBackend, mark: int,
                                case: Served) -> None:
    tag = f"ok{mark}".encode()
    data = case.request.replace(b"{t}", tag)
    method = data.split(b" ", 1)[0]
    out = attack(lb.port, data, (method,))
    assert out.first.status == 200, out.first.raw[:300]
    target = case.target.replace(b"{t}", tag)
    assert out.first.value("X-Seen-Path") == target
    assert not out.rest
    seen = one_request(rec, mark, target.decode())
    assert seen.method == method and seen.target == target
    assert seen.values("host") == [case.host or f"127.0.0.1:{rec.port}".encode()]
    assert bytes(seen.body) == case.body
    if case.framing == "chunked":
        assert seen.values("transfer-encoding") == [b"chunked"]
        assert not seen.values("content-length")
        assert all(b";" not in line for line in seen.chunk_lines), seen.chunk_lines
        assert seen.trailers == [], seen.trailers
    elif case.framing == "length":
        assert seen.values("content-length") == [b"%d" % len(case.body)]
    else:
        assert seen.values("content-length") in ([], [b"0"])
        assert not seen.values("transfer-encoding")
    victim(lb.port, rec, tag.decode())
    clean_streams(rec, mark)


def test_underscore_te_without_length_has_no_body(lb: Running, rec: RecordingBackend,
                                                  mark: int) -> None:
    """``Transfer_Encoding`` is another header: no framing, no body; what the client
    meant as chunks is the next request, garbage: 400 after the first answer."""
    tag = f"us{mark}"
    got = talk(lb.port, f"POST /{tag} HTTP/1.1\r\nHost: x\r\nTransfer_Encoding: chunked\r\n"
               f"\r\n5\r\nhello\r\n0\r\n\r\n".encode(), shut=False, timeout=T)
    rs = got.responses()
    assert [r.status for r in rs] == [200, 400] and got.closed, got.data[:400]
    seen = one_request(rec, mark, f"/{tag}")
    assert seen.body_length == 0
    victim(lb.port, rec, tag)


def test_forwarding_headers(lb: Running, rec: RecordingBackend, mark: int) -> None:
    tag = f"fw{mark}"
    got = talk(lb.port, (
        f"GET /{tag} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 192.0.2.7\r\n"
        "X-Forwarded-For: 198.51.100.1\r\nX-Forwarded-Proto: https\r\n"
        "X-Real-IP: 203.0.113.9\r\nForwarded: for=203.0.113.9;proto=https\r\n"
        "Connection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\n"
        "Proxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-T\r\n"
        "Proxy-Authorization: Basic eDp5\r\nX-Keep: yes\r\n\r\n").encode(), timeout=T)
    assert [r.status for r in got.responses()] == [200], got.data[:300]
    seen = one_request(rec, mark, f"/{tag}")
    assert seen.values("x-forwarded-for") == [b"192.0.2.7, 198.51.100.1, 127.0.0.1"]
    assert seen.values("x-forwarded-proto") == [b"http"]
    assert seen.values("x-real-ip") == [b"127.0.0.1"]
    assert seen.values("forwarded") == [b"for=127.0.0.1;proto=http"]
    assert seen.values("x-keep") == [b"yes"]
    for gone in ("x-secret", "keep-alive", "proxy-connection", "te", "trailer",
                 "proxy-authorization", "upgrade"):
        assert not seen.values(gone), (gone, seen.head)
    assert all(b"x-secret" not in v.lower() for v in seen.values("connection"))


def test_upgrade_is_a_plain_request_and_no_tunnel(lb: Running, rec: RecordingBackend,
                                                  mark: int) -> None:
    tag = f"up{mark}"
    got = talk(lb.port, (
        f"GET /{tag}-1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        f"GET /{tag}-2 HTTP/1.1\r\nHost: x\r\n\r\n").encode(), timeout=T)
    rs = got.responses()
    assert [r.status for r in rs] == [200, 200], got.data[:500]
    assert [r.value("X-Seen-Path") for r in rs] == [f"/{tag}-1".encode(), f"/{tag}-2".encode()]
    for i in (1, 2):
        seen = one_request(rec, mark, f"/{tag}-{i}")
        assert not seen.values("upgrade")
        assert all(b"upgrade" not in v.lower() for v in seen.values("connection"))
    clean_streams(rec, mark)


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_upgrade_post_keeps_its_body(lb: Running, rec: RecordingBackend, mark: int,
                                     framing: str) -> None:
    tag = f"upb{mark}"
    body = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    framed = (b"Content-Length: %d\r\n\r\n%s" % (len(body), body) if framing == "length" else
              b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    got = talk(lb.port, f"POST /{tag}-1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, "
               f"HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
               .encode() + framed + f"GET /{tag}-2 HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
               timeout=T)
    rs = got.responses()
    assert [r.status for r in rs] == [200, 200], got.data[:500]
    assert rs[1].value("X-Seen-Path") == f"/{tag}-2".encode()
    seen = one_request(rec, mark, f"/{tag}-1")
    assert bytes(seen.body) == body and not seen.values("upgrade")
    assert not seen.values("http2-settings")
    one_request(rec, mark, f"/{tag}-2")
    clean_streams(rec, mark)


@pytest.mark.parametrize("bad", [
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc",
    b"GET / HTTP/1.1\nHost: x\n\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GARBAGE\r\n\r\n",
], ids=["cl-plus", "bare-lf", "xchunked", "cl-te", "garbage"])
def test_pipelined_good_then_bad(lb: Running, rec: RecordingBackend, mark: int,
                                 bad: bytes) -> None:
    """The good ones are answered first, in order and complete (the first is slow: the
    bad one has long been parsed), then the 400, then close."""
    tag = f"pl{mark}"
    rec.policy = lambda req, conn: Reply(delay=0.3) if req.path == f"/{tag}-1" else None
    got = talk(lb.port, (f"GET /{tag}-1 HTTP/1.1\r\nHost: x\r\n\r\n"
                         f"GET /{tag}-2 HTTP/1.1\r\nHost: x\r\n\r\n").encode() + bad,
               shut=False, timeout=T)
    rs, rest = parse_responses(got.data, eof=got.closed)
    assert [r.status for r in rs] == [200, 200, 400] and got.closed, got.data[:600]
    assert all(r.complete for r in rs) and rest == b""
    assert [r.value("X-Seen-Path") for r in rs[:2]] == [f"/{tag}-1".encode(),
                                                         f"/{tag}-2".encode()]
    assert sorted(r.path for r in rec.requests(mark)) == [f"/{tag}-1", f"/{tag}-2"]
    clean_streams(rec, mark)


def test_connect_closes(lb: Running, rec: RecordingBackend, mark: int) -> None:
    """CONNECT is refused, and what follows it (a would-be tunnel) is never a request."""
    got = talk(lb.port, b"CONNECT h.example:443 HTTP/1.1\r\nHost: h.example:443\r\n\r\n"
               b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", shut=False, timeout=T)
    assert [r.status for r in got.responses()] == [405] and got.closed, got.data[:300]
    assert rec.requests(mark) == []


# --- responses: malicious servers -----------------------------------------------------------

@pytest.fixture(scope="module")
def evil(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, RecordingBackend]]:
    """A daemon whose only server answers what each case says; its errors are not
    counted (error_limit = 0) so that it stays UP from case to case."""
    backend = RecordingBackend("evil").start()
    try:
        with running(tmp_path_factory.mktemp("evil"), listed(backend),
                     extra=CONFIG + "[backend]\nerror_limit = 0\nretries = 0\n") as r:
            yield r, backend
    finally:
        backend.stop()


@pytest.fixture
def evil_mark(evil: tuple[Running, RecordingBackend]) -> int:
    _, backend = evil
    backend.policy = None
    backend.drop_all()
    return backend.mark()


def answer_with(backend: RecordingBackend, path: str, reply: Reply) -> None:
    backend.policy = lambda req, conn: reply if req.path == path else None


def served_conn(backend: RecordingBackend, mark: int, path: str) -> int:
    found = [c.index for c in backend.since(mark) if any(r.path == path for r in c.requests)]
    assert len(found) == 1, found
    return found[0]


def wait_closed(backend: RecordingBackend, index: int) -> None:
    wait_until(lambda: backend.conns[index].closed and backend.conns[index].peer_closed, T,
               f"the balancer closing server connection {index}")


BAD_STATUS = [
    ("http-2.0", b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ("http-0.9-ish", b"ok, no status line at all\r\n\r\n"),
    ("icy", b"ICY 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ("status-4-digits", b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok"),
    ("status-2-digits", b"HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\nok"),
    ("status-letters", b"HTTP/1.1 abc OK\r\nContent-Length: 2\r\n\r\nok"),
    ("version-lowercase", b"http/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ("101-unasked", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
     b"Connection: Upgrade\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n"),
    ("te-gzip", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nokokok"),
    ("te-gzip-chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
     b"2\r\nok\r\n0\r\n\r\n"),
    ("te-chunked-chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"
     b"2\r\nok\r\n0\r\n\r\n"),
    ("te-two-lines", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
    ("te-xchunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n"
     b"2\r\nok\r\n0\r\n\r\n"),
    ("te-and-cl", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n"
     b"\r\n2\r\nok\r\n0\r\n\r\n"),
    ("cl-and-te", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n"
     b"\r\n2\r\nok\r\n0\r\n\r\n"),
    ("cl-two-equal", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok"),
    ("cl-two-differ", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 9\r\n\r\nok"),
    ("cl-list", b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok"),
    ("cl-plus", b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok"),
    ("cl-hex", b"HTTP/1.1 200 OK\r\nContent-Length: 0x2\r\n\r\nok"),
    ("cl-negative", b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nok"),
    ("cl-space-inside", b"HTTP/1.1 200 OK\r\nContent-Length: 2 2\r\n\r\nok"),
    # a response head beyond max_header_size (httptools keeps it all until it ends)
    ("head-too-large", b"HTTP/1.1 200 OK\r\nX: " + b"a" * 100_000
     + b"\r\nContent-Length: 2\r\n\r\nok"),
    ("head-never-ends", b"HTTP/1.1 200 OK\r\nX-Endless: " + b"a" * 100_000),
]


@pytest.mark.parametrize("raw", [r for _, r in BAD_STATUS], ids=[n for n, _ in BAD_STATUS])
def test_malformed_response_is_502(evil: tuple[Running, RecordingBackend], evil_mark: int,
                                   raw: bytes) -> None:
    lb, backend = evil
    tag = f"/bad{evil_mark}"
    answer_with(backend, tag, Reply(data=raw))
    got = talk(lb.port, f"GET {tag} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), timeout=T)
    rs = got.responses()
    assert [r.status for r in rs] == [502], got.data[:400]
    assert b"smuggled" not in got.data
    wait_closed(backend, served_conn(backend, evil_mark, tag))
    victim(lb.port, backend, f"bad{evil_mark}")


@pytest.mark.parametrize(("raw", "body"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: content-length\r\n\r\nhello"
     b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled", b"hello"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: Content-Length, keep-alive\r\n\r\n"
     b"hello", b"hello"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: transfer-encoding\r\n\r\n"
     b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
], ids=["cl-plus-surplus", "cl", "te"])
def test_connection_naming_framing_in_a_response(
        evil: tuple[Running, RecordingBackend], evil_mark: int, raw: bytes, body: bytes) -> None:
    lb, backend = evil
    tag = f"/cn{evil_mark}"
    answer_with(backend, tag, Reply(data=raw))
    got = talk(lb.port, f"GET {tag} HTTP/1.1\r\nHost: x\r\n\r\nGET {tag}-next HTTP/1.1\r\n"
               "Host: x\r\n\r\n".encode(), timeout=T)
    rs, rest = parse_responses(got.data, eof=got.closed)
    assert [r.status for r in rs] == [200, 200] and rest == b"", got.data[:500]
    assert rs[0].body == body and rs[0].complete
    assert rs[1].value("X-Seen-Path") == f"{tag}-next".encode()
    assert b"smuggled" not in got.data


SURPLUS = [
    ("204-then-response", b"HTTP/1.1 204 No Content\r\n\r\n"
     b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled", 204, b""),
    ("304-then-response", b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"
     b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled", 304, b""),
    ("204-with-length-and-body", b"HTTP/1.1 204 No Content\r\nContent-Length: 8\r\n\r\n"
     b"smuggled", 204, b""),
    ("two-responses", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
     b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled", 200, b"ok"),
    ("body-longer-than-length", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\noksmuggled",
     200, b"ok"),
    ("after-last-chunk", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"2\r\nok\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled", 200, b"ok"),
]


@pytest.mark.parametrize(("raw", "status", "body"), [(r, s, b) for _, r, s, b in SURPLUS],
                         ids=[n for n, *_ in SURPLUS])
def test_surplus_after_a_response_is_never_delivered(
        evil: tuple[Running, RecordingBackend], evil_mark: int, raw: bytes, status: int,
        body: bytes) -> None:
    lb, backend = evil
    tag = f"/sp{evil_mark}"
    answer_with(backend, tag, Reply(data=raw))
    got = talk(lb.port, f"GET {tag} HTTP/1.1\r\nHost: x\r\n\r\nGET {tag}-next HTTP/1.1\r\n"
               "Host: x\r\n\r\n".encode(), timeout=T)
    rs, rest = parse_responses(got.data, eof=got.closed)
    assert [r.status for r in rs] == [status, 200] and rest == b"", got.data[:500]
    assert rs[0].body == body
    assert rs[1].value("X-Seen-Path") == f"{tag}-next".encode()
    assert b"smuggled" not in got.data
    first = served_conn(backend, evil_mark, tag)
    wait_closed(backend, first)  # closed, never pooled
    assert served_conn(backend, evil_mark, f"{tag}-next") != first
    victim(lb.port, backend, f"sp{evil_mark}")


def test_early_hints_are_relayed_to_http11_clients(
        evil: tuple[Running, RecordingBackend], evil_mark: int) -> None:
    lb, backend = evil
    tag = f"/eh{evil_mark}"
    answer_with(backend, tag, Reply(data=(
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n"
        b"Link: </app.js>; rel=preload; as=script\r\nConnection: X-Drop\r\nX-Drop: 1\r\n"
        b"Keep-Alive: timeout=5\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")))
    got = talk(lb.port, f"GET {tag} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), timeout=T)
    rs, rest = parse_responses(got.data, eof=got.closed)
    assert [r.status for r in rs] == [103, 200] and rest == b"", got.data[:500]
    assert rs[0].values("link") == [b"</style.css>; rel=preload; as=style",
                                    b"</app.js>; rel=preload; as=script"]
    assert not rs[0].values("x-drop") and not rs[0].values("keep-alive")
    assert rs[1].body == b"ok"
    # an HTTP/1.0 client gets no 1xx (RFC 9110 15.2)
    got10 = talk(lb.port, f"GET {tag} HTTP/1.0\r\n\r\n".encode(), timeout=T)
    assert [r.status for r in got10.responses()] == [200], got10.data[:300]


def test_early_413_closes_and_drops_the_rest(evil: tuple[Running, RecordingBackend],
                                             evil_mark: int) -> None:
    """The server answers 413 at the head; the client sends its 4 MiB body only once it
    has the whole answer, so the response surely completed before the body arrived:
    ``Connection: close``, the rest read and dropped (<= 2 s), then close; the server
    connection is closed, not pooled (it still expects the body)."""
    lb, backend = evil
    tag = f"/big{evil_mark}"
    answer_with(backend, tag, Reply(data=response(413, b"too big\n"), at_head=True))
    size = 4 << 20
    with socket.create_connection(("127.0.0.1", lb.port), timeout=T) as s:
        s.sendall(f"POST {tag} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode())
        first = read_all(s, T, responses=1)
        sender = threading.Thread(target=_send_quietly, args=(s, b"x" * size), daemon=True)
        sender.start()
        rest = read_all(s, 5)
        sender.join(timeout=5)
    rs, unparsed = parse_responses(first.data + rest.data, eof=rest.closed)
    assert [r.status for r in rs] == [413] and unparsed == b"", (first.data + rest.data)[:300]
    assert rs[0].closes, rs[0].raw[:300]
    assert first.closed or rest.closed, "the connection stays open after the early answer"
    assert rs[0].body == b"too big\n"
    wait_closed(backend, served_conn(backend, evil_mark, tag))
    victim(lb.port, backend, f"big{evil_mark}")
    assert len([c for c in backend.since(evil_mark) if c.requests]) == 2  # not pooled


def _send_quietly(s: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the balancer may close before the end (it lingers
        s.sendall(data)                 # for <= 2 s)


@pytest.mark.parametrize("http10", [False, True], ids=["http11", "http10"])
def test_response_until_close(evil: tuple[Running, RecordingBackend], evil_mark: int,
                              http10: bool) -> None:
    lb, backend = evil
    tag = f"/uc{evil_mark}"
    answer_with(backend, tag, Reply(data=b"HTTP/1.1 200 OK\r\nX-Kind: until-close\r\n\r\n"
                                         b"body until the server closes", close=True))
    version = "1.0" if http10 else "1.1"
    got = talk(lb.port, f"GET {tag} HTTP/{version}\r\nHost: x\r\n\r\n".encode(), timeout=T)
    rs, rest = parse_responses(got.data, eof=got.closed)
    assert [r.status for r in rs] == [200] and rest == b"" and rs[0].complete, got.data[:300]
    assert rs[0].body == b"body until the server closes"
    if http10:
        assert not rs[0].values("transfer-encoding") and got.closed
    else:
        assert rs[0].values("transfer-encoding") == [b"chunked"]


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nsmuggled\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\noksmuggled\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\nsmuggled",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\nX: y\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: a\r\n b\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: a\x00b\r\n\r\nok",
], ids=["chunk-size-junk", "chunk-no-crlf", "chunk-size-overflow", "bare-lf", "obs-fold",
        "space-before-colon", "nul-in-value"])
def test_broken_response_is_502_or_cut(evil: tuple[Running, RecordingBackend],
                                       evil_mark: int, raw: bytes) -> None:
    """The spec gives no status for these: a 502, a response cut short (the connection
    closed before its end) or, for header anomalies, a clean well-formed response; never
    the smuggled bytes, and the server connection is closed when it is not clean."""
    lb, backend = evil
    tag = f"/br{evil_mark}"
    answer_with(backend, tag, Reply(data=raw))
    got = talk(lb.port, f"GET {tag} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), shut=False,
               timeout=T, responses=1)
    rs, _ = parse_responses(got.data, eof=got.closed)
    assert rs and not rs[0].malformed, got.data[:300]
    assert rs[0].complete or got.closed, ("cut short but left open", got.data[:300])
    assert b"smuggled" not in got.data
    if rs[0].status == 502 or not rs[0].complete:
        wait_closed(backend, served_conn(backend, evil_mark, tag))
    else:
        assert rs[0].status == 200 and rs[0].body == b"ok", got.data[:300]
        assert b"\x00" not in got.data and b"\r\n b" not in got.data
    victim(lb.port, backend, f"br{evil_mark}")


# --- client faults are not the server's -----------------------------------------------------

def test_client_faults_never_blame_the_server(tmp_path: Path) -> None:
    """A bad chunk mid-body, a client gone mid-body, a client slow mid-body (408 after
    ``client``, not 504 after ``server``), a client that stops reading: the server's
    ``response_errors`` and ``downs`` stay 0 and it stays UP."""
    backend = RecordingBackend("patient").start()
    big = b"y" * (16 << 20)
    backend.policy = lambda req, conn: (Reply(data=response(200, big))
                                        if req.path == "/big" else None)
    try:
        with running(tmp_path, listed(backend), admin_port=free_port(), extra=(
                "[timeouts]\nclient_header = 2000\nclient = 800\nserver = 300\n"
                "[health]\ncheck = \"tcp\"\n[backend]\nerror_limit = 1\n")) as lb:
            m = backend.mark()
            # a bad chunk while the exchange runs
            with socket.create_connection(("127.0.0.1", lb.port), timeout=T) as s:
                s.sendall(b"POST /c1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
                wait_until(lambda: any(r.path == "/c1" for r in backend.requests(m)), T,
                           "/c1 at the server")
                s.sendall(b"5\r\nhello\r\nzz\r\n")
                got = read_all(s, T)
            assert [r.status for r in got.responses()] == [400], got.data[:300]
            # a client gone mid-body
            with socket.create_connection(("127.0.0.1", lb.port), timeout=T) as s:
                s.sendall(b"POST /c2 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
                wait_until(lambda: any(r.path == "/c2" for r in backend.requests(m)), T,
                           "/c2 at the server")
            # a slow body: 408 after `client`, not 504 after `server`
            with socket.create_connection(("127.0.0.1", lb.port), timeout=T) as s:
                s.sendall(b"POST /c3 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
                got = read_all(s, T)
            assert [r.status for r in got.responses()] == [408], got.data[:300]
            # a client that stops reading a large response: cut after `client`
            with socket.create_connection(("127.0.0.1", lb.port), timeout=T) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
                wait_until(lambda: any(r.path == "/big" for r in backend.requests(m)), T,
                           "/big at the server")
                conn = served_conn(backend, m, "/big")
                wait_until(lambda: backend.conns[conn].closed, 5,
                           "the balancer giving up on a client that does not read")
            for path in ("/c1", "/c2", "/c3"):
                index = served_conn(backend, m, path)
                wait_until(lambda i=index: backend.conns[i].closed, T,  # type: ignore[misc]
                           f"the server connection of {path} closed")
            victim(lb.port, backend, "faults")
            srv = stats(lb)["patient"]
            assert srv["response_errors"] == 0 and srv["downs"] == 0, srv
            assert srv["state"] == "UP", srv
    finally:
        backend.stop()


def test_request_side_cases_blamed_no_server(lb: Running, rec: RecordingBackend) -> None:
    """After everything above (this module's daemon has the default error_limit),
    client-caused failures left the server's counters at 0."""
    srv = stats(lb)["rec0"]
    assert srv["response_errors"] == 0 and srv["downs"] == 0, srv
