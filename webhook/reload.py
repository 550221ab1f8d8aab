"""Watching files: the policy directory (ConfigMap symlink swaps included) and the key pair.

One background thread polls content digests every `interval` seconds. A changed policy set is
loaded and swapped in whole; a bad one is refused, logged and counted, and the last good set keeps
serving. A changed key pair is checked in a scratch context, then loaded into the live SSLContext
on the event loop's thread (between handshakes), so new handshakes use it and in-flight
connections are not disturbed; a half-written pair is retried on the next tick.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from webhook import certs
from webhook.errors import CertificateError, PolicyError
from webhook.policy import POLICY_SUFFIXES, load_policy_dir
from webhook.runtime import Runtime

log = logging.getLogger("sidecar_injector.reload")


def policy_digest(directory: Path) -> str:
    """A digest of every policy file's name and content (following symlinks)."""
    digest = hashlib.sha256()
    try:
        paths = sorted(p for p in directory.iterdir()
                       if p.suffix in POLICY_SUFFIXES and not p.name.startswith("."))
        for path in paths:
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    except OSError as exc:
        digest.update(f"unreadable: {exc}".encode())
    return digest.hexdigest()


def file_digest(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        try:
            digest.update(path.read_bytes())
        except OSError:
            digest.update(b"missing")
    return digest.hexdigest()


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context, TLS 1.2 or newer, holding the key pair."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    load_key_pair(context, cert, key)
    return context


def load_key_pair(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    """Load a consistent snapshot of the pair, checked in a scratch context first, so a pair
    caught mid-rotation (new cert, old key) never reaches the live context."""
    try:
        with tempfile.TemporaryDirectory(prefix="sidecar-injector-tls-") as scratch:
            cert_copy, key_copy = Path(scratch, "tls.crt"), Path(scratch, "tls.key")
            cert_copy.write_bytes(cert.read_bytes())
            key_copy.write_bytes(key.read_bytes())
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_copy, key_copy)
            context.load_cert_chain(cert_copy, key_copy)
    except (OSError, ssl.SSLError) as exc:
        raise CertificateError(f"cannot load the key pair {cert}, {key}: {exc}") from None


class Reloader:
    """Polls the policy directory and the key pair; applies changes to `runtime` and `context`."""

    def __init__(self, runtime: Runtime, *, policies: Path, context: ssl.SSLContext,
                 cert: Path, key: Path, interval: float) -> None:
        self.runtime, self.directory, self.context = runtime, policies, context
        self.cert, self.key, self.interval = cert, key, interval
        self._policy_digest = policy_digest(policies)
        self._cert_digest = file_digest(cert, key)
        self.loop: asyncio.AbstractEventLoop | None = None  # set once the server runs
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reloader", daemon=True)
        self._record_expiry()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check_policies()
            self.check_certificates()

    def check_policies(self) -> None:
        digest = policy_digest(self.directory)
        if digest == self._policy_digest:
            return
        self._policy_digest = digest
        try:
            loaded = load_policy_dir(self.directory)
        except PolicyError as exc:
            self.runtime.metrics.reload_errors.inc()
            log.error("policy reload refused; the last good set keeps serving",
                      extra={"problems": exc.problems, "serving": self.runtime.policies.names()})
            return
        self.runtime.swap(loaded)
        log.info("policies reloaded", extra={"policies": loaded.names()})

    def check_certificates(self) -> None:
        digest = file_digest(self.cert, self.key)
        if digest == self._cert_digest:
            return
        try:
            self._on_loop(lambda: load_key_pair(self.context, self.cert, self.key))
        except CertificateError as exc:
            log.warning("new key pair not loaded yet; retrying", extra={"reason": str(exc)})
            return
        self._cert_digest = digest
        self._record_expiry()
        log.info("serving certificate reloaded", extra={"cert": str(self.cert)})

    def _on_loop(self, change: Callable[[], None]) -> None:
        """Run `change` on the event loop thread, where TLS connections are made, so no
        handshake sees the context between its new certificate and its new key."""
        loop = self.loop
        if loop is None or not loop.is_running():
            change()
            return

        async def apply() -> None:
            change()

        asyncio.run_coroutine_threadsafe(apply(), loop).result(timeout=30)

    def _record_expiry(self) -> None:
        try:
            self.runtime.metrics.cert_expiry.set(certs.expiry(self.cert).timestamp())
        except CertificateError as exc:
            log.warning("cannot read the certificate's expiry", extra={"reason": str(exc)})
