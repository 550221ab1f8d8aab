"""Runs `serve`: load policies, set up TLS (dev certificates when none are given), start the
namespace watch, the Event recorder (both only with cluster access) and the reloader, and serve
with uvicorn until SIGTERM, then exit 0."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import sys
import tempfile
from pathlib import Path
from types import FrameType

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from webhook import certs, logs
from webhook.errors import CertificateError, PolicyError
from webhook.events import EventRecorder
from webhook.kube import ApiEventSink, NamespaceDefaults
from webhook.policy import load_policy_dir
from webhook.reload import Reloader, tls_context
from webhook.runtime import Runtime
from webhook.server import create_app
from webhook.settings import Settings

log = logging.getLogger("sidecar_injector")
GRACEFUL_SHUTDOWN_SECONDS = 30
# How long, after SIGTERM, an idle connection may take to finish its TLS close before it is
# dropped; requests in flight keep the whole GRACEFUL_SHUTDOWN_SECONDS.
IDLE_CLOSE_SECONDS = 2.0
WATCH_SECONDS = 0.25  # how often connections are looked at


class _Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, stamped with the loop time it was connected at (what the
    request deadline and the connection cap count from)."""

    connected_at: float

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.connected_at = self.loop.time()
        super().connection_made(transport)


class _Server(uvicorn.Server):
    """uvicorn's server, plus what a webhook on every pod's path needs of it: a client must
    send its request (headers and body) within `request_timeout` of connecting or of its last
    response; no more than `max_connections` are kept open (those that waited longest for a
    request go first); idle connections go IDLE_CLOSE_SECONDS after SIGTERM; and a drained
    server exits 0 (uvicorn re-raises SIGTERM after its graceful shutdown: exit 143), so the
    kubelet and tests see a clean stop."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()

    def __init__(self, config: uvicorn.Config, runtime: Runtime, reloader: Reloader, *,
                 request_timeout: float, max_connections: int) -> None:
        super().__init__(config)
        self.runtime = runtime
        self.reloader = reloader
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.closing = False
        self._watcher: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.reloader.loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)
        self.runtime.tls_ready = self.started
        self._watcher = asyncio.create_task(self._watch_connections())

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's shutdown, with idle connections dropped after IDLE_CLOSE_SECONDS.

        uvicorn's `Server.shutdown` calls each connection's `shutdown()`, which for an idle
        keep-alive connection is `transport.close()`, then waits (up to
        timeout_graceful_shutdown) for `server_state.connections` to empty. On a TLS
        transport close() sends close_notify and waits for the peer's up to the loop's
        ssl_shutdown_timeout (30 s, not settable through uvicorn) before connection_lost, so
        one client that never answers held the exit for the whole graceful timeout."""
        self.closing = True
        try:
            await super().shutdown(sockets=sockets)
        finally:
            if self._watcher is not None:
                self._watcher.cancel()

    async def _watch_connections(self) -> None:
        # uvicorn internals relied on (0.54, httptools_impl/h11_impl): `server_state.connections`
        # holds the live protocols; a protocol's `cycle` is None before its first request, its
        # `cycle.more_body` is True while the request body is arriving and its
        # `cycle.response_complete` is True once the response is written; `transport` is the
        # asyncio transport. A request the server is working on is never cut.
        loop = asyncio.get_running_loop()
        seen: dict[object, tuple[str, object, float]] = {}
        while True:
            now = loop.time()
            connections = list(self.server_state.connections)
            waiting = []
            for connection in connections:
                cycle = getattr(connection, "cycle", None)
                phase = ("waiting" if cycle is None or cycle.response_complete
                         else "receiving" if cycle.more_body else "working")
                last = seen.get(connection)
                if last is None:  # its first wait counts from when it connected
                    since = getattr(connection, "connected_at", now) if cycle is None else now
                    seen[connection] = last = (phase, cycle, since)
                elif last[:2] != (phase, cycle):
                    seen[connection] = last = (phase, cycle, now)
                limit = (None if phase == "working"
                         else IDLE_CLOSE_SECONDS if phase == "waiting" and self.closing
                         else self.request_timeout)
                if limit is not None and now - last[2] >= limit:
                    connection.transport.abort()  # connection_lost follows, without TLS close
                elif phase == "waiting":
                    waiting.append((last[2], connection))
            for _, connection in sorted(waiting, key=lambda pair: pair[0])[
                    :max(0, len(connections) - self.max_connections)]:
                connection.transport.abort()  # over the cap: those waiting longest go first
            for gone in set(seen).difference(connections):
                del seen[gone]
            await asyncio.sleep(WATCH_SECONDS)


def run(settings: Settings) -> int:
    """Serve until SIGTERM; the process exit code."""
    logs.configure(settings.log_level)
    try:
        policies = load_policy_dir(settings.policies)
    except PolicyError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    cert, key = _key_pair(settings)
    try:
        context = tls_context(cert, key)
    except CertificateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runtime = Runtime(policies, settings.engine_config())
    namespaces = NamespaceDefaults(settings.keys.policies, settings.kubeconfig,
                                   on_version=runtime.learn_kube_version)
    runtime.namespaces = namespaces
    namespaces.start()
    sink = ApiEventSink.connect(settings.kubeconfig)  # Events need the same cluster access
    if sink is not None:
        runtime.events = EventRecorder(sink, on_drop=runtime.metrics.drop_events,
                                       instance=socket.gethostname())
        runtime.events.start()
    reloader = Reloader(runtime, policies=settings.policies, context=context, cert=cert, key=key,
                        interval=settings.reload_interval)
    reloader.start()
    app = create_app(runtime, max_body_bytes=settings.max_body_bytes)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, ssl_context_factory=lambda *_: context,
        http=_Protocol,
        access_log=False, log_config=None, server_header=False, lifespan="off",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        limit_concurrency=settings.max_connections + 64,  # 503s, past the watcher's cap
    )
    log.info("serving", extra={"address": f"https://{settings.host}:{settings.port}",
                               "policies": policies.names(), "cert": str(cert)})
    server = _Server(config, runtime, reloader, request_timeout=settings.request_timeout,
                     max_connections=settings.max_connections)
    gc.collect()
    gc.freeze()  # the startup heap (policies, schemas, the Kubernetes client) is never garbage
    server.run()
    reloader.stop()
    namespaces.stop()
    if runtime.events is not None:
        runtime.events.stop()
    log.info("stopped")
    return 0 if server.started else 1


def _key_pair(settings: Settings) -> tuple[Path, Path]:
    if settings.tls_cert and settings.tls_key:
        return settings.tls_cert, settings.tls_key
    if settings.tls_cert or settings.tls_key:
        given, missing = "--tls-cert", "--tls-key"
        if settings.tls_key:
            given, missing = missing, given
        print(f"error: {given} {settings.tls_cert or settings.tls_key} is set but {missing} is "
              "not: pass both, or neither to serve with self-signed development certificates",
              file=sys.stderr)
        raise SystemExit(2)
    directory = Path(tempfile.mkdtemp(prefix="sidecar-injector-dev-certs-"))
    certs.generate(directory, service="sidecar-injector", namespace="default")
    log.warning("no --tls-cert/--tls-key given: serving with self-signed development "
                "certificates", extra={"directory": str(directory),
                                       "ca": str(directory / "ca.crt")})
    return directory / "tls.crt", directory / "tls.key"
