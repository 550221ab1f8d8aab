"""Throughput and latency of `/mutate` against two references on the same uvicorn and TLS.

    python -m bench [--seconds 10] [--connections 16]

Starts `raw` (the floor: parse and answer, stdlib json), `raw (orjson)` (the same floor with the
parser `/mutate` uses), `fastapi` (a FastAPI route doing the same) and the
real `sidecar-injector serve` with the shipped policies, and drives each with `wrk` on loopback
(one wrk thread; bounded by --seconds). `/mutate` is measured twice: on a pod in kube-system
(decided untouched: the server's own overhead) and on a pod that asks for `logging` (a full
injection). Prints a table; the ratio columns compare with `raw`.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.serverproc import free_port, generate_certs

ROOT = Path(__file__).resolve().parent.parent
POD = {"apiVersion": "v1", "kind": "Pod",
       "metadata": {"generateName": "web-", "labels": {"app": "shop"},
                    "annotations": {"sidecar.company.com/inject": "logging"}},
       "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}}
REVIEW = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
          "request": {"uid": "bench", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                      "operation": "CREATE", "namespace": "shop", "object": POD}}
SYSTEM_REVIEW = json.loads(json.dumps(REVIEW).replace('"namespace": "shop"',
                                                      '"namespace": "kube-system"'))
LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[%s]]
"""


def start(kind: str, port: int, certs: Path) -> subprocess.Popen[bytes]:
    cert, key = str(certs / "tls.crt"), str(certs / "tls.key")
    if kind == "sidecar-injector":
        argv = [sys.executable, "-m", "webhook", "serve", "--host", "127.0.0.1", "--port",
                str(port), "--tls-cert", cert, "--tls-key", key, "--log-level", "warning",
                "--policies", str(ROOT / "policies")]
    else:
        argv = [sys.executable, "-m", "bench.servers", kind, str(port), cert, key]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.post(f"https://127.0.0.1:{port}/mutate", json=REVIEW, verify=False, timeout=1)
            return process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"bench: {kind} did not start")


def measure(port: int, script: Path, seconds: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
         f"https://127.0.0.1:{port}/mutate"], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"bench: errors during the run:\n{out}")
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    for label, key in (("50%", "p50"), ("99%", "p99")):
        value, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        result[key] = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench: wrk is not installed (apt-get install wrk)")
    with tempfile.TemporaryDirectory() as tmp:
        certs = Path(tmp) / "certs"
        generate_certs(certs)
        injected = Path(tmp) / "inject.lua"
        injected.write_text(LUA % json.dumps(REVIEW))
        passed = Path(tmp) / "pass.lua"
        passed.write_text(LUA % json.dumps(SYSTEM_REVIEW))
        runs = [("raw", "raw", injected), ("raw (orjson)", "raw-orjson", injected),
                ("fastapi", "fastapi", injected),
                ("mutate: untouched", "sidecar-injector", passed),
                ("mutate: injection", "sidecar-injector", injected)]
        rows = {}
        for label, kind, script in runs:
            port = free_port()
            process = start(kind, port, certs)
            try:
                measure(port, script, 2, args.connections)  # warm-up
                rows[label] = measure(port, script, args.seconds, args.connections)
            finally:
                process.terminate()
                process.wait(30)
    floor = rows["raw"]
    print(f"\n{'server':<20}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'x raw req/s':>13}"
          f"{'x raw p99':>11}")
    for kind, row in rows.items():
        print(f"{kind:<20}{row['rps']:>10.0f}{row['p50']:>10.2f}{row['p99']:>10.2f}"
              f"{row['rps'] / floor['rps']:>13.2f}{row['p99'] / floor['p99']:>11.2f}")


if __name__ == "__main__":
    main()
