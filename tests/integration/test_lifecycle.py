"""The server's life: policy reloads, certificate rotation under load, SIGTERM with requests in
flight. Each test runs its own `serve` process."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from tests.conftest import SHIPPED_POLICIES
from tests.integration.conftest import review
from tests.integration.test_server import pod
from tests.serverproc import ServerProcess, free_port
from webhook import certs

LOGGING = (SHIPPED_POLICIES / "logging.yaml").read_text()


@pytest.fixture
def configmap_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server whose policies directory is laid out like a mounted ConfigMap:
    `logging.yaml -> ..data/logging.yaml`, `..data -> ..2026_v1`."""
    root = tmp_path / "policies"
    version = root / "..v1"
    version.mkdir(parents=True)
    (version / "logging.yaml").write_text(LOGGING)
    (root / "..data").symlink_to("..v1")
    (root / "logging.yaml").symlink_to("..data/logging.yaml")
    server = ServerProcess(tmp_path, policies=root, args=["--reload-interval", "0.1"])
    server.start()
    yield server
    server.stop()


def swap_configmap(root: Path, files: dict[str, str], version: str) -> None:
    """What the kubelet does on a ConfigMap update: a new timestamped dir, then an atomic
    rename of the `..data` symlink; top-level links to new keys are added."""
    target = root / f"..{version}"
    target.mkdir()
    for name, text in files.items():
        (target / name).write_text(text)
    tmp_link = root / "..data_tmp"
    tmp_link.symlink_to(target.name)
    os.replace(tmp_link, root / "..data")
    for name in files:
        if not (root / name).is_symlink():
            (root / name).symlink_to(f"..data/{name}")


