"""Warnings on workloads at apply time, through the real kube-apiserver and the chart's
ValidatingWebhookConfiguration: `kubectl apply` of a Deployment whose P/inject annotation is on
the Deployment instead of its pod template prints the webhook's warning, the Deployment is stored
exactly as sent (never mutated, never denied), and a template that asks for an unknown policy is
warned about, also in a plain namespace when its pod template carries the opt-in label."""

from __future__ import annotations

import subprocess
import uuid
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import STATUS, NewNamespace, Register
from tests.e2e.controlplane import ControlPlane
from tests.e2e.kube import Kube, wait_for
from tests.e2e.webhookconfig import INJECT

pytestmark = pytest.mark.e2e
MISPLACED = "is on the workload's own metadata, where the webhook does not read it"


@pytest.fixture(autouse=True)
def _registered(register: Register) -> None:
    register("Fail")


def deployment(name: str, *, own: dict[str, str] | None = None,
               template: dict[str, str] | None = None,
               template_labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "annotations": own or {}},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}}, "template": {
                "metadata": {"labels": {"app": name, **(template_labels or {})},
                             "annotations": template or {}},
                "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}}}}


def warned(kube: Kube, namespace: str, body: dict[str, Any], text: str) -> list[str]:
    """The warnings of a dry-run create of `body`, once one of them contains `text` (the
    apiserver may take a moment to call a webhook configuration it was just given)."""
    found: list[str] = []

    def seen() -> bool:
        probe = {**body, "metadata": {**body["metadata"], "name": f"probe-{uuid.uuid4().hex[:6]}"}}
        found[:] = kube.create_deployment(namespace, probe, dry_run=True)
        return any(text in w for w in found)

    wait_for(seen, 60, f"a warning containing {text!r}")
    return found


def test_kubectl_apply_of_a_deployment_annotated_in_the_wrong_place_prints_the_warning(
    control_plane: ControlPlane, kube: Kube, namespace: NewNamespace,
) -> None:
    ns = namespace()
    body = deployment("web", own={INJECT: "logging"})
    warned(kube, ns, body, MISPLACED)
    applied = subprocess.run(
        ["kubectl", "--kubeconfig", str(control_plane.kubeconfig), "apply", "-n", ns, "-f", "-"],
        input=yaml.safe_dump(body), capture_output=True, text=True, check=False)
    assert applied.returncode == 0, applied.stderr
    assert f"Warning: Deployment {ns}/web: annotation {INJECT}='logging' {MISPLACED}" in (
        applied.stderr)
    assert "move the annotation to spec.template.metadata.annotations" in applied.stderr
    stored = kube.plain(kube.apps.read_namespaced_deployment("web", ns))
    template = stored["spec"]["template"]["metadata"]
    assert template.get("annotations") in (None, {})  # never mutated
    assert STATUS not in (stored["metadata"].get("annotations") or {})


def test_the_same_warning_comes_with_an_api_create_and_the_deployment_is_created(
    kube: Kube, namespace: NewNamespace,
) -> None:
    ns = namespace()
    body = deployment("shop", own={INJECT: "logging"})
    warned(kube, ns, body, MISPLACED)
    warnings = kube.create_deployment(ns, body)
    (warning,) = [w for w in warnings if MISPLACED in w]
    assert warning.startswith(f"Deployment {ns}/shop: annotation {INJECT}='logging'")
    assert kube.exists(lambda: kube.apps.read_namespaced_deployment("shop", ns))


def test_an_unknown_policy_in_the_pod_template_is_warned_about_in_an_opted_in_namespace(
    kube: Kube, namespace: NewNamespace,
) -> None:
    ns = namespace()
    body = deployment("web", template={INJECT: "logging,nope"})
    warned(kube, ns, body, "unknown injection policy 'nope'")
    (warning,) = kube.create_deployment(ns, body)
    assert warning.startswith(f"Deployment {ns}/web: its pod template asks for unknown "
                              "injection policy 'nope'")
    assert "its pods will be admitted without injection" in warning


def test_a_plain_namespace_is_checked_when_the_pod_template_opts_in_by_label(
    kube: Kube, namespace: NewNamespace,
) -> None:
    ns = namespace(opted_in=False)
    body = deployment("web", template={INJECT: "nope"}, template_labels={INJECT: "enabled"})
    warned(kube, ns, body, "unknown injection policy 'nope'")
    (warning,) = kube.create_deployment(ns, body)
    assert warning.startswith(f"Deployment {ns}/web: its pod template asks for unknown")
    # without the label its pods never reach the webhook, and neither does the Deployment
    assert kube.create_deployment(ns, deployment("other", template={INJECT: "nope"}),
                                  dry_run=True) == []
