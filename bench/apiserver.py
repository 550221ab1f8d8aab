"""Pod creation through a real kube-apiserver: no webhook, `sidecar-injector`, agnhost, compiled.

    python -m bench.apiserver [--pods 500] [--concurrency 1,8] [--rounds 2] [--plot FILE.png]

The end-to-end control plane (tests/e2e/controlplane.py: etcd, kube-apiserver and the
kube-controller-manager, whose serviceaccount controller gives each namespace its `default`
ServiceAccount, on loopback; binaries from `make tools`) is started once for the whole run.
`--pods` pods, all the same one-container pod asking for `logging`
(`sidecar.company.com/inject: logging`), are created at each `--concurrency` (that many threads,
each with its own kubernetes ApiClient, each creating its share of the pods one after the other)
in three namespaces, one per path:

- `plain`: no webhook is called: the reference;
- `sidecar-injector`: opted in (`sidecar.company.com/inject=enabled`), served by one
  `sidecar-injector serve` process with the shipped policies, started and registered (the chart's
  MutatingWebhookConfiguration, failurePolicy Fail) as the e2e suite does, at the default log
  level (one log line per review);
- `compiled` (Kubernetes 1.36+): no webhook either; the shipped policies compiled into admission
  policies the apiserver runs itself (`sidecar-injector policies compile`, with the server's
  `--default-policies logging`, applied as they are). They are compiled with the prefix
  `compiled.bench`, so that they act only in their own namespace
  (`compiled.bench/inject=enabled`) and the webhook never sees their pods; the pod is the same,
  its annotation `compiled.bench/inject: logging`;
- `agnhost`: served by Kubernetes' own Go test webhook (`agnhost webhook`, path
  `/mutating-pods-sidecar`, which adds one container), registered with its own
  MutatingWebhookConfiguration and namespaceSelector. Its reinvocationPolicy is `Never` unless
  `--agnhost-reinvocation IfNeeded`: the container it adds has no service-account token mount,
  so under IfNeeded the ServiceAccount plugin's change re-invokes it, a second call per pod.

In each round the three paths run one after the other at each concurrency (their order rotated
from round to round), so drift over time touches all three alike; each run's pods are deleted
after it, so etcd holds the same number of pods at the start of every run. Before each run
every client does a few dry-run creates (which call the webhooks too) to open its connections;
before the first round each path has one unreported run of 100 pods, so that none pays alone for
a cold start.

For each run the table gives, per path and concurrency (one value per round):
- p50/p99 of a pod's creation as the client sees it (the create call until its response is
  read; the response is not deserialized into models, so the larger injected pod does not cost
  the client more than the plain one) and pods/s (pods / the run's wall time);
- the added p50/p99: the path's p50/p99 minus the `plain` run's of the same round and
  concurrency;
- from the apiserver's /metrics, read before and after the run: the share of the webhook's calls
  in the lowest bucket of `apiserver_admission_webhook_admission_duration_seconds` (the bound is
  read from the metrics text: 5 ms), their mean duration, and the webhook's calls per pod created
  (`apiserver_admission_webhook_request_total`; for `plain`, the calls of any webhook: 0); for
  `compiled`, the same from the apiserver's own admission-policy metrics:
  `apiserver_mutating_admission_policy_check_duration_seconds` and `_check_total` of the engine
  policy (the bound of their lowest bucket is given in the column).

`--plot` writes the latency CDFs per path, one panel per concurrency, as a PNG. The logs of the
control plane and of both webhooks are kept under artifacts/bench-apiserver/ when a run fails.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from kubernetes import client
from kubernetes import config as kube_config

from tests.e2e.conftest import POLICIES, STATUS, Webhook, pod_manifest
from tests.e2e.controlplane import K8S_VERSION, ROOT, ControlPlane, Process, binary, start
from tests.e2e.kube import ApiException, Kube, wait_for
from tests.e2e.webhookconfig import INJECT, RELEASE_NAMESPACE, webhook_configuration
from tests.serverproc import free_port, generate_certs
from webhook.compiled import MINIMUM_MINOR, Target, compile_policies
from webhook.engine import EngineConfig
from webhook.keys import Keys
from webhook.policy import load_policy_dir
from webhook.selection import Selection

MINOR = int(K8S_VERSION.lstrip("v").split(".")[1])
PATHS = ("plain", "sidecar-injector", "agnhost") + (("compiled",) if MINOR >= MINIMUM_MINOR
                                                     else ())
NAMESPACES = {"plain": "bench-plain", "sidecar-injector": "bench-injector",
              "agnhost": "bench-agnhost", "compiled": "bench-compiled"}
COMPILED_KEYS = Keys(prefix="compiled.bench")
COMPILED = "bench-compiled"  # the engine policy's name
OURS = "namespace.sidecar-injector.sidecar.company.com"
AGNHOST = "sidecar.agnhost.k8s.io"
AGNHOST_CONFIG = "bench-agnhost-sidecar"
AGNHOST_LABEL = "bench-agnhost"
AGNHOST_CONTAINER = "webhook-added-sidecar"
WEBHOOK_OF = {"plain": None, "sidecar-injector": OURS, "agnhost": AGNHOST, "compiled": None}
POD = pod_manifest(generate_name="bench-", annotations={INJECT: "logging"})
PODS = {path: POD for path in PATHS} | {"compiled": pod_manifest(
    generate_name="bench-", annotations={COMPILED_KEYS.inject: "logging"})}
STATUS_KEYS = {path: STATUS for path in PATHS} | {"compiled": COMPILED_KEYS.status}
WARMUP = 10  # dry-run creates per client before each run
WARMUP_PODS = 100  # pods of the unreported first run of each path
DURATION = "apiserver_admission_webhook_admission_duration_seconds"
REQUESTS = "apiserver_admission_webhook_request_total"
POLICY_DURATION = "apiserver_mutating_admission_policy_check_duration_seconds"
POLICY_CHECKS = "apiserver_mutating_admission_policy_check_total"
WEBHOOK_BOUND = 0.005
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class WebhookStats:
    """Cumulative counters of one webhook (or of all, `name` None) in a /metrics text."""

    calls: float
    count: float  # observations of the duration histogram
    lowest: float  # observations in its lowest bucket (for a policy: its first bound >= 1 ms)
    bound: float  # that bucket's upper bound, seconds
    total: float  # the sum of the observed durations, seconds

    def __sub__(self, other: WebhookStats) -> WebhookStats:
        return WebhookStats(self.calls - other.calls, self.count - other.count,
                            self.lowest - other.lowest, self.bound, self.total - other.total)

    @property
    def mean_ms(self) -> float:
        return 1000 * self.total / self.count if self.count else 0.0


@dataclass
class Run:
    """One path at one concurrency in one round."""

    path: str
    concurrency: int
    round: int
    latencies: list[float]  # seconds, one per pod
    seconds: float
    webhook: WebhookStats

    def quantile(self, q: int) -> float:
        """The q-th percentile of the creation latency, in milliseconds."""
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1] * 1000

    @property
    def pods_per_second(self) -> float:
        return len(self.latencies) / self.seconds


def samples(text: str, metric: str) -> Iterable[tuple[dict[str, str], float]]:
    """The labelled samples of `metric` in a Prometheus text."""
    prefix = metric + "{"
    for line in text.splitlines():
        if line.startswith(prefix):
            labels, _, value = line[len(prefix):].rpartition("} ")
            yield dict(LABEL.findall(labels)), float(value)


def webhook_stats(text: str, path: str) -> WebhookStats:
    """The calls of `path`'s webhook (for `plain`, of any webhook; for `compiled`, of its engine
    policy) and their duration histogram."""
    name = WEBHOOK_OF.get(path)
    calls_metric, duration = ((POLICY_CHECKS, POLICY_DURATION) if path == "compiled"
                              else (REQUESTS, DURATION))

    def ours(labels: dict[str, str]) -> bool:
        if path == "compiled":
            return labels.get("policy") == COMPILED
        return labels.get("operation") == "CREATE" and name in (None, labels.get("name"))

    calls = sum(v for labels, v in samples(text, calls_metric) if ours(labels))
    buckets: dict[float, float] = {}
    for labels, value in samples(text, duration + "_bucket"):
        if ours(labels):
            le = float(labels["le"])
            buckets[le] = buckets.get(le, 0.0) + value
    count = sum(v for labels, v in samples(text, duration + "_count") if ours(labels))
    total = sum(v for labels, v in samples(text, duration + "_sum") if ours(labels))
    # the webhooks' lowest bound (5 ms); the policies' histogram has 0.5 µs, 1 ms, 10 ms, ...:
    # its first bound of a millisecond or more
    bound = WEBHOOK_BOUND if WEBHOOK_BOUND in buckets else min(
        (b for b in buckets if b >= 0.001), default=WEBHOOK_BOUND)
    return WebhookStats(calls, count, buckets.get(bound, 0.0), bound, total)


def lowest_bound(text: str) -> float:
    """The lowest finite bucket bound of the webhook duration histogram, from any webhook."""
    bounds = {float(labels["le"]) for labels, _ in samples(text, DURATION + "_bucket")}
    return min(bounds)


def new_client(kubeconfig: Path) -> Any:
    loader = cast(Any, kube_config).new_client_from_config
    return loader(config_file=str(kubeconfig))


def create(core: Any, path: str, *, dry_run: bool = False) -> bytes:
    """Create the benchmark pod of `path`, in its namespace; the raw response body (not
    deserialized into models)."""
    kwargs = {"dry_run": "All"} if dry_run else {}
    response = core.create_namespaced_pod(NAMESPACES[path], PODS[path], _preload_content=False,
                                          **kwargs)
    body: bytes = response.read()
    response.release_conn()
    return body


def creator(api: Any, path: str, pods: int) -> tuple[list[float], bytes]:
    """Create `pods` pods one after the other; each one's latency and the first response."""
    core: Any = client.CoreV1Api(api)
    latencies = []
    first = b""
    for _ in range(pods):
        began = time.perf_counter()
        body = create(core, path)
        latencies.append(time.perf_counter() - began)
        first = first or body
    return latencies, first


