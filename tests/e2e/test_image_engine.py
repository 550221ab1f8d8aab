"""The chart with `engine: admission-policy`, through the real apiserver: its pod, run from the
image with its own ServiceAccount token (so with the chart's RBAC, as in test_image.py), applies
the compiled policy set; a ConfigMap change reaches the cluster without a reinstall; and with the
Deployment scaled to zero, pods are still injected, by the apiserver alone. Before the first
sync, the guard refuses an opted-in pod and says why. With `engine: hybrid` the same pod also
serves the chart's webhook configuration, which gets only the pods the compiled policies did not
stamp. Below 1.36 the chart refuses both values and says which version it needs."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.chart.helm import CHART, helm, of_kind, render
from tests.e2e.conftest import STATUS, pod_manifest
from tests.e2e.controlplane import MINOR, ControlPlane
from tests.e2e.kube import ApiException, Kube, wait_for
from tests.e2e.kubelet import Kubelet
from tests.e2e.test_image import ChartPod, create_tls_secret, kubectl, wait_started
from tests.e2e.webhookconfig import (
    INJECT,
    policy_names,
    stored,
    wait_in_effect,
    wait_retired,
    without_the_suites_webhook,
)
from tests.serverproc import free_port
from webhook.compiled import MINIMUM_MINOR, object_names

pytestmark = pytest.mark.e2e
NAMESPACE = "engine-image-e2e"
RELEASE = "engine"
SERVED = "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy"


def attempt(kube: Kube, namespace: str) -> dict[str, Any] | str:
    """Create (dry run) a pod asking for `logging`: the stored pod, or the denial's message."""
    body = pod_manifest(f"engine-{uuid.uuid4().hex[:6]}", annotations={INJECT: "logging"})
    try:
        pod, _ = kube.create_pod(namespace, body, dry_run=True)
    except ApiException as exc:
        return str(json.loads(exc.body or "{}").get("message", ""))
    return pod


def agent_image(outcome: dict[str, Any] | str) -> str | None:
    """The logging agent's image in an injected pod; None if not injected."""
    if isinstance(outcome, str) or STATUS not in (outcome["metadata"].get("annotations") or {}):
        return None
    return next((c["image"] for c in outcome["spec"].get("initContainers", [])
                 if c["name"] == "logging-agent"), None)


@dataclass
class Engine:
    chart: ChartPod
    kubelet: Kubelet
    namespace: str  # opted in, for the pods the test creates
    release_namespace: str
    fullname: str
    #: after the installation is deleted: the compiled objects the garbage collector left
    left: dict[str, list[str]] | None = None


def webhook_decisions(chart: ChartPod) -> dict[str, float]:
    """The chart pod's `sidecar_injector_requests_total` by result: the pods it decided."""
    text = httpx.get(f"https://127.0.0.1:{chart.port}/metrics", verify=False, timeout=5).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sidecar_injector_requests_total":
                result = sample.labels["result"]
                counts[result] = counts.get(result, 0) + sample.value
    return counts


