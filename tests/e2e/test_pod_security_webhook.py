"""Pod Security through the webhook: in a namespace that enforces a level, a policy that would
break it is skipped (reason `pod-security`, a warning the client sees) and the pod is admitted,
never refused with 403 after injection; every shipped policy is injected in a `restricted`
namespace, with seccomp set on the pod or only on the app's container.

A webhook of this module's own serves the shipped policies plus two built after the design
document's privileged patterns (a node-exporter with hostPath /proc and /sys, a privileged
security scanner) and one restricted to the `team=payments` namespaces, and learns the
namespaces' levels and labels through its Namespace watch: the restricted policy is applied in an
allowed namespace and refused, with a warning, in another.
"""

from __future__ import annotations

import copy
import json
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import POLICIES, STATUS
from tests.e2e.controlplane import ControlPlane
from tests.e2e.kube import ApiException, Kube, wait_for
from tests.e2e.webhookconfig import INJECT, instead_of_the_suites_webhook, webhook_configuration
from tests.serverproc import ServerProcess
from tests.unit.test_engine_cluster_rules import VAULT
from tests.unit.test_podsecurity import PRIVILEGED_POLICIES
from webhook.podsecurity import ENFORCE_LABEL, Level, compliant_pod

pytestmark = pytest.mark.e2e
SHIPPED = sorted(path.stem for path in POLICIES.glob("*.yaml"))


@pytest.fixture(scope="module")
def guarded(control_plane: ControlPlane, kube: Kube,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """This module's webhook, registered as the only one while its tests run."""
    workdir = tmp_path_factory.mktemp("psa-webhook")
    policies = workdir / "policies"
    shutil.copytree(POLICIES, policies, ignore=shutil.ignore_patterns("*.json"))
    for name, text in {**PRIVILEGED_POLICIES, "payments-secrets": VAULT}.items():
        (policies / f"{name}.yaml").write_text(text)
    server = ServerProcess(workdir, policies=policies, log=control_plane.logs / "psa-webhook.log",
                           args=["--kubeconfig", str(control_plane.kubeconfig)],
                           env={"POD_NAMESPACE": "psa-webhook"})
    server.start()
    config = webhook_configuration(url=server.url("/mutate"), ca_bundle=server.ca_bundle,
                                   failure_policy="Fail", release="psa")
    try:
        with instead_of_the_suites_webhook(kube, config):
            yield
    finally:
        server.stop()


def enforcing(kube: Kube, level: Level) -> str:
    name = f"psa-{level.value}-{uuid.uuid4().hex[:6]}"
    return kube.ensure_namespace(name, labels={INJECT: "enabled", ENFORCE_LABEL: level.value})


def create(kube: Kube, namespace: str, body: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    try:
        return kube.create_pod(namespace, body)
    except ApiException as exc:
        raise AssertionError(f"{exc.status}: {exc.body}") from None


def stamp(pod: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(pod["metadata"]["annotations"][STATUS])
    return result


@pytest.mark.parametrize("level", [Level.BASELINE, Level.RESTRICTED])
@pytest.mark.parametrize("privileged", sorted(PRIVILEGED_POLICIES))
def test_a_policy_that_would_break_the_level_is_skipped_and_the_pod_admitted(
    kube: Kube, guarded: None, level: Level, privileged: str,
) -> None:
    namespace = enforcing(kube, level)
    body = compliant_pod(level, name="app", annotations={INJECT: f"{privileged},logging"})

    def refused() -> bool:  # the watch has seen the namespace's level
        probe = copy.deepcopy(body)
        probe["metadata"]["name"] = f"probe-{uuid.uuid4().hex[:6]}"
        created, _ = kube.create_pod(namespace, probe, dry_run=True)
        return bool(stamp(created).get("refused"))

    wait_for(refused, 30, "the webhook to learn the namespace's Pod Security level")
    stored, warnings = create(kube, namespace, body)
    assert stamp(stored)["policies"] == ["logging"]
    assert stamp(stored)["refused"] == {privileged: "pod-security"}
    assert any(privileged in w and level.value in w for w in warnings), warnings


def seccomp_on_the_app(pod: dict[str, Any]) -> dict[str, Any]:
    return pod


def seccomp_on_the_pod(pod: dict[str, Any]) -> dict[str, Any]:
    pod["spec"]["securityContext"] = {"seccompProfile": {"type": "RuntimeDefault"}}
    del pod["spec"]["containers"][0]["securityContext"]["seccompProfile"]
    return pod


@pytest.mark.parametrize("where", [seccomp_on_the_app, seccomp_on_the_pod],
                         ids=["seccomp-on-the-app", "seccomp-on-the-pod"])
@pytest.mark.parametrize("policy", SHIPPED)
def test_every_shipped_policy_is_injected_in_a_restricted_namespace(
    kube: Kube, guarded: None, restricted_namespace: str, policy: str, where: Any,
) -> None:
    suffix = where.__name__.rsplit("_", 1)[-1]  # app or pod
    body = where(compliant_pod(Level.RESTRICTED, name=f"{policy}-{suffix}",
                               annotations={INJECT: policy}))
    stored, warnings = create(kube, restricted_namespace, body)
    assert stamp(stored)["policies"] == [policy], warnings
    assert "refused" not in stamp(stored)


@pytest.fixture(scope="module")
def restricted_namespace(kube: Kube) -> str:
    return enforcing(kube, Level.RESTRICTED)


@pytest.mark.parametrize(("labels", "applied"), [
    pytest.param({"team": "payments"}, ["payments-secrets", "logging"], id="allowed"),
    pytest.param({"team": "web"}, ["logging"], id="another-team"),
])
def test_a_restricted_policy_is_applied_only_in_the_namespaces_it_selects(
    kube: Kube, guarded: None, labels: dict[str, str], applied: list[str],
) -> None:
    namespace = kube.ensure_namespace(f"restricted-{labels['team']}-{uuid.uuid4().hex[:6]}",
                                      labels={INJECT: "enabled", **labels})
    body = compliant_pod(Level.RESTRICTED, name="app",
                         annotations={INJECT: "payments-secrets,logging"})

    def seen() -> bool:  # the watch has the namespace's labels
        probe = copy.deepcopy(body)
        probe["metadata"]["name"] = f"probe-{uuid.uuid4().hex[:6]}"
        created, _ = kube.create_pod(namespace, probe, dry_run=True)
        return bool(stamp(created)["policies"] == applied)

    wait_for(seen, 30, "the webhook to learn the namespace's labels")
    stored, warnings = create(kube, namespace, body)
    assert stamp(stored)["policies"] == applied
    refused = "payments-secrets" not in applied
    assert stamp(stored).get("refused") == (
        {"payments-secrets": "namespace-not-allowed"} if refused else None)
    assert any("payments-secrets" in w and namespace in w for w in warnings) is refused