def warm_up(api: Any, path: str) -> None:
    core: Any = client.CoreV1Api(api)
    for _ in range(WARMUP):
        create(core, path, dry_run=True)


def check(path: str, body: bytes) -> None:
    """Fail unless the pod created on `path` is what that path makes of it."""
    pod = json.loads(body)
    containers = [c["name"] for c in pod["spec"]["containers"]]
    annotations = pod["metadata"].get("annotations") or {}
    status = annotations.get(STATUS_KEYS[path])
    injected = status is not None and "skipped" not in json.loads(status)
    expected = {"plain": (containers == ["app"] and status is None),
                "sidecar-injector": injected, "compiled": injected and STATUS not in annotations,
                "agnhost": AGNHOST_CONTAINER in containers and status is None}[path]
    if not expected:
        raise SystemExit(f"bench: a pod created on {path} is not as expected: "
                         f"containers {containers}, {STATUS_KEYS[path]} {status}")


def run_once(plane: ControlPlane, kube: Kube, path: str, pods: int, concurrency: int,
             round_: int) -> Run:
    namespace = NAMESPACES[path]
    apis = [new_client(plane.kubeconfig) for _ in range(concurrency)]
    shares = [pods // concurrency + (i < pods % concurrency) for i in range(concurrency)]
    try:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(lambda api: warm_up(api, path), apis))
            before = plane.metrics()
            began = time.perf_counter()
            results = list(pool.map(lambda a: creator(a[0], path, a[1]), zip(apis, shares,
                                                                             strict=True)))
            seconds = time.perf_counter() - began
        after = plane.metrics()
    finally:
        for api in apis:
            api.close()
    latencies = [latency for result, _ in results for latency in result]
    for _, first in results:
        check(path, first)
    stats = webhook_stats(after, path) - webhook_stats(before, path)
    delete_pods(kube, namespace)
    return Run(path, concurrency, round_, latencies, seconds, stats)