@contextmanager
def installed(plane: ControlPlane, kube: Kube, workdir: Path, engine: str,
              app_namespace: str) -> Iterator[Engine]:
    """The chart applied with `engine` (the guard on) as the only mutator, and the Deployment's
    pod run from the image once the guard has refused a pod. hybrid: the chart's webhook
    configuration as rendered, but for its clientConfig, which calls the container."""
    namespace, release = f"{NAMESPACE}-{engine}", engine
    fullname = f"{release}-sidecar-injector"
    kube.ensure_namespace(namespace)
    secret = f"{fullname}-pair"
    ca_bundle = create_tls_secret(kube, workdir / "certs", service=fullname,
                                  namespace=namespace, secret=secret)
    port = free_port()
    objects = render({"engine": engine, "certificates.mode": "secret",
                      "certificates.secretName": secret, "webhook.caBundle": ca_bundle,
                      "port": str(port), "replicaCount": "1", "guard.enabled": "true"},
                     namespace=namespace, release=release, extra=["--api-versions", SERVED])
    for config in of_kind(objects, "MutatingWebhookConfiguration"):
        assert engine == "hybrid"
        for hook in config["webhooks"]:
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}/mutate",
                                    "caBundle": ca_bundle}
    manifest = yaml.safe_dump_all([o for o in objects if o["kind"] != "Pod"])  # helm tests
    with without_the_suites_webhook(kube):
        applied = kubectl(plane, "apply", "--server-side", "--field-manager=e2e", "-f", "-",
                          stdin=manifest)
        assert applied.returncode == 0, applied.stderr
        container, installation = None, None
        try:
            app = kube.ensure_namespace(app_namespace, labels={INJECT: "enabled"})
            if engine == "admission-policy":
                # before the first sync, the guard refuses an opted-in pod, and says why
                wait_for(lambda: "compiled admission policy did not inject it" in str(
                    attempt(kube, app)), 60, "the guard to take effect")
            selector = f"app.kubernetes.io/instance={release}"
            wait_for(lambda: bool(kube.list_pods(namespace, selector)), 60,
                     "the Deployment's pod (deployment and replicaset controllers)")
            (pod,) = kube.list_pods(namespace, selector)
            kubelet = Kubelet(kube, workdir / "volumes", apiserver_port=plane.apiserver_port,
                              ca_pem=(plane.workdir / "pki" / "ca.crt").read_bytes())
            container = kubelet.run(pod, "webhook")
            installation = Engine(ChartPod(pod, container, port, ca_bundle), kubelet, app,
                                  namespace, fullname)
            yield installation
        finally:
            if container is not None:
                (plane.logs / f"engine-image-{engine}.log").write_text(container.logs())
                container.remove()
            kubectl(plane, "delete", "--wait=false", "--ignore-not-found", "-f", "-",
                    stdin=manifest)  # what `helm uninstall` deletes
            if installation is not None:  # their owner, the ClusterRole, is gone: so are they
                with suppress(TimeoutError):
                    wait_for(lambda: not stored(kube, fullname), 60,
                             "the garbage collector to delete the compiled objects")
                installation.left = stored(kube, fullname)
            for kind, names in reversed(object_names(fullname).items()):
                kubectl(plane, "delete", "--ignore-not-found",
                        f"{kind.lower()}.admissionregistration.k8s.io", *names)
            wait_retired(plane, kube, policy_names(fullname))


def log_lines(chart: ChartPod) -> list[dict[str, Any]]:
    """The container's JSON log lines."""
    return [json.loads(line) for line in chart.container.logs().splitlines() if line.strip()]


def assert_synced_quietly(chart: ChartPod, times: int) -> None:
    """No log line above info (a verb the chart's RBAC lacks would show here: the sync logs an
    error and retries), and at least `times` syncs that changed something."""
    lines = log_lines(chart)
    troubles = [line for line in lines if line["level"] not in ("debug", "info")]
    assert not troubles, "\n".join(map(json.dumps, troubles))
    assert [line["message"] for line in lines].count("admission policies synced") >= times


