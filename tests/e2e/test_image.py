"""The built image, run as the chart's pod through the real apiserver.

The chart is rendered and applied (all but its webhook configuration and guard); the
Deployment's pod, as the apiserver stores it, is then run from the image with podman the way a
kubelet would run it (tests/e2e/kubelet.py): the chart's args and env, its securityContext, the
policies ConfigMap and TLS Secret as `..data` volume directories, a service-account token from the
TokenRequest API for the chart's ServiceAccount. The server's Namespace watch therefore works only
if the chart's RBAC allows it. The apiserver then calls the container (the chart's webhook
configuration in `webhook.url` form) and a pod is injected with its namespace's default policies.

The chart's `secret` certificate mode is used, with a pair from `sidecar-injector certs generate`:
the apiserver calls the container at 127.0.0.1, a name the generate mode's certificate (made for
the Service's DNS names) does not cover.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.chart.helm import render
from tests.e2e.conftest import STATUS, pod_manifest
from tests.e2e.controlplane import ROOT, ControlPlane
from tests.e2e.kube import ApiException, Kube, wait_for
from tests.e2e.kubelet import Container, Kubelet, podman
from tests.e2e.webhookconfig import INJECT, instead_of_the_suites_webhook, webhook_configuration
from tests.serverproc import free_port, generate_certs

pytestmark = pytest.mark.e2e
NAMESPACE = "image-e2e"
RELEASE = "image"
FULLNAME = f"{RELEASE}-sidecar-injector"
TLS_SECRET = f"{FULLNAME}-pair"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
NOT_APPLIED = {"MutatingWebhookConfiguration", "ValidatingAdmissionPolicy",
               "ValidatingAdmissionPolicyBinding", "Pod"}  # the apiserver calls the container by
# URL instead of the in-cluster Service; the guard has its own tests; Pods are `helm test` hooks


@dataclass
class ChartPod:
    pod: dict[str, Any]
    container: Container
    port: int
    ca_bundle: str


def kubectl(plane: ControlPlane, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kubectl", "--kubeconfig", str(plane.kubeconfig), *args],
                          input=stdin, capture_output=True, text=True, check=False)


def create_tls_secret(kube: Kube, directory: Path, *, service: str = FULLNAME,
                      namespace: str = NAMESPACE, secret: str = TLS_SECRET) -> str:
    """A kubernetes.io/tls Secret from `certs generate`; the base64 CA bundle."""
    generate_certs(directory, service=service, namespace=namespace)
    data = {name: base64.b64encode((directory / name).read_bytes()).decode()
            for name in ("tls.crt", "tls.key", "ca.crt")}
    kube.core.create_namespaced_secret(namespace, {
        "metadata": {"name": secret}, "type": "kubernetes.io/tls", "data": data})
    return data["ca.crt"]


@pytest.fixture(scope="module")
def chart_pod(control_plane: ControlPlane, kube: Kube,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChartPod]:
    workdir = tmp_path_factory.mktemp("kubelet")
    kube.ensure_namespace(NAMESPACE)
    ca_bundle = create_tls_secret(kube, workdir / "certs")
    port = free_port()
    objects = render({"certificates.mode": "secret", "certificates.secretName": TLS_SECRET,
                      "webhook.caBundle": ca_bundle, "port": str(port), "replicaCount": "1",
                      "guard.enabled": "false"}, namespace=NAMESPACE, release=RELEASE)
    manifest = yaml.safe_dump_all([o for o in objects if o["kind"] not in NOT_APPLIED])
    applied = kubectl(control_plane, "apply", "--server-side", "--field-manager=e2e", "-f", "-",
                      stdin=manifest)
    assert applied.returncode == 0, applied.stderr
    selector = f"app.kubernetes.io/instance={RELEASE}"
    wait_for(lambda: bool(kube.list_pods(NAMESPACE, selector)), 60,
             "the Deployment's pod (deployment and replicaset controllers)")
    (pod,) = kube.list_pods(NAMESPACE, selector)
    (spec_container,) = pod["spec"]["containers"]
    assert spec_container["image"] == f"ghcr.io/company/sidecar-injector:{VERSION}", (
        "the chart's default image is not the one `make image-local` builds")
    ca_pem = (control_plane.workdir / "pki" / "ca.crt").read_bytes()
    kubelet = Kubelet(kube, workdir / "volumes", apiserver_port=control_plane.apiserver_port,
                      ca_pem=ca_pem)
    container = kubelet.run(pod, "webhook")
    try:
        yield ChartPod(pod, container, port, ca_bundle)
    finally:
        logs = container.logs()
        (control_plane.logs / "image-webhook.log").write_text(logs)
        container.remove()
        kubectl(control_plane, "delete", "--wait=false", "--ignore-not-found", "-f", "-",
                stdin=manifest)


def probe(port: int, probe_spec: dict[str, Any]) -> int:
    """One kubelet HTTPS probe: the status code (the kubelet does not verify the certificate)."""
    get = probe_spec["httpGet"]
    assert get["scheme"] == "HTTPS"
    try:
        response = httpx.get(f"https://127.0.0.1:{port}{get['path']}", verify=False,
                             timeout=probe_spec.get("timeoutSeconds", 1))
    except httpx.HTTPError:
        return 0
    return response.status_code


def wait_started(chart: ChartPod) -> float:
    """The startup probe, as the kubelet runs it; seconds until it passed."""
    (spec,) = chart.pod["spec"]["containers"]
    startup = spec["startupProbe"]
    started = time.monotonic()
    for _ in range(startup["failureThreshold"]):
        if probe(chart.port, startup) == 200:
            return time.monotonic() - started
        assert chart.container.running(), f"the container exited:\n{chart.container.logs()}"
        time.sleep(startup["periodSeconds"])
    raise AssertionError(f"startup probe failed {startup['failureThreshold']} times:\n"
                         f"{chart.container.logs()}")


def test_the_image_runs_as_the_charts_pod_injects_and_stops_cleanly(
    chart_pod: ChartPod, kube: Kube,
) -> None:
    chart = chart_pod
    seconds = wait_started(chart)
    (spec,) = chart.pod["spec"]["containers"]
    assert probe(chart.port, spec["readinessProbe"]) == 200
    assert probe(chart.port, spec["livenessProbe"]) == 200
    print(f"startup probe passed after {seconds:.1f}s")

    # the chart's user, a read-only root, and a writable /tmp only because the chart mounts one
    checks = podman("exec", chart.container.name, "python3", "-c", (
        "import os\n"
        "print(os.getuid(), os.getgid())\n"
        "open('/tmp/probe', 'w').close()\n"
        "for path in ('/probe', '/opt/sidecar-injector/probe', '/var/tmp/probe'):\n"
        "    try:\n"
        "        open(path, 'w')\n"
        "    except OSError:\n"
        "        continue\n"
        "    raise SystemExit(f'{path} is writable')\n"), check=False)
    assert checks.returncode == 0, checks.stdout + checks.stderr
    assert checks.stdout.split() == ["65532", "65532"]

    config = webhook_configuration(url=f"https://127.0.0.1:{chart.port}/mutate",
                                   ca_bundle=chart.ca_bundle, failure_policy="Fail",
                                   release=RELEASE, namespace=NAMESPACE)
    with instead_of_the_suites_webhook(kube, config):
        namespace = kube.ensure_namespace(
            "image-e2e-app", labels={INJECT: "enabled"},
            annotations={"sidecar.company.com/policies": "logging,metrics-exporter"})
        # the namespace annotation reaches the server through its Namespace watch, which the
        # chart's RBAC and the projected token must allow
        wait_for(lambda: _applied(kube, namespace) == ["logging", "metrics-exporter"], 60,
                 "the containerised webhook to inject the namespace's default policies")
        stored, _ = kube.create_pod(namespace, pod_manifest("image-injected"))
    status = json.loads(stored["metadata"]["annotations"][STATUS])
    assert status["policies"] == ["logging", "metrics-exporter"]
    names = [c["name"] for c in [*stored["spec"].get("initContainers", []),
                                 *stored["spec"]["containers"]]]
    assert {"logging-agent", "metrics-exporter"} <= set(names)

    assert chart.container.pre_stop_sleep == 5  # the chart's shutdownDelaySeconds, on 1.30+
    code, took = chart.container.stop()
    grace = chart.pod["spec"]["terminationGracePeriodSeconds"]
    print(f"preStop sleep {chart.container.pre_stop_sleep}s, then SIGTERM: exit {code} after "
          f"{took:.1f}s in all (grace period {grace}s)")
    assert code == 0, chart.container.logs()
    assert took < chart.container.pre_stop_sleep + 5, f"took {took:.1f}s of {grace}s"
    lines = [json.loads(line) for line in chart.container.logs().splitlines() if line.strip()]
    assert lines[-1]["message"] == "stopped"
    # a verb the chart's RBAC lacks shows here (the watch retries, and falls back to re-listing)
    troubles = [line for line in lines if line["level"] not in ("debug", "info")]
    assert not troubles, "\n".join(map(json.dumps, troubles))
    assert any(line["message"] == "watching namespaces" for line in lines)


def _applied(kube: Kube, namespace: str) -> list[str] | None:
    try:
        created, _ = kube.create_pod(namespace, pod_manifest("image-probe"), dry_run=True)
    except ApiException:
        return None
    stamp = (created["metadata"].get("annotations") or {}).get(STATUS)
    return json.loads(stamp)["policies"] if stamp else None