def apply_compiled(plane: ControlPlane) -> None:
    """The shipped policies as admission policies (`policies compile`), applied."""
    selection = Selection(keys=COMPILED_KEYS, default_policies=("logging",),
                          own_namespace=RELEASE_NAMESPACE)
    compiled = compile_policies(load_policy_dir(POLICIES), EngineConfig(selection=selection),
                                Target(name=COMPILED, own_namespace=RELEASE_NAMESPACE))
    if compiled.uncompiled:
        raise SystemExit(f"bench: not compiled: {compiled.uncompiled[0]}")
    done = subprocess.run(["kubectl", "--kubeconfig", str(plane.kubeconfig), "apply", "-f", "-"],
                          input=compiled.yaml(), capture_output=True, text=True, timeout=60,
                          check=False)
    if done.returncode:
        raise SystemExit(f"bench: kubectl apply of the compiled policies: {done.stderr}")


def delete_pods(kube: Kube, namespace: str) -> None:
    """Delete the namespace's pods (unscheduled, so at once) and wait until none is left."""
    kube.core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)
    wait_for(lambda: not kube.core.list_namespaced_pod(namespace, limit=1).items, 120,
             f"the pods of {namespace} to be deleted")


def start_agnhost(plane: ControlPlane, kube: Kube, workdir: Path, timeout_seconds: int,
                  reinvocation: str) -> Process:
    certs = workdir / "agnhost-certs"
    generate_certs(certs, service="agnhost", namespace="default")
    port = free_port()
    ca_bundle = base64.b64encode((certs / "ca.crt").read_bytes()).decode()
    process = start("agnhost", [
        str(binary("agnhost")), "webhook", f"--port={port}",
        f"--tls-cert-file={certs / 'tls.crt'}", f"--tls-private-key-file={certs / 'tls.key'}",
        "--sidecar-image=registry.k8s.io/pause:3.10",
    ], plane.logs)
    kube.apply_mutating_webhook({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": AGNHOST_CONFIG},
        "webhooks": [{
            "name": AGNHOST, "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Fail", "reinvocationPolicy": reinvocation,
            "matchPolicy": "Equivalent", "timeoutSeconds": timeout_seconds,
            "clientConfig": {"url": f"https://127.0.0.1:{port}/mutating-pods-sidecar",
                             "caBundle": ca_bundle},
            "namespaceSelector": {"matchLabels": {AGNHOST_LABEL: "on"}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["pods"], "scope": "Namespaced"}],
        }],
    })
    return process


