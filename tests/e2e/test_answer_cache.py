"""The cache of answers through the real apiserver: the pods of one ReplicaSet reach the webhook
equal but for the review's uid (the apiserver names them after admission), so one is rendered
and the others are answered from the cache, and every replica is injected all the same."""

from __future__ import annotations

import re

import pytest

from tests.e2e.conftest import STATUS, NewNamespace, Register, Webhook, pod_manifest
from tests.e2e.kube import Kube, wait_for

pytestmark = pytest.mark.e2e
INJECT = "sidecar.company.com/inject"
REPLICAS = 4


def lookups(webhook: Webhook) -> dict[str, float]:
    with webhook.client() as client:
        text = client.get(webhook.url("/metrics")).text
    found = re.findall(r'^sidecar_injector_answer_cache_lookups_total\{result="(\w+)"\} (\S+)$',
                       text, re.MULTILINE)
    return {result: float(value) for result, value in found}


def test_the_replicas_of_a_deployment_are_rendered_once(kube: Kube, namespace: NewNamespace,
                                                        webhook: Webhook,
                                                        register: Register) -> None:
    register("Fail")  # a pod the webhook did not answer is not created
    # a namespace context the webhook's Namespace watch has seen: until then the first replicas
    # are answered for an unknown namespace, a context of their own (a second render)
    ns = namespace(annotations={"sidecar.company.com/policies": "metrics-exporter"})
    wait_for(lambda: _defaults_seen(kube, ns), 30, "the webhook to learn the namespace")
    template = pod_manifest(annotations={INJECT: "logging,metrics-exporter"})
    template["metadata"]["labels"]["app"] = "cached"
    before = lookups(webhook)
    kube.create_deployment(ns, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "cached"},
        "spec": {"replicas": REPLICAS, "selector": {"matchLabels": {"app": "cached"}},
                 "template": {"metadata": template["metadata"], "spec": template["spec"]}}})
    wait_for(lambda: len(kube.list_pods(ns, "app=cached")) == REPLICAS, 90,
             "the controller-manager to create the Deployment's pods")
    pods = kube.list_pods(ns, "app=cached")
    assert len({pod["metadata"]["name"] for pod in pods}) == REPLICAS
    stamps = {pod["metadata"]["annotations"][STATUS] for pod in pods}
    assert len(stamps) == 1  # every replica got the same injection
    assert '"policies":["logging","metrics-exporter"]' in stamps.pop()
    specs = {repr(sorted(c["name"] for c in pod["spec"]["initContainers"])) for pod in pods}
    assert specs == {repr(sorted(["logging-agent", "metrics-exporter"]))}
    after = lookups(webhook)
    assert after.get("miss", 0) - before.get("miss", 0) == 1
    assert after.get("hit", 0) - before.get("hit", 0) == REPLICAS - 1


def _defaults_seen(kube: Kube, namespace: str) -> bool:
    """Whether a pod naming no policy gets the namespace's default (not the global one)."""
    pod, _ = kube.create_pod(namespace, pod_manifest(generate_name="probe-"), dry_run=True)
    return '"policies":["metrics-exporter"]' in pod["metadata"]["annotations"][STATUS]