if MINOR >= MINIMUM_MINOR:

    # one installation at a time (each test's own): both would bind every opted-in namespace
    def test_the_charts_pod_applies_the_compiled_policies_and_pods_need_no_webhook(
        control_plane: ControlPlane, kube: Kube, tmp_path: Path,
    ) -> None:
        with installed(control_plane, kube, tmp_path, "admission-policy",
                       "engine-image-app") as engine:
            check_admission_policy(engine, kube)
        assert engine.left == {}  # uninstalled: nothing of the release goes on injecting

    def test_hybrid_the_policies_inject_and_the_webhook_gets_only_the_pods_they_leave(
        control_plane: ControlPlane, kube: Kube, tmp_path: Path,
    ) -> None:
        with installed(control_plane, kube, tmp_path, "hybrid", "hybrid-image-app") as hybrid:
            check_hybrid(control_plane, hybrid, kube)
        assert hybrid.left == {}

    def check_admission_policy(engine: Engine, kube: Kube) -> None:
        chart = engine.chart
        wait_started(chart)  # ready only once the first sync succeeded, with the chart's RBAC
        wait_for(lambda: agent_image(attempt(kube, engine.namespace)) == "fluent/fluent-bit:3.2.4",
                 60, "the apiserver to inject with the compiled policies")

        # a policy change in the ConfigMap reaches the cluster without a reinstall
        name = f"{engine.fullname}-policies"
        config_map = kube.plain(kube.core.read_namespaced_config_map(name,
                                                                     engine.release_namespace))
        (key,) = [k for k in config_map["data"] if k.startswith("logging.")]
        changed = config_map["data"][key].replace("fluent/fluent-bit:3.2.4",
                                                  "fluent/fluent-bit:3.2.5")
        assert changed != config_map["data"][key]
        kube.core.patch_namespaced_config_map(name, engine.release_namespace,
                                              {"data": {key: changed}})
        engine.kubelet.refresh(chart.pod, "policies")
        wait_for(lambda: agent_image(attempt(kube, engine.namespace)) == "fluent/fluent-bit:3.2.5",
                 60, "the changed policy to be compiled, applied and loaded")

        # the Deployment scaled to zero: nothing of ours runs, and pods are still injected
        kube.apps.patch_namespaced_deployment_scale(engine.fullname, engine.release_namespace,
                                                    {"spec": {"replicas": 0}})
        code, _ = chart.container.stop()
        assert code == 0, chart.container.logs()
        created, _ = kube.create_pod(engine.namespace, pod_manifest(
            "engine-injected", annotations={INJECT: "logging,metrics-exporter"}))
        status = json.loads(created["metadata"]["annotations"][STATUS])
        assert status["policies"] == ["logging", "metrics-exporter"]
        names = [c["name"] for c in [*created["spec"].get("initContainers", []),
                                     *created["spec"]["containers"]]]
        assert {"logging-agent", "metrics-exporter", "app"} <= set(names)

        assert_synced_quietly(chart, 2)

    def check_hybrid(plane: ControlPlane, hybrid: Engine, kube: Kube) -> None:
        chart = hybrid.chart
        wait_started(chart)  # hybrid: ready while the webhook serves, synced or not
        wait_for(lambda: httpx.get(f"https://127.0.0.1:{chart.port}/readyz", verify=False,
                                   timeout=5).json()["admissionPolicies"] == "synced",
                 60, "the first sync")
        wait_in_effect(plane, kube, [hybrid.fullname])  # applied is not yet loaded
        annotations = {INJECT: "logging"}
        before = webhook_decisions(chart).get("injected", 0)  # (the probes' too)
        compiled, _ = kube.create_pod(hybrid.namespace, pod_manifest(
            "hybrid-compiled", annotations=annotations))
        assert agent_image(compiled) == "fluent/fluent-bit:3.2.4"
        assert webhook_decisions(chart).get("injected", 0) == before  # the match condition held

        # pod-level resources over 8Ti: what the compiled policy leaves to the webhook
        left = pod_manifest("hybrid-left", annotations=annotations)
        left["spec"]["resources"] = {"limits": {"cpu": "1", "memory": "9Ti"}}
        by_webhook, _ = kube.create_pod(hybrid.namespace, left)
        assert agent_image(by_webhook) == "fluent/fluent-bit:3.2.4"
        assert json.loads(by_webhook["metadata"]["annotations"][STATUS])["policies"] == [
            "logging"]
        assert webhook_decisions(chart).get("injected", 0) == before + 1
        assert_synced_quietly(chart, 1)

else:

    def test_the_chart_refuses_engine_admission_policy_and_says_what_it_needs(
        control_plane: ControlPlane,
    ) -> None:
        for engine in ("admission-policy", "hybrid"):
            result = helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE,
                          "--create-namespace", "--set", f"engine={engine}", "--kubeconfig",
                          str(control_plane.kubeconfig), check=False)
            assert result.returncode != 0
            assert (f"engine: {engine} needs Kubernetes 1.36 or newer (MutatingAdmissionPolicy "
                    f"in admissionregistration.k8s.io/v1), and this cluster (Kubernetes "
                    f"v1.{MINOR}.") in result.stderr, result.stderr
            listed = helm("list", "--namespace", NAMESPACE, "--kubeconfig",
                          str(control_plane.kubeconfig), "-q")
            assert listed.stdout.strip() == ""
