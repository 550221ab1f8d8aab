"""Through a real kube-apiserver: opt-in, selection, warnings, denials, native sidecars,
Deployments, reinvocation and failure policies (SPEC sections 2 and 6)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import (
    STATUS,
    NewNamespace,
    Register,
    Webhook,
    pod_manifest,
)
from tests.e2e.controlplane import K8S_VERSION, ROOT
from tests.e2e.kube import ApiException, Kube, wait_for
from tests.e2e.webhookconfig import INJECT

pytestmark = [pytest.mark.e2e, pytest.mark.engines("compiled", "hybrid")]


def status(pod: dict[str, Any]) -> dict[str, Any] | None:
    raw = (pod["metadata"].get("annotations") or {}).get(STATUS)
    return json.loads(raw) if raw else None


def names(items: list[dict[str, Any]] | None) -> list[str]:
    return [item["name"] for item in items or []]


@pytest.fixture(autouse=True)
def _registered(register: Register) -> None:
    register("Fail")


def test_a_pod_in_an_opted_in_namespace_comes_back_injected(kube: Kube,
                                                             namespace: NewNamespace) -> None:
    ns = namespace()
    pod, _ = kube.create_pod(ns, pod_manifest("web", annotations={INJECT: "logging"}))
    assert status(pod) is not None
    assert status(pod)["policies"] == ["logging"]  # type: ignore[index]
    injected = names(pod["spec"].get("initContainers")) + names(pod["spec"]["containers"])
    assert set(status(pod)["containers"]) <= set(injected)  # type: ignore[index]


def test_a_pod_in_a_plain_namespace_is_not_sent(kube: Kube, namespace: NewNamespace) -> None:
    ns = namespace(opted_in=False)
    pod, _ = kube.create_pod(ns, pod_manifest("web", annotations={INJECT: "logging"}))
    assert status(pod) is None
    assert names(pod["spec"]["containers"]) == ["app"]


def test_a_pod_label_opts_one_pod_in_from_a_plain_namespace(kube: Kube,
                                                             namespace: NewNamespace) -> None:
    ns = namespace(opted_in=False)
    pod, _ = kube.create_pod(ns, pod_manifest("web", labels={INJECT: "enabled"},
                                              annotations={INJECT: "logging"}))
    assert status(pod)["policies"] == ["logging"]  # type: ignore[index]


def test_an_opted_out_pod_label_is_never_sent_to_the_webhook(kube: Kube,
                                                              namespace: NewNamespace) -> None:
    pod, _ = kube.create_pod(namespace(), pod_manifest("web", labels={INJECT: "false"}))
    assert status(pod) is None


def test_kube_system_is_never_touched(kube: Kube) -> None:
    pod, _ = kube.create_pod("kube-system", pod_manifest(
        "untouched", labels={INJECT: "enabled"}, annotations={INJECT: "logging"}), dry_run=True)
    assert status(pod) is None


def test_namespace_annotation_defaults_apply(kube: Kube, namespace: NewNamespace) -> None:
    ns = namespace(annotations={"sidecar.company.com/policies": "metrics-exporter"})

    def injected_with_namespace_default() -> bool:
        pod, _ = kube.create_pod(ns, pod_manifest(generate_name="web-"), dry_run=True)
        return (status(pod) or {}).get("policies") == ["metrics-exporter"]

    wait_for(injected_with_namespace_default, 30, "the webhook to see the namespace annotation")


def test_a_namespace_default_taken_away_gives_way_to_the_global_default(
    kube: Kube, namespace: NewNamespace,
) -> None:
    ns = namespace(annotations={"sidecar.company.com/policies": "metrics-exporter"})

    def injected_with(policies: list[str]) -> bool:
        pod, _ = kube.create_pod(ns, pod_manifest(generate_name="web-"), dry_run=True)
        return (status(pod) or {}).get("policies") == policies

    wait_for(lambda: injected_with(["metrics-exporter"]), 30,
             "the webhook to see the namespace annotation")
    kube.core.patch_namespace(ns, {"metadata": {"annotations": {
        "sidecar.company.com/policies": None}}})
    wait_for(lambda: injected_with(["logging"]), 30,
             "the webhook to see the namespace annotation go")


def test_without_any_annotation_the_global_default_applies(kube: Kube,
                                                           namespace: NewNamespace) -> None:
    pod, _ = kube.create_pod(namespace(), pod_manifest("web"))
    assert status(pod)["policies"] == ["logging"]  # type: ignore[index]


def test_a_pod_annotation_list_is_applied_in_order(kube: Kube, namespace: NewNamespace) -> None:
    pod, _ = kube.create_pod(namespace(), pod_manifest(
        "web", annotations={INJECT: " metrics-exporter, logging ,metrics-exporter"}))
    assert status(pod)["policies"] == ["metrics-exporter", "logging"]  # type: ignore[index]


@pytest.mark.parametrize("named", ["name", "generateName"])
def test_an_unknown_policy_reaches_the_client_as_a_warning(kube: Kube, namespace: NewNamespace,
                                                           named: str) -> None:
    ns = namespace()
    body = (pod_manifest("web", annotations={INJECT: "no-such-policy"}) if named == "name"
            else pod_manifest(generate_name="web-", annotations={INJECT: "no-such-policy"}))
    pod, warnings = kube.create_pod(ns, body)
    assert status(pod) == {"policies": [], "skipped": "unknown-policy"}
    # a ReplicaSet's pod is named as the webhook saw it, before the apiserver named it
    shown = "web" if named == "name" else "web-*"
    assert warnings == [f"pod {ns}/{shown} was admitted without injection: unknown injection "
                        f"policy 'no-such-policy' (check the {INJECT} annotation)"]


def test_a_name_clash_is_denied_with_the_message(kube: Kube, namespace: NewNamespace) -> None:
    ns = namespace()
    clean, _ = kube.create_pod(ns, pod_manifest("probe", annotations={INJECT: "logging"}),
                               dry_run=True)
    taken = status(clean)["containers"][0]  # type: ignore[index]
    with pytest.raises(ApiException) as denied:
        kube.create_pod(ns, pod_manifest("web", annotations={INJECT: "logging"},
                                         containers=[{"name": taken, "image": "nginx:1.27"}]))
    assert denied.value.status == 403
    assert f"adds container '{taken}', which clashes with the pod's container" in str(
        denied.value.body)


def test_native_sidecars_are_accepted_by_the_apiserver(kube: Kube,
                                                       namespace: NewNamespace) -> None:
    pod, _ = kube.create_pod(namespace(), pod_manifest("web", annotations={INJECT: "logging"}))
    sidecars = [c for c in pod["spec"]["initContainers"] if c.get("restartPolicy") == "Always"]
    assert names(sidecars) == status(pod)["containers"]  # type: ignore[index]


def test_a_deployments_pods_are_injected_with_placeholders_resolved(
    kube: Kube, namespace: NewNamespace,
) -> None:
    ns = namespace()
    template = pod_manifest(annotations={INJECT: "logging"})
    template["metadata"]["labels"]["app"] = "shop"
    kube.create_deployment(ns, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "shop"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "shop"}},
                 "template": {"metadata": template["metadata"], "spec": template["spec"]}}})
    wait_for(lambda: len(kube.list_pods(ns, "app=shop")) == 2, 90,
             "the controller-manager to create the Deployment's pods")
    for pod in kube.list_pods(ns, "app=shop"):
        assert pod["metadata"]["generateName"].startswith("shop-")
        assert status(pod)["policies"] == ["logging"]  # type: ignore[index]
        text = json.dumps(pod["spec"])
        assert "${pod." not in text
        assert ns in text  # ${pod.namespace} resolved by the webhook


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_every_shipped_example_is_accepted_by_the_apiserver(kube: Kube, namespace: NewNamespace,
                                                            example: Path) -> None:
    manifest = yaml.safe_load(example.read_text())
    manifest["metadata"].pop("namespace", None)
    ns = namespace()
    kube.create_service_account(ns, manifest["spec"]["serviceAccountName"])
    pod, _ = kube.create_pod(ns, manifest)
    assert status(pod)["policies"] == [example.stem]  # type: ignore[index]


@pytest.mark.engines  # the webhook down: the compiled engines do not depend on it
def test_failure_policy_fail_blocks_opted_in_pods_only(kube: Kube, namespace: NewNamespace,
                                                       webhook: Webhook,
                                                       register: Register) -> None:
    opted_in, plain = namespace(), namespace(opted_in=False)
    webhook.stop()
    refusals: list[str] = []

    def blocked() -> bool:  # the apiserver applies configuration changes asynchronously
        try:
            kube.create_pod(opted_in, pod_manifest("web"), dry_run=True)
        except ApiException as exc:
            refusals.append(str(exc.body))
            return True
        return False

    try:
        wait_for(blocked, 30, "failurePolicy: Fail to block the pod")
        assert "namespace.sidecar-injector.sidecar.company.com" in refusals[-1]
        pod, _ = kube.create_pod(plain, pod_manifest("web"), dry_run=True)
        assert status(pod) is None
    finally:
        webhook.start()


@pytest.mark.engines  # the webhook down: the compiled engines do not depend on it
def test_failure_policy_ignore_admits_unchanged(kube: Kube, namespace: NewNamespace,
                                                webhook: Webhook, register: Register) -> None:
    ns = namespace()
    register("Ignore")
    webhook.stop()
    admitted: list[dict[str, Any]] = []

    def admits() -> bool:  # the apiserver applies configuration changes asynchronously
        try:
            admitted.append(kube.create_pod(ns, pod_manifest("web"), dry_run=True)[0])
        except ApiException:
            return False
        return True

    try:
        wait_for(admits, 30, "failurePolicy: Ignore to admit the pod")
        assert status(admitted[-1]) is None
        assert names(admitted[-1]["spec"]["containers"]) == ["app"]
    finally:
        webhook.start()
        register("Fail")


def test_the_webhook_learns_the_cluster_version_for_sidecar_mode_auto(webhook: Webhook) -> None:
    entries = [json.loads(line) for line in webhook.log.read_text().splitlines()
               if '"cluster version"' in line]
    assert entries, "the webhook never logged the cluster version"
    assert entries[-1]["version"] == ".".join(K8S_VERSION.lstrip("v").split(".")[:2])
