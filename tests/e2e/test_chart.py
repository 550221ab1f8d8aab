"""The Helm chart against the real apiserver: every rendered manifest is accepted (server-side
apply, dry-run), `helm install` with `webhook.url` injects pods and `helm uninstall` leaves
nothing, and the guard denies opted-in pods the webhook never saw."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.chart.helm import CHART, helm, render
from tests.chart.test_chart import COMBINATIONS, NOT_BUILT_IN
from tests.e2e.conftest import STATUS, NewNamespace, Webhook, pod_manifest
from tests.e2e.controlplane import ControlPlane
from tests.e2e.kube import ApiException, Kube, wait_for
from tests.e2e.webhookconfig import CONFIG_NAME, INJECT, RELEASE_NAMESPACE

pytestmark = pytest.mark.e2e
RELEASE = "helm-e2e"


@pytest.mark.parametrize("values", COMBINATIONS)
def test_every_rendered_manifest_is_accepted_by_the_apiserver(
    control_plane: ControlPlane, kube: Kube, values: dict[str, str],
) -> None:
    kube.ensure_namespace(RELEASE_NAMESPACE)
    objects = [o for o in render(values, namespace=RELEASE_NAMESPACE)
               if o["kind"] not in NOT_BUILT_IN]
    applied = subprocess.run(
        ["kubectl", "--kubeconfig", str(control_plane.kubeconfig), "apply", "--server-side",
         "--dry-run=server", "--field-manager=e2e", "-f", "-"],
        input=yaml.safe_dump_all(objects), capture_output=True, text=True, check=False)
    assert applied.returncode == 0, applied.stderr
    assert len(applied.stdout.strip().splitlines()) == len(objects)


def helm_in(plane: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    return helm(*args, "--kubeconfig", str(plane.kubeconfig), check=False)


@pytest.fixture
def release(control_plane: ControlPlane, kube: Kube, webhook: Webhook,
            ) -> Iterator[dict[str, str]]:
    """The chart installed with webhook.url at the local server, as the only webhook."""
    kube.delete_mutating_webhook(CONFIG_NAME)
    kube.ensure_namespace(RELEASE_NAMESPACE)
    webhook.start()
    values = {"webhook.url": webhook.mutate_url, "webhook.caBundle": webhook.ca_bundle,
              "guard.enabled": "true"}
    flags = [arg for k, v in values.items() for arg in ("--set", f"{k}={v}")]
    installed = helm_in(control_plane, "install", RELEASE, str(CHART),
                        "--namespace", RELEASE_NAMESPACE, *flags)
    assert installed.returncode == 0, installed.stderr
    try:
        yield values
    finally:
        helm_in(control_plane, "uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE)
        webhook.start()


def stamped(pod: dict[str, Any]) -> bool:
    return STATUS in (pod["metadata"].get("annotations") or {})


def test_helm_install_injects_and_uninstall_leaves_nothing(
    control_plane: ControlPlane, kube: Kube, namespace: NewNamespace,
    release: dict[str, str],
) -> None:
    ns = namespace()

    def injected() -> bool:
        pod, _ = kube.create_pod(ns, pod_manifest("probe", annotations={INJECT: "logging"}),
                                 dry_run=True)
        return stamped(pod)

    wait_for(injected, 60, "the chart's webhook configuration to take effect")
    pod, _ = kube.create_pod(ns, pod_manifest("web", annotations={INJECT: "logging"}))
    assert json.loads(pod["metadata"]["annotations"][STATUS])["policies"] == ["logging"]
    removed = helm_in(control_plane, "uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE)
    assert removed.returncode == 0, removed.stderr
    selector = f"app.kubernetes.io/instance={RELEASE}"
    leftovers = [
        *kube.admission.list_mutating_webhook_configuration(label_selector=selector).items,
        *kube.admission.list_validating_webhook_configuration(label_selector=selector).items,
        *kube.admission.list_validating_admission_policy(label_selector=selector).items,
        *kube.admission.list_validating_admission_policy_binding(label_selector=selector).items,
    ]
    assert leftovers == []


def test_the_guard_denies_opted_in_pods_the_webhook_never_saw(
    kube: Kube, namespace: NewNamespace, webhook: Webhook, release: dict[str, str],
) -> None:
    opted_in, plain = namespace(), namespace(opted_in=False)
    webhook.stop()

    last: list[str] = []

    def guard_denies() -> bool:
        try:
            kube.create_pod(opted_in, pod_manifest("probe"), dry_run=True)
        except ApiException as exc:
            last[:] = [str(exc.body)]
            return "sidecar injection did not happen" in str(exc.body)
        last[:] = ["admitted"]
        return False

    try:
        wait_for(guard_denies, 60, "the guard policy to take effect")
    except TimeoutError:
        pytest.fail(f"the guard did not deny; last answer: {last}")
    with pytest.raises(ApiException) as denied:
        kube.create_pod(opted_in, pod_manifest("web"))
    assert "the sidecar-injector webhook never saw it" in str(denied.value.body)
    assert "webhook may be" in str(denied.value.body)
    pod, _ = kube.create_pod(plain, pod_manifest("web"))
    assert not stamped(pod)
    opted_out, _ = kube.create_pod(opted_in, pod_manifest("batch", labels={INJECT: "false"}))
    assert not stamped(opted_out)

    webhook.start()
    wait_for(lambda: _admitted(kube, opted_in), 60, "the webhook to answer again")
    injected, _ = kube.create_pod(opted_in, pod_manifest("web-2"))
    assert stamped(injected)
    other, _ = kube.create_pod(plain, pod_manifest("web-2"))
    assert not stamped(other)


def _admitted(kube: Kube, namespace: str) -> bool:
    try:
        kube.create_pod(namespace, pod_manifest("probe"), dry_run=True)
    except ApiException:
        return False
    return True


IN_CLUSTER = "helm-incluster"


def test_generated_certificates_survive_an_upgrade_and_uninstall_removes_everything(
    control_plane: ControlPlane, kube: Kube,
) -> None:
    """The in-cluster install (Deployment, Service, RBAC, ConfigMap, Secret, PDB): its generated
    CA is kept by `helm upgrade`, replaced with certificates.rotate, and all of it goes with
    `helm uninstall`. (No kubelet runs here, so its pods stay Pending; the guard stays off so
    the release's unreachable webhook does not change other tests' pods.)"""
    namespace = kube.ensure_namespace("helm-incluster")
    args = [str(CHART), "--namespace", namespace, "--set", "guard.enabled=false"]
    installed = helm_in(control_plane, "install", IN_CLUSTER, *args)
    assert installed.returncode == 0, installed.stderr
    try:
        secret_name = f"{IN_CLUSTER}-sidecar-injector-tls"
        first = kube.core.read_namespaced_secret(secret_name, namespace).data["ca.crt"]
        upgraded = helm_in(control_plane, "upgrade", IN_CLUSTER, *args)
        assert upgraded.returncode == 0, upgraded.stderr
        assert kube.core.read_namespaced_secret(secret_name, namespace).data["ca.crt"] == first
        config = kube.admission.read_mutating_webhook_configuration(
            f"{IN_CLUSTER}-sidecar-injector")
        bundle = config.webhooks[0].client_config.ca_bundle
        assert bundle == first
        rotated = helm_in(control_plane, "upgrade", IN_CLUSTER, *args,
                          "--set", "certificates.rotate=true")
        assert rotated.returncode == 0, rotated.stderr
        assert kube.core.read_namespaced_secret(secret_name, namespace).data["ca.crt"] != first
    finally:
        removed = helm_in(control_plane, "uninstall", IN_CLUSTER, "--namespace", namespace,
                          "--wait")
    assert removed.returncode == 0, removed.stderr
    selector = f"app.kubernetes.io/instance={IN_CLUSTER}"
    leftovers = [
        *kube.apps.list_namespaced_deployment(namespace, label_selector=selector).items,
        *kube.core.list_namespaced_service(namespace, label_selector=selector).items,
        *kube.core.list_namespaced_config_map(namespace, label_selector=selector).items,
        *kube.core.list_namespaced_secret(namespace, label_selector=selector).items,
        *kube.core.list_namespaced_service_account(namespace, label_selector=selector).items,
        *kube.admission.list_mutating_webhook_configuration(label_selector=selector).items,
        *kube.admission.list_validating_webhook_configuration(label_selector=selector).items,
    ]
    assert [item.metadata.name for item in leftovers] == []
