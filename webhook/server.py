"""The HTTP edge: `create_app` builds the ASGI app; `/mutate` and `/validate` bypass the framework.

`/mutate` runs for every Pod in the cluster, so it is a plain ASGI handler in front of FastAPI:
read the body once (413 past the limit, without reading it whole), parse it once (400 on a bad
review), call `Runtime.decide` (`Runtime.validate` for `/validate`, the workload checks of the
validating webhook, which never patch), write the JSON. FastAPI serves everything else: `/healthz`,
`/readyz`, `/metrics`. A bug in the engine is logged with the uid and answered 500, so the
apiserver applies the configured failurePolicy; nothing a client sends can raise.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Receive, Scope, Send

from webhook.review import ReviewError, parse_review
from webhook.runtime import Runtime
from webhook.sync import AdmissionPolicySync

log = logging.getLogger("sidecar_injector.server")
MUTATE_PATH = "/mutate"
VALIDATE_PATH = "/validate"


class _BodyTooLargeError(Exception):
    """The request body is over the limit."""


class MutateEndpoint:
    """ASGI app for `POST /mutate` and `POST /validate`; everything else goes to `fallback`."""

    def __init__(self, runtime: Runtime, fallback: ASGIApp, max_body_bytes: int) -> None:
        self.runtime = runtime
        self.fallback = fallback
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in (MUTATE_PATH, VALIDATE_PATH):
            await self.fallback(scope, receive, send)
            return
        if scope["method"] != "POST":
            await _send_json(send, 405, {"error": "use POST with an AdmissionReview"})
            return
        try:
            body = await self._read_body(scope, receive)
        except _BodyTooLargeError:
            await _send_json(send, 413, {"error": f"request body is over the limit of "
                                                  f"{self.max_body_bytes} bytes"})
            return
        try:
            review = parse_review(body)
        except ReviewError as exc:
            await _send_json(send, 400, {"error": str(exc)})
            return
        namespaces = self.runtime.namespaces
        if namespaces is not None and namespaces.missing(review.namespace):
            # created a moment ago, its watch event still on the way: read it, off the loop
            await asyncio.to_thread(namespaces.fetch, review.namespace)
        try:
            if scope["path"] == MUTATE_PATH:
                payload = self.runtime.respond(review, body)
            else:
                payload = orjson.dumps(self.runtime.validate(review))
        except Exception:
            log.exception("internal error answering an admission review",
                          extra={"uid": review.uid, "namespace": review.namespace})
            await _send_json(send, 500, {"error": "internal error; see the webhook's log",
                                         "uid": review.uid})
            return
        await _send_body(send, 200, payload)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                raise _BodyTooLargeError
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _BodyTooLargeError
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


async def _send_json(send: Send, status: int, payload: Any) -> None:
    await _send_body(send, status, orjson.dumps(payload))


async def _send_body(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(runtime: Runtime, *, max_body_bytes: int, sync: AdmissionPolicySync | None = None,
               ready_when_synced: bool = False) -> MutateEndpoint:
    """The ASGI app: `/mutate` on the fast path, FastAPI for the probes and metrics. With
    `sync` (serve --engine), /readyz shows its status; with `ready_when_synced` (the
    admission-policy engine, where the sync is the pod's whole job) it is also ready only once
    a sync succeeded."""
    api = FastAPI(title="sidecar-injector", docs_url=None, redoc_url=None, openapi_url=None)

    @api.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz")
    def readyz() -> JSONResponse:
        namespaces = runtime.namespaces.status if runtime.namespaces else "disabled"
        details: dict[str, object] = {"policies": len(runtime.policies), "tls": runtime.tls_ready,
                                      "namespaceDefaults": namespaces}
        ready = runtime.tls_ready
        if sync is not None:
            details["admissionPolicies"] = sync.status
            ready = ready and (sync.synced.is_set() or not ready_when_synced)
        return JSONResponse({"ready": ready, **details}, status_code=200 if ready else 503)

    @api.get("/metrics")
    async def metrics() -> Response:  # on the loop: the per-review metrics' only thread
        return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return MutateEndpoint(runtime, api, max_body_bytes)
