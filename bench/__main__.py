"""Throughput and latency of `/mutate` against floors on the same uvicorn and TLS.

    python -m bench [--seconds 10] [--connections 8,64] [--rounds 2]

Every server runs one process on loopback and is driven by `wrk` (one thread, after a 2 s
warm-up). Each scenario is a review; its floor answers it with the least work a server can do:

- `untouched` (a pod in kube-system): `/mutate` decides without a patch; floor `raw (orjson)`, a
  bare ASGI handler that parses the review with orjson and answers `allowed`;
- `logging`, `3 policies` (wait-for-database, logging, metrics-exporter) and `60 KB pod`
  (2 policies into a pod of 50 containers): `/mutate` injects; floor `same bytes`, a bare ASGI
  handler that parses the review and answers with the very bytes `/mutate` gave for it, so the
  patch's size is not held against `/mutate`; and `same bytes, one write`, the same handler on the
  server's own HTTP protocol (head and body in one TLS record), which is what the server's edge
  costs without its engine.

Each injection scenario runs twice: as it is, every request the same pod (the replicas of one
ReplicaSet: after the first, `/mutate` answers from its cache of answers), and `(new pods)`, every
request a new pod (its `app` label counts up: every answer is rendered).

The floor and `/mutate` are measured alternately, `--rounds` times, at each `--connections`; the
table gives every run and the ratios of the medians.

`--baseline REV` adds one more reference to every scenario: `serve` as it was at the git revision
REV (checked out into a temporary worktree, run from there with this environment), measured in
the same alternation, so that the ratio against it is what the commits since REV bought, on the
same machine in the same minutes. Between runs the floors of this machine move by up to 40%, so
a change is judged against a baseline measured beside it, not against an older table.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.serverproc import free_port, generate_certs

ROOT = Path(__file__).resolve().parent.parent
INJECT = "sidecar.company.com/inject"
POD = {"apiVersion": "v1", "kind": "Pod",
       "metadata": {"generateName": "web-", "labels": {"app": "shop"},
                    "annotations": {INJECT: "logging"}},
       "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}}
LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[%s]]
"""
#: every request a new pod (its `app` label counts up), so no answer is ever cached
LUA_EVERY_POD_NEW = """local before, after = [[%s]], [[%s]]
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, before .. n .. after)
end
"""
NEW_POD_MARK = '"app":"shop'


def review(pod: dict[str, Any], namespace: str = "shop") -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "bench", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "operation": "CREATE", "namespace": namespace, "object": pod}}


def with_policies(pod: dict[str, Any], policies: str) -> dict[str, Any]:
    changed = copy.deepcopy(pod)
    changed["metadata"]["annotations"][INJECT] = policies
    return changed


def large_pod(containers: int = 50) -> dict[str, Any]:
    """A pod of about 60 KB: `containers` containers with env, ports, probes and resources."""
    pod = with_policies(POD, "logging,metrics-exporter")
    pod["spec"]["containers"] = [{
        "name": f"app-{i}", "image": f"registry.example.com/team/app-{i}:1.2.3",
        "args": ["--listen=:8080", f"--shard={i}", "--log-level=info"],
        "ports": [{"name": "http", "containerPort": 8080 + i}],
        "env": [{"name": f"SETTING_{j}", "value": f"value-{i}-{j}-" + "x" * 24}
                for j in range(12)],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                      "limits": {"cpu": "500m", "memory": "256Mi"}},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080 + i}},
    } for i in range(containers)]
    return pod


NEW_PODS = " (new pods)"
SCENARIOS = {
    "untouched": review(POD, "kube-system"),
    "logging": review(POD),
    "3 policies": review(with_policies(POD, "wait-for-database,logging,metrics-exporter")),
    "60 KB pod": review(large_pod()),
}


def start(argv: list[str], port: int, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               cwd=cwd)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.post(f"https://127.0.0.1:{port}/mutate", json=SCENARIOS["logging"],
                       verify=False, timeout=1)
            return process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"bench: {argv} did not start")


@dataclass
class Server:
    """A server process and the port it answers on."""

    name: str
    argv: list[str]
    port: int
    process: subprocess.Popen[bytes] | None = None
    cwd: Path | None = None

    def __enter__(self) -> Server:
        self.process = start(self.argv, self.port, self.cwd)
        return self

    def __exit__(self, *_: object) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(30)


def injector(port: int, certs: Path, tree: Path = ROOT, name: str = "mutate") -> Server:
    """`serve` from the source `tree` (`python -m webhook` run there imports that tree's
    package), with this tree's policies."""
    return Server(name, [
        sys.executable, "-m", "webhook", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--tls-cert", str(certs / "tls.crt"), "--tls-key", str(certs / "tls.key"),
        "--log-level", "warning", "--policies", str(ROOT / "policies")], port, cwd=tree)


