"""Reference servers measured beside `/mutate`, on the same uvicorn and TLS settings:
`raw` (an ASGI handler that parses the review and answers: the floor) and `fastapi` (a FastAPI
route that does the same). Run: `python -m bench.servers raw|fastapi PORT CERT KEY`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from webhook.reload import tls_context


async def raw(scope: Scope, receive: Receive, send: Send) -> None:
    """Read the body, parse it, answer `allowed`: the least any webhook does (stdlib json)."""
    await _answer(scope, receive, send, json.loads, lambda v: json.dumps(v).encode())


async def raw_orjson(scope: Scope, receive: Receive, send: Send) -> None:
    """The same floor with orjson, the parser `/mutate` uses."""
    await _answer(scope, receive, send, orjson.loads, orjson.dumps)


async def _answer(scope: Scope, receive: Receive, send: Send, loads: Any, dumps: Any) -> None:
    if scope["type"] != "http":
        return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    review = loads(b"".join(chunks))
    body = dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                  "response": {"uid": review["request"]["uid"], "allowed": True}})
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def fastapi_app() -> FastAPI:
    app = FastAPI()

    @app.post("/mutate")
    async def mutate(review: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "response": {"uid": review["request"]["uid"], "allowed": True}}

    return app


def main() -> None:
    kind, port, cert, key = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
    context = tls_context(cert, key)
    app: Any = {"raw": raw, "raw-orjson": raw_orjson}.get(kind) or fastapi_app()
    uvicorn.run(app, host="127.0.0.1", port=port, ssl_context_factory=lambda *_: context,
                access_log=False, log_level="warning", server_header=False, lifespan="off")


if __name__ == "__main__":
    main()
