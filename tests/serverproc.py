"""`sidecar-injector serve` as a real process on loopback, with certificates from
`sidecar-injector certs generate`: used by the integration and end-to-end suites."""

from __future__ import annotations

import base64
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def generate_certs(out: Path, service: str = "sidecar-injector",
                   namespace: str = "sidecar-injector") -> None:
    subprocess.run([sys.executable, "-m", "webhook", "certs", "generate", "--out", str(out),
                    "--service", service, "--namespace", namespace],
                   check=True, capture_output=True)


class ServerProcess:
    """One `serve` process; `start` waits for /readyz, `stop` sends a signal and waits."""

    def __init__(self, workdir: Path, *, policies: Path, args: Sequence[str] = (),
                 env: dict[str, str] | None = None, log: Path | None = None) -> None:
        self.workdir = workdir
        self.policies = policies
        self.args = list(args)
        self.env = env or {}
        self.log = log or workdir / "server.log"
        self.port = free_port()
        self.certs = workdir / "certs"
        generate_certs(self.certs)
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, path: str = "/mutate") -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    @property
    def ca_bundle(self) -> str:
        return base64.b64encode((self.certs / "ca.crt").read_bytes()).decode()

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.certs / "ca.crt"))

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(verify=self.ssl_context(), timeout=10, **kwargs)  # type: ignore[arg-type]

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 60, *, until: str = "/readyz") -> None:
        """Start, and wait until `until` answers 200 (/healthz: serving, ready or not)."""
        if self.running:
            return
        handle = self.log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "webhook", "serve", "--host", "127.0.0.1",
             "--port", str(self.port), "--policies", str(self.policies),
             "--tls-cert", str(self.certs / "tls.crt"), "--tls-key", str(self.certs / "tls.key"),
             *self.args],
            stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env})
        handle.close()
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"serve exited with {self.process.returncode}:\n"
                                       + self.log.read_text(errors="replace")[-3000:])
                try:
                    if client.get(self.url(until)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"serve not ready after {timeout}s; log {self.log}")
                time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def rss_kib(self) -> int:
        """Resident memory of the server process, from /proc."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")
