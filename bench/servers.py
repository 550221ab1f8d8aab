"""Reference servers measured beside `/mutate`, on the same uvicorn and TLS settings:
`raw` (an ASGI handler that parses the review and answers: the floor), `raw-orjson` (the same with
orjson), `same-bytes` (parses the review with orjson and answers with the very bytes `/mutate`
gave for it, read from ANSWER: the floor for an injection, whose answer carries a patch),
`same-bytes-one-write` (the same on the server's own HTTP protocol, which writes a response's head
and body in one TLS record, where uvicorn's writes two) and `fastapi` (a FastAPI route that parses
and answers).
Run: `python -m bench.servers raw|raw-orjson|fastapi|same-bytes[-one-write] PORT CERT KEY [ANSWER]`.
"""

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


def same_bytes(answer: bytes) -> Any:
    """The floor for a review whose answer is `answer`: read, parse, send those bytes."""
    text = answer.decode()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        review = orjson.loads(await _body(receive))
        if review["request"]["uid"] not in text:
            raise ValueError("the review's uid is not in the answer")  # never on the bench
        await _send(send, answer)
    return app


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _answer(scope: Scope, receive: Receive, send: Send, loads: Any, dumps: Any) -> None:
    if scope["type"] != "http":
        return
    review = loads(await _body(receive))
    await _send(send, dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                             "response": {"uid": review["request"]["uid"], "allowed": True}}))


async def _send(send: Send, body: bytes) -> None:
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
    app: Any
    if kind.startswith("same-bytes"):
        app = same_bytes(Path(sys.argv[5]).read_bytes())
    else:
        app = {"raw": raw, "raw-orjson": raw_orjson}.get(kind) or fastapi_app()
    http: Any = "auto"
    if kind == "same-bytes-one-write":  # only this floor loads the server's module
        from webhook.serving import Protocol  # noqa: PLC0415

        http = Protocol
    uvicorn.run(app, host="127.0.0.1", port=port, ssl_context_factory=lambda *_: context,
                access_log=False, log_level="warning", server_header=False, lifespan="off",
                http=http)


if __name__ == "__main__":
    main()