def takes_effect(kubeconfig: Path, path: str) -> None:
    """Wait until a dry-run pod on `path` comes back as that path makes it."""
    api = new_client(kubeconfig)

    def ready() -> bool:
        try:
            check(path, create(client.CoreV1Api(api), path, dry_run=True))
        except (ApiException, SystemExit):
            return False
        return True

    try:
        wait_for(ready, 60, f"the {path} path to take effect")
    finally:
        api.close()


def measure(args: argparse.Namespace, workdir: Path, plane: ControlPlane) -> list[Run]:
    kube = Kube(str(plane.kubeconfig))
    wait_for(lambda: kube.exists(
        lambda: kube.core.read_namespaced_service_account("default", "default")),
        120, "the serviceaccount controller to create default/default")
    kube.ensure_namespace(RELEASE_NAMESPACE)
    kube.ensure_namespace(NAMESPACES["plain"])
    kube.ensure_namespace(NAMESPACES["sidecar-injector"], labels={INJECT: "enabled"})
    kube.ensure_namespace(NAMESPACES["agnhost"], labels={AGNHOST_LABEL: "on"})
    if "compiled" in PATHS:
        kube.ensure_namespace(NAMESPACES["compiled"], labels={COMPILED_KEYS.inject: "enabled"})
        apply_compiled(plane)
    (workdir / "webhook").mkdir()
    ours = Webhook(workdir / "webhook", plane.kubeconfig, plane.logs)
    ours.start()
    agnhost: Process | None = None
    try:
        config = webhook_configuration(url=ours.mutate_url, ca_bundle=ours.ca_bundle,
                                       failure_policy="Fail")
        kube.apply_mutating_webhook(config)
        agnhost = start_agnhost(plane, kube, workdir, config["webhooks"][0]["timeoutSeconds"],
                                args.agnhost_reinvocation)
        for path in PATHS:
            takes_effect(plane.kubeconfig, path)
        for path in PATHS:  # a first, unreported run of each: no path pays for a cold start
            run_once(plane, kube, path, min(args.pods, WARMUP_PODS), max(args.concurrency), -1)
        runs = []
        for round_ in range(args.rounds):
            for concurrency in args.concurrency:
                shift = round_ % len(PATHS)
                for path in PATHS[shift:] + PATHS[:shift]:
                    run = run_once(plane, kube, path, args.pods, concurrency, round_)
                    print(f"bench: round {round_ + 1}, c={concurrency}, {path}: "
                          f"p50 {run.quantile(50):.1f} ms, {run.pods_per_second:.0f} pods/s",
                          flush=True)
                    runs.append(run)
        return runs
    finally:
        ours.stop()
        if agnhost is not None:
            agnhost.stop()


