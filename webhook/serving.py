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
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from webhook import certs, logs
from webhook.compiled import Target
from webhook.errors import CertificateError, ClusterError, PolicyError
from webhook.events import EventRecorder
from webhook.kube import ApiEventSink, Cluster, NamespaceDefaults
from webhook.policy import load_policy_dir
from webhook.reload import Reloader, tls_context
from webhook.runtime import Runtime
from webhook.server import create_app
from webhook.settings import Settings
from webhook.sync import AdmissionPolicySync

log = logging.getLogger("sidecar_injector")
GRACEFUL_SHUTDOWN_SECONDS = 30
# How long, after SIGTERM, a connection with no request in progress is kept open: a request that
# arrives on it meanwhile is answered with `Connection: close` (so its client never reuses a
# connection the server is about to close); after that it is dropped, without waiting for a TLS
# close. Requests in flight keep the whole GRACEFUL_SHUTDOWN_SECONDS.
IDLE_CLOSE_SECONDS = 2.0
# How long a keep-alive connection may sit idle after a response. Longer than the kube-apiserver's
# webhook client keeps an idle connection (client-go's transport: Go's 90 s IdleConnTimeout), so
# the client closes first: a server that closes an idle connection races the client's next
# request on it, which then fails with EOF (a refused pod under failurePolicy Fail).
KEEP_ALIVE_SECONDS = 120
WATCH_SECONDS = 0.25  # how often connections are looked at


class _State(ServerState):
    """uvicorn's state shared by a server's connections, plus whether the server is draining."""

    def __init__(self) -> None:
        super().__init__()
        self.draining = False


class _OneWrite:
    """The transport a response is written to: it holds the status line and headers until the
    body's first bytes and writes them together. uvicorn writes them apart, and over TLS each
    write is a record and a send(): two of each per answer, and two reads for the apiserver,
    where one would do (docs/benchmarks.md). An interim `100 Continue` passes at once; a
    response without a body write leaves when it completes or closes.

    uvicorn internals relied on (0.54, httptools_impl): a RequestResponseCycle writes through its
    `transport` attribute, the status line and all headers in one write(), and calls its
    `on_response` once the response is written."""

    __slots__ = ("completed", "head", "transport")

    def __init__(self, transport: asyncio.Transport, completed: Callable[[], None]) -> None:
        self.transport = transport
        self.head: bytes | None = None
        self.completed = completed

    def complete(self) -> None:
        """The response is written: send what is held, then tell the protocol."""
        self.flush()
        self.completed()

    def write(self, data: bytes) -> None:
        head, self.head = self.head, None
        if head is not None:
            self.transport.write(head + data)
        elif data.startswith(b"HTTP/1.1 ") and not data.startswith(b"HTTP/1.1 1"):
            self.head = data  # uvicorn writes the status line and all headers in one write()
        else:
            self.transport.write(data)

    def flush(self) -> None:
        head, self.head = self.head, None
        if head is not None:
            self.transport.write(head)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()


class Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the loop times the watcher reads: when the request now
    awaited or arriving began (connecting, or its first byte after a response) and when the last
    response was written; while the server drains, every response closes the connection, and
    SIGTERM leaves an idle connection open (the watcher drops it)."""

    request_at: float
    idle_at: float | None
    receiving: bool  # bytes of a request have arrived since the last response

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.request_at = self.loop.time()
        self.idle_at = None
        self.receiving = False
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.receiving:
            self.receiving = True
            if self.idle_at is not None:
                self.request_at = self.loop.time()
        super().data_received(data)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.transport is self.transport:  # a new request's cycle
            one = _OneWrite(self.transport, cycle.on_response)
            cycle.transport, cycle.on_response = one, one.complete  # type: ignore[assignment]
        state = self.server_state
        if isinstance(state, _State) and state.draining and cycle is not None:
            cycle.keep_alive = False

    def on_response_complete(self) -> None:
        self.receiving = False
        self.idle_at = self.loop.time()
        super().on_response_complete()

    def shutdown(self) -> None:
        if self.cycle is None or self.cycle.response_complete:
            return  # no request in progress: one may be on its way; the watcher drops it
        super().shutdown()

    @property
    def working(self) -> bool:
        """Whether the server holds a whole request it has not finished answering."""
        cycle = self.cycle
        return cycle is not None and not cycle.response_complete and not cycle.more_body


class _Server(uvicorn.Server):
    """uvicorn's server, plus what a webhook on every pod's path needs of it: a client must
    send its request (headers and body) within `request_timeout` of connecting or of the
    request's first byte; an idle keep-alive connection is kept KEEP_ALIVE_SECONDS; no more
    than `max_connections` are kept open (those that waited longest for a request go first);
    on SIGTERM the listener closes, requests in progress finish, a request that arrives on an
    open connection is answered with `Connection: close`, connections with no request are
    dropped IDLE_CLOSE_SECONDS later; and a drained server exits 0 (uvicorn re-raises SIGTERM
    after its graceful shutdown: exit 143), so the kubelet and tests see a clean stop."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()

    def __init__(self, config: uvicorn.Config, runtime: Runtime, reloader: Reloader, *,
                 request_timeout: float, max_connections: int) -> None:
        super().__init__(config)
        self.server_state = self._state = _State()
        self.runtime = runtime
        self.reloader = reloader
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.closed_at: float | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.reloader.loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)
        self.runtime.tls_ready = self.started
        self._watcher = asyncio.create_task(self._watch_connections())

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's shutdown (close the listener, let requests in flight finish, wait for the
        connections to go), draining instead of closing idle connections at once.

        uvicorn's own `shutdown()` of an idle keep-alive connection is `transport.close()`: a
        request its client wrote a moment before is lost, and the client (the apiserver: a
        POST is never retried) sees EOF. Here such a request is answered, with `Connection:
        close`. A connection that stays idle is aborted by the watcher: on TLS, close() would
        wait up to the loop's ssl_shutdown_timeout (30 s, not settable through uvicorn) for a
        close_notify that a hung client never sends, holding the exit."""
        self._state.draining = True
        self.closed_at = asyncio.get_running_loop().time()
        try:
            await super().shutdown(sockets=sockets)
        finally:
            if self._watcher is not None:
                self._watcher.cancel()

    async def _watch_connections(self) -> None:
        # uvicorn internals relied on (0.54, httptools_impl): `server_state.connections` holds
        # the live protocols; a protocol's `cycle` is None before its first request, its
        # `cycle.more_body` is True while the request body is arriving and its
        # `cycle.response_complete` is True once the response is written; `transport` is the
        # asyncio transport. uvicorn's own keep-alive timer closes a connection idle for
        # `timeout_keep_alive`. A request the server is working on is never cut.
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            connections = [c for c in self.server_state.connections if isinstance(c, Protocol)]
            waiting = []
            for connection in connections:
                if connection.working:
                    continue
                if connection.receiving or connection.idle_at is None:
                    since, limit = connection.request_at, self.request_timeout
                else:
                    since, limit = connection.idle_at, None
                if self.closed_at is not None and not connection.receiving:
                    since, limit = max(since, self.closed_at), IDLE_CLOSE_SECONDS
                if limit is not None and now - since >= limit:
                    connection.transport.abort()  # connection_lost follows, without TLS close
                elif connection.cycle is None or connection.cycle.response_complete:
                    waiting.append((since, connection))
            for _, connection in sorted(waiting, key=lambda pair: pair[0])[
                    :max(0, len(connections) - self.max_connections)]:
                connection.transport.abort()  # over the cap: those waiting longest go first
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
    try:
        sync = _sync(settings, runtime)
    except ClusterError as exc:
        print(f"error: --engine {settings.engine} applies the compiled policies to the "
              f"cluster: {exc}", file=sys.stderr)
        return 2
    namespaces = NamespaceDefaults(settings.keys.policies, settings.kubeconfig,
                                   on_version=runtime.learn_kube_version)
    runtime.namespaces = namespaces
    namespaces.start()
    # Events need the same cluster access
    sink = ApiEventSink.connect(settings.kubeconfig) if settings.events else None
    if sink is not None:
        runtime.events = EventRecorder(sink, on_drop=runtime.metrics.drop_events,
                                       instance=socket.gethostname())
        runtime.events.start()
    reloader = Reloader(runtime, policies=settings.policies, context=context, cert=cert, key=key,
                        interval=settings.reload_interval)
    reloader.start()
    if sync is not None:
        sync.start()
    app = create_app(runtime, max_body_bytes=settings.max_body_bytes, sync=sync,
                     ready_when_synced=settings.engine == "admission-policy")
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, ssl_context_factory=lambda *_: context,
        http=Protocol, timeout_keep_alive=KEEP_ALIVE_SECONDS,
        access_log=False, log_config=None, server_header=False, lifespan="off",
        proxy_headers=False,  # nothing reads the client address; no header may change it
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        limit_concurrency=settings.max_connections + 64,  # 503s, past the watcher's cap
    )
    log.info("serving", extra={"address": f"https://{settings.host}:{settings.port}",
                               "policies": policies.names(), "cert": str(cert),
                               "engine": settings.engine})
    server = _Server(config, runtime, reloader, request_timeout=settings.request_timeout,
                     max_connections=settings.max_connections)
    gc.collect()
    gc.freeze()  # the startup heap (policies, schemas, the Kubernetes client) is never garbage
    server.run()
    reloader.stop()
    if sync is not None:
        sync.stop()
    namespaces.stop()
    if runtime.events is not None:
        runtime.events.stop()
    log.info("stopped")
    return 0 if server.started else 1


def _sync(settings: Settings, runtime: Runtime) -> AdmissionPolicySync | None:
    """The sync of `--engine admission-policy | hybrid`; ClusterError without cluster access."""
    if settings.engine == "webhook":
        return None
    hybrid = settings.engine == "hybrid"
    target = Target(name=settings.engine_name,
                    own_namespace=runtime.config.selection.own_namespace,
                    pod_opt_in=settings.pod_opt_in,
                    # hybrid: the webhook decides a pod the admission policy failed on
                    failure_policy="Ignore" if hybrid else "Fail")
    return AdmissionPolicySync(runtime, Cluster(settings.kubeconfig), target,
                               owner=settings.engine_owner)


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
