"""Slow clients against the real server: connections that send part of a request and wait are
closed at the request deadline, and meanwhile a real review is answered at once."""

from __future__ import annotations

import select
import socket
import ssl
import time
from pathlib import Path

from tests.conftest import SHIPPED_POLICIES
from tests.integration.conftest import review
from tests.integration.test_server import pod
from tests.serverproc import ServerProcess

HELD = 1_000
DEADLINE = 3.0


def slow_connection(server: ServerProcess, context: ssl.SSLContext) -> ssl.SSLSocket:
    """A TLS connection that has sent the first lines of a request's headers, and no more."""
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    tls = context.wrap_socket(raw, server_hostname="127.0.0.1")
    tls.sendall(b"POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n")
    return tls


def closed(sock: ssl.SSLSocket) -> bool:
    """Whether the server has closed (or reset) the connection."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    sock.setblocking(False)  # readable may only mean TLS 1.3 session tickets: no app data
    try:
        return sock.recv(1) == b""
    except ssl.SSLWantReadError:
        return False
    except (ssl.SSLError, OSError):
        return True


def test_slow_clients_are_cut_at_the_deadline_while_a_real_review_is_answered(
    tmp_path: Path,
) -> None:
    server = ServerProcess(tmp_path, policies=SHIPPED_POLICIES,
                           args=["--request-timeout", str(DEADLINE)])
    server.start()
    context = server.ssl_context()
    held: list[tuple[float, ssl.SSLSocket]] = []
    try:
        for _ in range(HELD):
            held.append((time.monotonic(), slow_connection(server, context)))
        opened = time.monotonic()
        with server.client() as client:
            started = time.monotonic()
            answer = client.post(server.url(), json=review(pod()))
            took = time.monotonic() - started
        print(f"{HELD} slow connections held (opened in {opened - held[0][0]:.1f}s); "
              f"a review took {took * 1000:.0f} ms")
        assert answer.status_code == 200
        assert took < 1.0
        young = [sock for at, sock in held if time.monotonic() - at < DEADLINE - 1]
        assert young, "open them faster than the deadline"
        assert not any(closed(sock) for sock in young), "closed before the deadline"
        deadline = opened + DEADLINE + 2 * 0.25 + 2
        while time.monotonic() < deadline and not all(closed(sock) for _, sock in held):
            time.sleep(0.2)
        still_open = sum(not closed(sock) for _, sock in held)
        assert still_open == 0, f"{still_open} of {HELD} slow connections still open"
    finally:
        for _, sock in held:
            sock.close()
        server.stop()


def test_past_the_connection_cap_the_longest_waiting_are_closed(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, policies=SHIPPED_POLICIES, args=["--max-connections", "50"])
    server.start()
    context = server.ssl_context()
    held = []
    try:
        for _ in range(100):
            held.append(slow_connection(server, context))
        time.sleep(1.0)  # a few rounds of the server's watch
        with server.client() as client:
            assert client.post(server.url(), json=review(pod())).status_code == 200
        states = [closed(sock) for sock in held]
        print(f"of 100 slow connections past a cap of 50: {sum(states)} closed")
        assert 50 <= sum(states) <= 52
        assert sum(states[:50]) >= 48, "the oldest go first"
    finally:
        for sock in held:
            sock.close()
        server.stop()


def test_a_request_begun_on_a_kept_alive_connection_has_the_deadline_too(tmp_path: Path) -> None:
    """An idle keep-alive connection is kept, but once a request's first bytes arrive on it, the
    rest must follow within the deadline."""
    server = ServerProcess(tmp_path, policies=SHIPPED_POLICIES,
                           args=["--request-timeout", str(DEADLINE)])
    server.start()
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    tls = server.ssl_context().wrap_socket(raw, server_hostname="127.0.0.1")
    try:
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert tls.recv(4096).startswith(b"HTTP/1.1 200")
        time.sleep(DEADLINE + 1)  # idle past the deadline: still open
        assert not closed(tls)
        tls.sendall(b"POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        begun = time.monotonic()
        while not closed(tls) and time.monotonic() - begun < DEADLINE + 3:
            time.sleep(0.1)
        waited = time.monotonic() - begun
        assert closed(tls), f"a half-sent request still open after {waited:.1f}s"
        assert waited >= DEADLINE - 0.5, f"cut after {waited:.1f}s, before the deadline"
    finally:
        tls.close()
        server.stop()