def report(runs: list[Run], args: argparse.Namespace, bound: float) -> None:
    print(f"\nkube-apiserver {K8S_VERSION}, {args.pods} pods per run, {args.rounds} round(s), "
          f"{os.cpu_count()} CPUs, agnhost reinvocationPolicy {args.agnhost_reinvocation}; "
          "one value per round\n")
    print(f"| path | c | p50 ms | p99 ms | pods/s | added p50 ms | added p99 ms "
          f"| calls <= {bound * 1000:g} ms | mean call ms | calls/pod |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    plain = {(r.round, r.concurrency): r for r in runs if r.path == "plain"}

    def added(r: Run, q: int) -> float:
        return r.quantile(q) - plain[r.round, r.concurrency].quantile(q)

    def share(r: Run) -> float:
        return 100 * r.webhook.lowest / r.webhook.count if r.webhook.count else 0.0

    for concurrency in args.concurrency:
        for path in PATHS:
            mine = sorted((r for r in runs if r.path == path and r.concurrency == concurrency),
                          key=lambda r: r.round)

            def cells(value: Callable[[Run], float], fmt: str = "{:.1f}",
                      mine: list[Run] = mine, path: str = path, reference: bool = True) -> str:
                if path == "plain" and not reference:
                    return "-"
                return ", ".join(fmt.format(value(r)) for r in mine)

            print(f"| {path} | {concurrency} | {cells(lambda r: r.quantile(50))} "
                  f"| {cells(lambda r: r.quantile(99))} "
                  f"| {cells(lambda r: r.pods_per_second, '{:.0f}')} "
                  f"| {cells(lambda r: added(r, 50), '{:+.1f}', reference=False)} "
                  f"| {cells(lambda r: added(r, 99), '{:+.1f}', reference=False)} "
                  f"| {cells(share, '{:.0f}%', reference=False)}"
                  f"{own_bound(mine, bound)} "
                  f"| {cells(lambda r: r.webhook.mean_ms, '{:.2f}', reference=False)} "
                  f"| {cells(lambda r: r.webhook.calls / len(r.latencies), '{:.2f}')} |")


def own_bound(runs: list[Run], bound: float) -> str:
    """The lowest bucket of these runs' histogram, when it is not the webhooks' `bound`."""
    bounds = {r.webhook.bound for r in runs if r.webhook.count}
    return "".join(f" (<= {b * 1000:g} ms)" for b in bounds if b != bound)


def plot(runs: list[Run], concurrencies: list[int], out: Path) -> None:
    """Latency CDFs per path (all rounds pooled), one panel per concurrency."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib import ticker  # noqa: PLC0415

    figure, axes = plt.subplots(1, len(concurrencies), figsize=(6 * len(concurrencies), 4.5),
                                squeeze=False, sharey=True)
    for axis, concurrency in zip(axes[0], concurrencies, strict=True):
        for path in PATHS:
            latencies = sorted(1000 * latency for r in runs
                               if r.path == path and r.concurrency == concurrency
                               for latency in r.latencies)
            if latencies:
                fractions = [(i + 1) / len(latencies) for i in range(len(latencies))]
                axis.step(latencies, fractions, where="post",
                          label=f"{path} (p50 {statistics.median(latencies):.1f} ms)")
        axis.set_xscale("log")
        axis.xaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 3, 5)))
        axis.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        axis.xaxis.set_minor_formatter(ticker.NullFormatter())
        axis.set_xlabel("pod creation, ms (log scale)")
        axis.set_title(f"concurrency {concurrency}")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(loc="best")
    axes[0][0].set_ylabel("share of pods created within")
    figure.suptitle(f"Pod creation through kube-apiserver {K8S_VERSION}: "
                    + ", ".join(PATHS))
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=500, help="pods per run")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated, e.g. 1,8")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--plot", type=Path, help="write the latency CDFs to this PNG")
    parser.add_argument("--agnhost-reinvocation", choices=("Never", "IfNeeded"),
                        default="Never", help="agnhost's reinvocationPolicy")
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    if args.pods < 2 or min(args.concurrency) < 1 or args.pods < max(args.concurrency):
        parser.error("--pods must be at least 2 and at least the largest --concurrency")
    if "compiled" not in PATHS:
        print(f"bench: no compiled path: Kubernetes 1.{MINOR} serves no MutatingAdmissionPolicy "
              f"(1.{MINIMUM_MINOR}+)")
    began = time.monotonic()
    failed = True
    with tempfile.TemporaryDirectory() as tmp:
        plane = ControlPlane(Path(tmp) / "controlplane",
                             ROOT / "artifacts" / "bench-apiserver" / K8S_VERSION)
        try:
            plane.start()
            runs = measure(args, Path(tmp), plane)
            bound = lowest_bound(plane.metrics())
            failed = False
        finally:
            plane.stop()
            plane.keep_logs(failed)
            if failed:
                print(f"bench: logs kept in {plane.logs}")
    report(runs, args, bound)
    if args.plot:
        plot(runs, args.concurrency, args.plot)
        print(f"\nbench: wrote {args.plot}")
    print(f"bench: {time.monotonic() - began:.0f} s in all")


if __name__ == "__main__":
    main()
