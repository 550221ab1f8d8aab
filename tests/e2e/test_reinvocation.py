"""Reinvocation: a second mutating webhook (Kubernetes' own agnhost) adds a container after ours;
the apiserver calls ours again (reinvocationPolicy: IfNeeded) and the pod is not injected twice."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import STATUS, NewNamespace, Register, Webhook, pod_manifest
from tests.e2e.controlplane import ControlPlane, binary, start
from tests.e2e.kube import ApiException, Kube, wait_for
from tests.e2e.webhookconfig import INJECT
from tests.serverproc import free_port, generate_certs

pytestmark = pytest.mark.e2e
AGNHOST_CONFIG = "zz-agnhost-sidecar"  # sorts after ours: the apiserver calls it second


@pytest.fixture
def agnhost(kube: Kube, control_plane: ControlPlane, register: Register,
            tmp_path: Path) -> Iterator[None]:
    register("Fail")
    generate_certs(tmp_path / "certs", service="agnhost", namespace="default")
    port = free_port()
    process = start("agnhost", [
        str(binary("agnhost")), "webhook", f"--port={port}",
        f"--tls-cert-file={tmp_path / 'certs' / 'tls.crt'}",
        f"--tls-private-key-file={tmp_path / 'certs' / 'tls.key'}",
        "--sidecar-image=registry.k8s.io/pause:3.10",
    ], control_plane.logs)
    ca_bundle = base64.b64encode((tmp_path / "certs" / "ca.crt").read_bytes())
    kube.apply_mutating_webhook({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": AGNHOST_CONFIG},
        "webhooks": [{
            "name": "sidecar.agnhost.k8s.io", "admissionReviewVersions": ["v1"],
            "sideEffects": "None", "failurePolicy": "Fail", "reinvocationPolicy": "IfNeeded",
            "clientConfig": {"url": f"https://127.0.0.1:{port}/mutating-pods-sidecar",
                             "caBundle": ca_bundle.decode()},
            "namespaceSelector": {"matchLabels": {"e2e-agnhost": "on"}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["pods"]}],
        }],
    })
    try:
        yield
    finally:
        kube.delete_mutating_webhook(AGNHOST_CONFIG)
        process.stop()


def test_a_later_webhooks_change_does_not_double_inject(kube: Kube, namespace: NewNamespace,
                                                        agnhost: None, webhook: Webhook) -> None:
    ns = namespace()
    kube.core.patch_namespace(ns, {"metadata": {"labels": {"e2e-agnhost": "on"}}})

    def both_webhooks_ran() -> bool:
        try:
            pod, _ = kube.create_pod(ns, pod_manifest("probe", annotations={INJECT: "logging"}),
                                     dry_run=True)
        except ApiException:  # agnhost still starting: its failurePolicy is Fail
            return False
        names = [c["name"] for c in pod["spec"]["containers"]]
        return "webhook-added-sidecar" in names and STATUS in pod["metadata"]["annotations"]

    wait_for(both_webhooks_ran, 60, "agnhost's webhook to take effect")
    pod, _ = kube.create_pod(ns, pod_manifest("twice", annotations={INJECT: "logging"}))
    init = [c["name"] for c in pod["spec"]["initContainers"]]
    containers = [c["name"] for c in pod["spec"]["containers"]]
    assert containers == ["app", "webhook-added-sidecar"]
    assert init == json.loads(pod["metadata"]["annotations"][STATUS])["containers"]
    assert len(init) == len(set(init))
    calls = [json.loads(line) for line in webhook.log.read_text().splitlines()
             if '"twice"' in line and ns in line]
    assert [call["result"] for call in calls] == ["injected", "already-injected"]

