"""Events on pods' owners, through the real kube-apiserver and controller-manager: when a
Deployment's pods ask for an unknown policy, the webhook records one aggregated `InjectionSkipped`
Event on their ReplicaSet (what `kubectl describe replicaset` shows); and with the Events API
refused by RBAC, every admission still succeeds, pods are still injected or stamped, and the
refused Events are counted in `sidecar_injector_events_dropped_total`."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.e2e.conftest import POLICIES, STATUS, NewNamespace, Register, pod_manifest
from tests.e2e.controlplane import ControlPlane
from tests.e2e.kube import ApiException, Kube, wait_for
from tests.e2e.webhookconfig import INJECT, instead_of_the_suites_webhook, webhook_configuration
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.e2e


def deployment(name: str, *, replicas: int, policies: str) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {
                         "metadata": {"labels": {"app": name}, "annotations": {INJECT: policies}},
                         "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}}}}


def replica_set(kube: Kube, namespace: str, app: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def created() -> bool:
        items = kube.apps.list_namespaced_replica_set(namespace, label_selector=f"app={app}").items
        found[:] = [kube.plain(item) for item in items]
        return len(found) == 1

    wait_for(created, 90, f"the deployment controller to create the ReplicaSet of {app}")
    return found[0]


def events_on(kube: Kube, namespace: str, uid: str) -> list[dict[str, Any]]:
    """The webhook's Events on the object `uid` (not the controllers' own)."""
    listed = kube.core.list_namespaced_event(namespace,
                                             field_selector=f"involvedObject.uid={uid}")
    return [event for event in map(kube.plain, listed.items)
            if (event.get("source") or {}).get("component") == "sidecar-injector"]


def skipped(pod: dict[str, Any]) -> str | None:
    stamp = json.loads((pod["metadata"].get("annotations") or {}).get(STATUS, "{}"))
    return stamp.get("skipped") if stamp else None


def test_an_event_appears_on_the_replicaset_when_its_pods_ask_for_an_unknown_policy(
    control_plane: ControlPlane, kube: Kube, namespace: NewNamespace, register: Register,
) -> None:
    register("Fail")
    ns = namespace()
    kube.create_deployment(ns, deployment("web", replicas=3, policies="nope"))
    owner = replica_set(kube, ns, "web")
    wait_for(lambda: len(kube.list_pods(ns, "app=web")) == 3, 90,
             "the replicaset controller to create the pods")
    assert {skipped(pod) for pod in kube.list_pods(ns, "app=web")} == {"unknown-policy"}
    uid = owner["metadata"]["uid"]
    wait_for(lambda: bool(events_on(kube, ns, uid)), 60, "an Event on the ReplicaSet")
    (event,) = events_on(kube, ns, uid)  # one Event for the owner and reason: aggregated
    assert event["involvedObject"] == {
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": owner["metadata"]["name"],
        "namespace": ns, "uid": uid}
    assert (event["reason"], event["type"]) == ("InjectionSkipped", "Warning")
    assert event["count"] >= 1
    assert "unknown injection policy 'nope'" in event["message"]
    assert event["source"] == {"component": "sidecar-injector"}
    described = subprocess.run(
        ["kubectl", "--kubeconfig", str(control_plane.kubeconfig), "describe", "replicaset",
         "-n", ns, owner["metadata"]["name"]], capture_output=True, text=True, check=False)
    assert described.returncode == 0, described.stderr
    assert re.search(r"Warning\s+InjectionSkipped\s+.*sidecar-injector", described.stdout), (
        described.stdout)


# ---------------------------------------------------------------------------------------------
# the Events API refused


REFUSED = "events-refused"


@pytest.fixture(scope="module")
def refused_identity(control_plane: ControlPlane, kube: Kube,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A kubeconfig for a ServiceAccount that may watch Namespaces and nothing else (no
    Events), with a token from the TokenRequest API."""
    namespace = kube.ensure_namespace(REFUSED)
    kube.create_service_account(namespace, "webhook")
    rbac: Any = client.RbacAuthorizationV1Api(kube.api)
    name = f"e2e-{REFUSED}"
    rbac.create_cluster_role({"metadata": {"name": name}, "rules": [
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]}]})
    rbac.create_cluster_role_binding({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": "webhook", "namespace": namespace}]})
    token = kube.core.create_namespaced_service_account_token(
        "webhook", namespace, {"spec": {"expirationSeconds": 3600}}).status.token
    path = tmp_path_factory.mktemp("refused") / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "webhook",
        "clusters": [{"name": "e2e", "cluster": {
            "server": control_plane.url,
            "certificate-authority": str(control_plane.workdir / "pki" / "ca.crt")}}],
        "users": [{"name": "webhook", "user": {"token": token}}],
        "contexts": [{"name": "webhook", "context": {"cluster": "e2e", "user": "webhook"}}]}))
    try:
        yield path
    finally:
        rbac.delete_cluster_role_binding(name)
        rbac.delete_cluster_role(name)