def metric(server: ServerProcess, name: str) -> float:
    with server.client() as client:
        text = client.get(server.url("/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


def answer(server: ServerProcess, annotation: str) -> dict[str, Any]:
    with server.client() as client:
        result: dict[str, Any] = client.post(server.url(), json=review(pod(annotation))).json()
    response: dict[str, Any] = result["response"]
    return response


def wait_until(condition: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_a_configmap_update_is_reloaded(configmap_server: ServerProcess) -> None:
    assert "warnings" in answer(configmap_server, "tracing")
    tracing = LOGGING.replace("name: logging\n", "name: tracing\n").replace(
        "logging-", "tracing-")
    swap_configmap(configmap_server.policies, {"logging.yaml": LOGGING,
                                               "tracing.yaml": tracing}, "v2")
    wait_until(lambda: "warnings" not in answer(configmap_server, "tracing"))
    assert metric(configmap_server, "sidecar_injector_policies_loaded") == 2


def test_a_bad_policy_set_is_refused_and_the_last_good_one_keeps_serving(
    configmap_server: ServerProcess,
) -> None:
    swap_configmap(configmap_server.policies,
                   {"logging.yaml": LOGGING.replace("cpu: 100m", "cpu: lots")}, "v2")
    wait_until(lambda: metric(configmap_server,
                              "sidecar_injector_policy_reload_errors_total") == 1)
    assert answer(configmap_server, "logging")["allowed"] is True
    assert "patch" in answer(configmap_server, "logging")
    log = configmap_server.log.read_text()
    assert "policy reload refused" in log
    assert "'lots' is not a quantity" in log


def serial_seen(server: ServerProcess) -> int:
    with httpx.Client(verify=server.ssl_context()) as client:
        response = client.get(server.url("/healthz"))
        stream: Any = response.extensions["network_stream"]
        der = stream.get_extra_info("ssl_object").getpeercert(True)
    return int(x509.load_der_x509_certificate(der).serial_number)


def test_a_rotated_certificate_is_served_without_a_failed_request(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, policies=SHIPPED_POLICIES, args=["--reload-interval", "0.1"])
    server.start()
    failures: list[str] = []
    done = threading.Event()
    sent = [0]

    def hammer() -> None:
        while not done.is_set():
            try:
                with server.client() as client:  # a new connection, so a new handshake
                    response = client.post(server.url(), json=review(pod()))
                if response.status_code != 200:
                    failures.append(str(response.status_code))
                sent[0] += 1
            except httpx.HTTPError as exc:
                failures.append(repr(exc))

    workers = [threading.Thread(target=hammer) for _ in range(4)]
    try:
        for worker in workers:
            worker.start()
        ca = certs.KeyPair((server.certs / "ca.crt").read_bytes(),
                           (server.certs / "ca.key").read_bytes())
        for _ in range(5):  # each rotation writes the certificate, then the key, as a Secret does
            before = serial_seen(server)
            renewed = certs.issue(ca, "sidecar-injector", dns_names=["localhost"],
                                  ip_addresses=["127.0.0.1"])
            renewed.write(server.certs / "tls.crt", server.certs / "tls.key")
            wait_until(lambda before=before: serial_seen(server) != before)
        time.sleep(0.3)
    finally:
        done.set()
        for worker in workers:
            worker.join()
        server.stop()
    assert failures == []
    assert sent[0] > 20


def slow_sender(server: ServerProcess, pause: float, results: list[int]) -> threading.Thread:
    """A thread that posts a review whose body pauses `pause` seconds after its first bytes,
    so that it is in flight when SIGTERM arrives; it appends the status code to `results`."""
    body = json.dumps(review(pod())).encode()

    def slow_body() -> Iterator[bytes]:
        yield body[:10]
        time.sleep(pause)
        yield body[10:]

    def send() -> None:
        with server.client() as client:
            results.append(client.post(server.url(), content=slow_body()).status_code)

    return threading.Thread(target=send)


def test_sigterm_finishes_in_flight_requests_and_exits_0(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, policies=SHIPPED_POLICIES)
    server.start()
    results: list[int] = []
    senders = [slow_sender(server, 1.0, results) for _ in range(3)]
    for sender in senders:
        sender.start()
    time.sleep(0.4)
    code = server.stop(signal.SIGTERM)
    for sender in senders:
        sender.join()
    assert code == 0
    assert results == [200, 200, 200]
    assert "stopped" in server.log.read_text()


def exchange(tls: ssl.SSLSocket) -> bytes:
    """Send a keep-alive GET /healthz on `tls` and read its whole response; the head, lowercased."""
    tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n")
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = tls.recv(4096)
        assert chunk, f"the server closed the connection before answering: {response!r}"
        response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += tls.recv(4096)
    assert head.startswith(b"HTTP/1.1 200"), head
    return head.lower()


def idle_keep_alive_connection(server: ServerProcess) -> ssl.SSLSocket:
    """A TLS connection that has had one complete keep-alive request and response, and then
    is left alone: the caller never reads from it again nor closes it, so the server's TLS
    close_notify is never answered (like a client that hung, or a half-dead NAT entry)."""
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    tls = server.ssl_context().wrap_socket(raw, server_hostname="127.0.0.1")
    assert b"connection: close" not in exchange(tls)  # the server keeps it open, idle
    return tls


def test_a_keep_alive_connection_outlives_the_request_timeout_while_idle(tmp_path: Path) -> None:
    """The apiserver's webhook client keeps an idle connection 90 s and reuses it; a server that
    closed it first would race that reuse (EOF: a refused pod under failurePolicy Fail). Past
    both the request deadline and uvicorn's default keep-alive (5 s), it is still served."""
    server = ServerProcess(tmp_path, policies=SHIPPED_POLICIES, args=["--request-timeout", "1"])
    server.start()
    idle = idle_keep_alive_connection(server)
    try:
        time.sleep(6.0)
        assert b"connection: close" not in exchange(idle)
    finally:
        idle.close()
        server.stop()


def test_sigterm_answers_a_request_on_an_idle_connection_and_then_closes_it(
    tmp_path: Path,
) -> None:
    """A request its client sends on a kept-alive connection just after SIGTERM is answered,
    with `Connection: close` (so the client opens its next connection elsewhere), not cut."""
    server = ServerProcess(tmp_path, policies=SHIPPED_POLICIES)
    server.start()
    idle = idle_keep_alive_connection(server)
    try:
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # the listener is closed by now
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
        assert b"connection: close" in exchange(idle)
        assert idle.recv(4096) == b""  # then the server closes it
        assert server.stop(timeout=60) == 0
    finally:
        idle.close()
        server.stop()


def test_sigterm_drops_an_idle_connection_whose_client_never_closes(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, policies=SHIPPED_POLICIES)
    server.start()
    idle = idle_keep_alive_connection(server)
    try:
        started = time.monotonic()
        code = server.stop(signal.SIGTERM, timeout=60)
        elapsed = time.monotonic() - started
    finally:
        idle.close()
    print(f"serve exited {code} {elapsed:.1f}s after SIGTERM with an idle connection open")
    assert code == 0
    # Well under the 30 s graceful timeout: the idle connection is dropped after ~2 s.
    assert elapsed < 10, f"took {elapsed:.1f}s to exit"
    assert "stopped" in server.log.read_text()


def test_sigterm_lets_a_request_outlast_the_idle_window_while_dropping_idle_connections(
    tmp_path: Path,
) -> None:
    server = ServerProcess(tmp_path, policies=SHIPPED_POLICIES)
    server.start()
    results: list[int] = []
    idle = idle_keep_alive_connection(server)
    # in flight well past the ~2 s after which idle connections go
    sender = slow_sender(server, 4.0, results)
    try:
        sender.start()
        time.sleep(0.4)
        code = server.stop(signal.SIGTERM, timeout=60)
        sender.join()
    finally:
        idle.close()
    assert code == 0
    assert results == [200]


def test_a_missing_policies_directory_fails_fast_with_one_line(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, policies=tmp_path / "nope")
    with pytest.raises(RuntimeError, match="exited with 1"):
        server.start()
    assert f"error: {tmp_path / 'nope'}: policies directory does not exist" in (
        server.log.read_text())


def test_serve_with_no_arguments_uses_dev_certificates_and_the_shipped_policies(
    tmp_path: Path,
) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as handle:
        process = subprocess.Popen([sys.executable, "-m", "webhook", "serve", "--host",
                                    "127.0.0.1", "--port", str(port)],
                                   stdout=handle, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: '"serving"' in log.read_text(), 30)
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        ca = next(e["ca"] for e in entries if "ca" in e)
        policies = next(e["policies"] for e in entries if e["message"] == "serving")
        context = ssl.create_default_context(cafile=ca)
        wait_until(lambda: _ready(f"https://127.0.0.1:{port}/readyz", context), 30)
    finally:
        process.terminate()
        assert process.wait(30) == 0
    assert len(policies) == len(list(SHIPPED_POLICIES.glob("*.yaml")))


def _ready(url: str, context: ssl.SSLContext) -> bool:
    try:
        return httpx.get(url, verify=context).status_code == 200
    except httpx.HTTPError:
        return False