@contextmanager
def worktree(revision: str, parent: Path) -> Iterator[Path]:
    """The source tree at git `revision`, checked out under `parent` for as long as it is used."""
    path = parent / "baseline"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(path),
                    revision], check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)],
                       check=False)


def floor(kind: str, port: int, certs: Path, answer: Path | None = None) -> Server:
    argv = [sys.executable, "-m", "bench.servers", kind, str(port), str(certs / "tls.crt"),
            str(certs / "tls.key")]
    return Server(kind, argv + ([str(answer)] if answer else []), port)


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
    parser.add_argument("--connections", default="8,64", help="comma-separated, e.g. 8,64")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--scenarios", default=",".join(
        [*SCENARIOS, *(f"{name}{NEW_PODS}" for name in SCENARIOS if name != "untouched")]),
        help=f"comma-separated; a name ending in {NEW_PODS!r} sends a new pod every request")
    parser.add_argument("--baseline", metavar="REV",
                        help="also measure `serve` as it was at this git revision, alternately")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench: wrk is not installed (apt-get install wrk)")
    connections = [int(c) for c in args.connections.split(",")]
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        certs = Path(tmp) / "certs"
        generate_certs(certs)
        server = stack.enter_context(injector(free_port(), certs))
        references = {}
        if args.baseline:
            tree = stack.enter_context(worktree(args.baseline, Path(tmp)))
            name = f"serve@{args.baseline}"
            references[name] = stack.enter_context(injector(free_port(), certs, tree, name))
        rows = run(args, Path(tmp), certs, server, connections, references)
    report(rows)


def run(args: argparse.Namespace, tmp: Path, certs: Path, server: Server,
        connections: list[int], references: dict[str, Server]) -> list[Any]:
    """Each scenario against its floors (and `references`), alternately, at each
    concurrency."""
    rows: list[Any] = []
    for name in args.scenarios.split(","):
        new_pods = name.endswith(NEW_PODS)
        # compact, as the apiserver (Go's encoding/json) writes a review
        body = json.dumps(SCENARIOS[name.removesuffix(NEW_PODS)], separators=(",", ":"))
        script = tmp / "review.lua"
        if new_pods:
            before, _, after = body.partition(NEW_POD_MARK)
            script.write_text(LUA_EVERY_POD_NEW % (before + NEW_POD_MARK + "-", after))
        else:
            script.write_text(LUA % body)
        answer = httpx.post(f"https://127.0.0.1:{server.port}/mutate", content=body,
                            headers={"content-type": "application/json"}, verify=False)
        answer.raise_for_status()
        (tmp / "answer.json").write_bytes(answer.content)
        kinds = ["raw-orjson"] if name == "untouched" else ["same-bytes", "same-bytes-one-write"]
        with ExitStack() as stack:
            floors = {kind: stack.enter_context(floor(kind, free_port(), certs,
                                                      tmp / "answer.json")) for kind in kinds}
            floors.update(references)
            kinds += list(references)
            for c in connections:
                runs: dict[str, list[dict[str, float]]] = {k: [] for k in [*kinds, "mutate"]}
                for _ in range(args.rounds):
                    for label, target in (*floors.items(), ("mutate", server)):
                        measure(target.port, script, 2, c)  # warm-up
                        runs[label].append(measure(target.port, script, args.seconds, c))
                rows.extend((name, len(body), len(answer.content), c, kind,
                             {"floor": runs[kind], "mutate": runs["mutate"]}) for kind in kinds)
    return rows


def report(rows: list[Any]) -> None:
    print("\n| review | review KB | answer KB | c | floor | floor req/s | floor p99 ms "
          "| /mutate req/s | /mutate p99 ms | x floor req/s | x floor p99 |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for name, size, answer, c, kind, runs in rows:
        def runs_of(label: str, key: str, runs: Any = runs) -> str:
            return ", ".join(f"{r[key]:.0f}" if key == "rps" else f"{r[key]:.2f}"
                             for r in runs[label])

        def median(label: str, key: str, runs: Any = runs) -> float:
            return float(statistics.median(r[key] for r in runs[label]))

        print(f"| {name} | {size / 1024:.1f} | {answer / 1024:.1f} | {c} | {kind} "
              f"| {runs_of('floor', 'rps')} | {runs_of('floor', 'p99')} "
              f"| {runs_of('mutate', 'rps')} | {runs_of('mutate', 'p99')} "
              f"| {median('mutate', 'rps') / median('floor', 'rps'):.2f} "
              f"| {median('mutate', 'p99') / median('floor', 'p99'):.2f} |")


if __name__ == "__main__":
    main()