@pytest.fixture(scope="module")
def refused_webhook(control_plane: ControlPlane, kube: Kube, refused_identity: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A webhook with that identity, registered (failurePolicy Fail) as the only one."""
    workdir = tmp_path_factory.mktemp("refused-webhook")
    server = ServerProcess(workdir, policies=POLICIES, log=control_plane.logs / "refused.log",
                           args=["--kubeconfig", str(refused_identity)],
                           env={"POD_NAMESPACE": REFUSED})
    server.start()
    config = webhook_configuration(url=server.url("/mutate"), ca_bundle=server.ca_bundle,
                                   failure_policy="Fail", release="refused")
    try:
        with server.client() as http:
            wait_for(lambda: http.get(server.url("/readyz")).json()["namespaceDefaults"]
                     == "connected", 60, "the webhook's Namespace watch to connect")
        with instead_of_the_suites_webhook(kube, config):
            yield server
    finally:
        server.stop()


def dropped(server: ServerProcess, reason: str) -> float:
    with server.client() as http:
        text = http.get(server.url("/metrics")).text
    found = re.search(rf'^sidecar_injector_events_dropped_total\{{reason="{reason}"\}} (\S+)$',
                      text, re.MULTILINE)
    assert found, text
    return float(found[1])


def test_with_events_refused_admissions_succeed_and_the_drops_are_counted(
    kube: Kube, namespace: NewNamespace, refused_webhook: ServerProcess,
) -> None:
    ns = namespace()
    app = f"web-{uuid.uuid4().hex[:4]}"

    def served() -> bool:  # this module's webhook answers (the registration took effect)
        pod, _ = kube.create_pod(ns, pod_manifest(f"probe-{uuid.uuid4().hex[:6]}",
                                                  annotations={INJECT: "logging"}), dry_run=True)
        return STATUS in (pod["metadata"].get("annotations") or {})

    wait_for(served, 60, "the refused webhook to be called")
    assert dropped(refused_webhook, "forbidden") == 0
    kube.create_deployment(ns, deployment(app, replicas=3, policies="nope"))
    owner = replica_set(kube, ns, app)
    wait_for(lambda: len(kube.list_pods(ns, f"app={app}")) == 3, 90,
             "the replicaset controller to create the pods")
    assert {skipped(pod) for pod in kube.list_pods(ns, f"app={app}")} == {"unknown-policy"}
    try:
        injected, _ = kube.create_pod(ns, pod_manifest("web", annotations={INJECT: "logging"}))
    except ApiException as exc:
        raise AssertionError(f"{exc.status}: {exc.body}") from None
    assert json.loads(injected["metadata"]["annotations"][STATUS])["policies"] == ["logging"]

    wait_for(lambda: dropped(refused_webhook, "forbidden") >= 3, 60,
             "the three refused Events to be counted")
    assert dropped(refused_webhook, "forbidden") == 3
    assert dropped(refused_webhook, "queue-full") == 0
    assert events_on(kube, ns, owner["metadata"]["uid"]) == []
    log = refused_webhook.log.read_text(errors="replace")
    failures = [line for line in log.splitlines() if "cannot record an Event" in line]
    assert len(failures) == 1, failures  # logged once per interval, not once per pod
    assert "403" in failures[0]


def test_with_no_events_the_webhook_records_none(
    control_plane: ControlPlane, kube: Kube, namespace: NewNamespace,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """`--no-events` (the chart's `events.enabled=false`), with full cluster access: pods are
    still stamped, and their ReplicaSet gets no Event, not even a dropped one."""
    server = ServerProcess(tmp_path_factory.mktemp("no-events"), policies=POLICIES,
                           log=control_plane.logs / "no-events.log",
                           args=["--kubeconfig", str(control_plane.kubeconfig), "--no-events"],
                           env={"POD_NAMESPACE": "no-events"})
    server.start()
    config = webhook_configuration(url=server.url("/mutate"), ca_bundle=server.ca_bundle,
                                   failure_policy="Fail", release="no-events")
    ns = namespace()
    app = f"web-{uuid.uuid4().hex[:4]}"
    try:
        with instead_of_the_suites_webhook(kube, config):
            wait_for(lambda: skipped(kube.create_pod(ns, pod_manifest(
                f"probe-{uuid.uuid4().hex[:6]}", annotations={INJECT: "nope"}),
                dry_run=True)[0]) == "unknown-policy", 60, "the no-events webhook to be called")
            kube.create_deployment(ns, deployment(app, replicas=2, policies="nope"))
            owner = replica_set(kube, ns, app)
            wait_for(lambda: len(kube.list_pods(ns, f"app={app}")) == 2, 90,
                     "the replicaset controller to create the pods")
            assert {skipped(pod) for pod in kube.list_pods(ns, f"app={app}")} == {
                "unknown-policy"}
            time.sleep(2)  # with Events on, the first one is sent within milliseconds
            assert events_on(kube, ns, owner["metadata"]["uid"]) == []
            for reason in ("queue-full", "forbidden", "api-error"):
                assert dropped(server, reason) == 0
    finally:
        server.stop()
