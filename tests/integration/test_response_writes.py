"""How the server writes a response on the wire, read as TLS records by a client of its own
(`ssl.SSLObject` over a plain socket): the status line, the headers and the body leave in one
record, an interim `100 Continue` at once, and a response without a body (HEAD) when it is done."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator

import pytest

from tests.integration.conftest import review
from tests.integration.test_server import pod
from tests.serverproc import ServerProcess

APPLICATION_DATA = 23  # the TLS record type that carries (encrypted) HTTP bytes


class RawTLS:
    """A TLS client that sees the records it receives."""

    def __init__(self, server: ServerProcess) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = server.ssl_context().wrap_bio(self.incoming, self.outgoing,
                                                 server_hostname="127.0.0.1")
        self.pending = b""  # received bytes not yet a whole record
        self.data = b""  # plain bytes received and not yet returned
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._receive()
        self._flush()

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self._flush()

    def response(self, *, to_head: bool = False) -> tuple[bytes, bytes, int]:
        """The next response's head and body (none `to_head` a HEAD request), and how many
        records arrived while waiting for it; bytes past it stay for the next one."""
        records = 0
        while True:
            head, end, rest = self.data.partition(b"\r\n\r\n")
            length = 0 if to_head else _length(head + end)
            if end and len(rest) >= length:
                self.data = rest[length:]
                return head, rest[:length], records
            records += self._receive()
            while True:
                try:
                    self.data += self.tls.read(65536)
                except ssl.SSLWantReadError:
                    break

    def _receive(self) -> int:
        """Read from the socket; feed TLS the whole records; how many were application data."""
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.pending += chunk
        records = 0
        while len(self.pending) >= 5:
            end = 5 + int.from_bytes(self.pending[3:5], "big")
            if len(self.pending) < end:
                break
            record, self.pending = self.pending[:end], self.pending[end:]
            records += record[0] == APPLICATION_DATA
            self.incoming.write(record)
        return records

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


def _length(data: bytes) -> int:
    """The Content-Length of the response whose head `data` begins with (0 for a `1xx` or none)."""
    head = data.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
    if head.startswith("http/1.1 1"):
        return 0
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name == "content-length":
            return int(value)
    return 0


@pytest.fixture
def raw(server: ServerProcess) -> Iterator[RawTLS]:
    client = RawTLS(server)
    yield client
    client.close()


def _post(path: str, body: bytes, *extra: str) -> bytes:
    headers = [f"POST {path} HTTP/1.1", "host: 127.0.0.1", "content-type: application/json",
               f"content-length: {len(body)}", *extra]
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


def test_an_answer_leaves_in_one_record(raw: RawTLS) -> None:
    body = json.dumps(review(pod("logging"))).encode()
    for _ in range(2):  # the first also brings TLS 1.3's session tickets
        raw.send(_post("/mutate", body))
        head, answer, records = raw.response()
    assert head.startswith(b"HTTP/1.1 200")
    assert json.loads(answer)["response"]["patchType"] == "JSONPatch"
    assert len(answer) > 1000
    assert records == 1  # uvicorn alone writes the head and the body as two


def test_a_100_continue_is_not_held_back(raw: RawTLS) -> None:
    body = json.dumps(review(pod(""))).encode()
    request = _post("/mutate", body, "expect: 100-continue")
    raw.send(request[:-len(body)])  # the client waits for the interim answer before the body
    head, _, _ = raw.response()
    assert head.startswith(b"HTTP/1.1 100")
    raw.send(body)
    head, answer, _ = raw.response()
    assert head.startswith(b"HTTP/1.1 200")
    assert json.loads(answer)["response"]["allowed"] is True


def test_a_response_without_a_body_is_sent_when_done(raw: RawTLS) -> None:
    raw.send(b"HEAD /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
    head, body, _ = raw.response(to_head=True)  # a held head would wait for the next response
    assert head.startswith(b"HTTP/1.1 ")
    assert body == b""
    raw.send(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
    head, body, _ = raw.response()
    assert head.startswith(b"HTTP/1.1 200")
    assert json.loads(body) == {"status": "ok"}


def test_pipelined_requests_are_answered_in_order(raw: RawTLS) -> None:
    first = json.dumps(review(pod("logging"), uid="first")).encode()
    second = json.dumps(review(pod(""), uid="second")).encode()
    raw.send(_post("/mutate", first) + b"HEAD /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
             + _post("/mutate", second))  # three requests in one write
    answers = []
    for to_head in (False, True, False):  # the HEAD's answer (a 405 here) has no body
        head, body, _ = raw.response(to_head=to_head)
        answers.append((head[9:12], json.loads(body)["response"]["uid"] if body else None))
    assert [answers[0], answers[2]] == [(b"200", "first"), (b"200", "second")]
    assert answers[1][1] is None
