"""`sidecar-injector drift` through a real apiserver: a Deployment's pods are injected; a policy
changes; `drift` names the Deployment (exit 1), `--restart --dry-run` changes nothing,
`--restart` rolls it and the controller manager's new pods carry the new revision, after which
`drift` exits 0; the chart's policies ConfigMap is read by `--release`; a pod created while the
webhook was down (failurePolicy Ignore) shows as unstamped, and a bare pod is never deleted.

A webhook of this module's own serves a copy of policies/ that the tests edit, so the session's
webhook (and the other modules' tests) never see the change.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from tests.chart.helm import of_kind, render
from tests.e2e.conftest import POLICIES, STATUS, pod_manifest
from tests.e2e.controlplane import ControlPlane
from tests.e2e.kube import ApiException, Kube, wait_for
from tests.e2e.webhookconfig import INJECT, instead_of_the_suites_webhook, webhook_configuration
from tests.serverproc import ServerProcess
from webhook.cli import cli
from webhook.policy import load_policy_dir, revision
from webhook.survey import policies_config_map

pytestmark = pytest.mark.e2e
RELEASE = "drift"
OWN_NAMESPACE = "drift-webhook"  # the release namespace of this module's webhook
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"


@dataclass
class DriftWebhook:
    """This module's webhook, the policies directory it serves, and the admin kubeconfig."""

    server: ServerProcess
    policies: Path
    kubeconfig: Path

    def drift(self, *args: str) -> Result:
        """`sidecar-injector drift` in-process, against the control plane."""
        return CliRunner().invoke(cli, ["drift", "--kubeconfig", str(self.kubeconfig),
                                        "--release-namespace", OWN_NAMESPACE, *args])

    def revision_of(self, policy: str) -> str:
        """The revision the served policies give a pod injected with `policy` alone."""
        return revision([load_policy_dir(self.policies)[policy]])


@pytest.fixture(scope="module")
def drift_webhook(control_plane: ControlPlane, kube: Kube,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[DriftWebhook]:
    """This module's webhook (failurePolicy Ignore), registered as the only one while its tests
    run, serving a copy of policies/."""
    workdir = tmp_path_factory.mktemp("drift-webhook")
    policies = workdir / "policies"
    shutil.copytree(POLICIES, policies, ignore=shutil.ignore_patterns("*.json"))
    server = ServerProcess(workdir, policies=policies, log=control_plane.logs / "drift-webhook.log",
                           args=["--kubeconfig", str(control_plane.kubeconfig),
                                 "--reload-interval", "0.5"],
                           env={"POD_NAMESPACE": OWN_NAMESPACE})
    server.start()
    kube.ensure_namespace(OWN_NAMESPACE)
    probe_ns = kube.ensure_namespace("drift-probe", labels={INJECT: "enabled"})
    config = webhook_configuration(url=server.url("/mutate"), ca_bundle=server.ca_bundle,
                                   failure_policy="Ignore", release=RELEASE,
                                   namespace=OWN_NAMESPACE)
    hook = DriftWebhook(server, policies, control_plane.kubeconfig)
    try:
        with instead_of_the_suites_webhook(kube, config):
            wait_for(lambda: served_by(kube, server, probe_ns), 60,
                     "this module's webhook configuration to take effect")
            yield hook
    finally:
        server.stop()


def served_by(kube: Kube, server: ServerProcess, namespace: str) -> bool:
    """Whether a dry-run pod in `namespace` is decided by `server` (it logs the pod's name)."""
    name = f"probe-{uuid.uuid4().hex[:8]}"
    try:
        created, _ = kube.create_pod(namespace, pod_manifest(name), dry_run=True)
    except ApiException:
        return False
    return STATUS in (created["metadata"].get("annotations") or {}) and (
        f'"{name}"' in server.log.read_text())


def stamp(pod: dict[str, Any]) -> dict[str, Any] | None:
    raw = (pod["metadata"].get("annotations") or {}).get(STATUS)
    return json.loads(raw) if raw else None


def opted_in_namespace(kube: Kube, stem: str) -> str:
    return kube.ensure_namespace(f"{stem}-{uuid.uuid4().hex[:6]}", labels={INJECT: "enabled"})


def live_pods(kube: Kube, namespace: str, selector: str) -> list[dict[str, Any]]:
    return [pod for pod in kube.list_pods(namespace, selector)
            if not pod["metadata"].get("deletionTimestamp")]


def create_shop(kube: Kube, namespace: str) -> None:
    """A Deployment of two pods injected with `logging`. There is no kubelet: its pods never
    become Ready, so only `Recreate` lets a rollout finish (a rolling update waits for the new
    pods' readiness before it removes an old one)."""
    template = pod_manifest(annotations={INJECT: "logging"})
    kube.create_deployment(namespace, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "shop"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "shop"}},
                 "strategy": {"type": "Recreate"},
                 "template": {"metadata": template["metadata"], "spec": template["spec"]}}})


def revisions(kube: Kube, namespace: str) -> list[str]:
    """The recorded revision of each of the Deployment's pods ("" for a pod without one)."""
    return sorted(str((stamp(pod) or {}).get("revision") or "")
                  for pod in live_pods(kube, namespace, "app=shop"))


def template_annotations(kube: Kube, namespace: str) -> dict[str, str]:
    deployment = kube.plain(kube.apps.read_namespaced_deployment("shop", namespace))
    annotations: dict[str, str] = deployment["spec"]["template"]["metadata"].get(
        "annotations") or {}
    return annotations


def test_a_changed_policy_is_found_and_restart_rolls_the_deployment(
    kube: Kube, drift_webhook: DriftWebhook,
) -> None:
    hook = drift_webhook
    ns = opted_in_namespace(kube, "drift-shop")
    create_shop(kube, ns)
    before = hook.revision_of("logging")
    wait_for(lambda: revisions(kube, ns) == [before, before], 90,
             "the controller manager to create the Deployment's two injected pods")

    clean = hook.drift("-n", ns, "--policies", str(hook.policies))
    assert (clean.exit_code, clean.stderr) == (0, ""), clean.output
    assert clean.stdout.startswith("no drift: 2 pods checked")

    logging_policy = hook.policies / "logging.yaml"
    logging_policy.write_text(logging_policy.read_text().replace(
        "fluent/fluent-bit:3.2.4", "fluent/fluent-bit:3.2.5"))
    after = hook.revision_of("logging")
    assert after != before
    wait_for(lambda: _dry_run_revision(kube, ns) == after, 30,
             "the webhook to reload the changed policy")

    found = hook.drift("-n", ns, "--policies", str(hook.policies), "-o", "json")
    assert found.exit_code == 1, found.output
    report = json.loads(found.stdout)
    assert [(w["kind"], w["namespace"], w["name"]) for w in report["workloads"]] == [
        ("Deployment", ns, "shop")]
    pods = report["workloads"][0]["pods"]
    assert [(p["reason"], p["recorded"]["revision"], p["expected"]["revision"]) for p in pods] \
        == [("stale-revision", before, after)] * 2
    table = hook.drift("-n", ns, "--policies", str(hook.policies))
    assert table.exit_code == 1
    assert table.stdout.count("Deployment/shop") == 2
    assert table.stdout.count("stale-revision") == 2

    dry = hook.drift("-n", ns, "--policies", str(hook.policies), "--restart", "--dry-run")
    assert dry.exit_code == 1, dry.output
    assert f"Deployment {ns}/shop: would restart (dry run)" in dry.stdout
    assert RESTARTED_AT not in template_annotations(kube, ns)

    rolled = hook.drift("-n", ns, "--policies", str(hook.policies), "--restart")
    assert (rolled.exit_code, rolled.stderr) == (1, ""), rolled.output
    assert f"Deployment {ns}/shop: restarted" in rolled.stdout
    assert RESTARTED_AT in template_annotations(kube, ns)
    wait_for(lambda: revisions(kube, ns) == [after, after], 120,
             "the controller manager to replace both pods with newly injected ones")

    settled = hook.drift("-n", ns, "--policies", str(hook.policies))
    assert (settled.exit_code, settled.stdout) == (
        0, "no drift: 2 pods checked, each carries what the policies give it now\n")

    # the chart's own ConfigMap, as `helm install drift -n drift-webhook` makes it, holds the
    # shipped policies: against those, the new pods are the stale ones
    chart = render({"defaultPolicies": "logging"}, namespace=OWN_NAMESPACE, release=RELEASE)
    (chart_policies,) = of_kind(chart, "ConfigMap")
    assert chart_policies["metadata"]["name"] == policies_config_map(RELEASE)
    _apply_config_map(kube, chart_policies)
    # and its Deployment (no kubelet runs its pods): drift takes the server's settings from it
    (server,) = of_kind(chart, "Deployment")
    kube.apps.create_namespaced_deployment(OWN_NAMESPACE, server)
    released = hook.drift("-n", ns, "--release", RELEASE, "-o", "json")
    assert released.exit_code == 1, released.output
    assert released.stderr == (f"note: settings from Deployment {OWN_NAMESPACE}/"
                               f"{RELEASE}-sidecar-injector: default-policies=logging, "
                               "on-conflict=deny, prefix=sidecar.company.com\n")
    pods = json.loads(released.stdout)["workloads"][0]["pods"]
    assert [(p["reason"], p["expected"]["revision"]) for p in pods] == [
        ("stale-revision", before)] * 2


def test_a_pod_created_while_the_webhook_was_down_shows_as_unstamped(
    kube: Kube, drift_webhook: DriftWebhook,
) -> None:
    hook = drift_webhook
    ns = opted_in_namespace(kube, "drift-down")
    hook.server.stop()
    try:
        wait_for(lambda: _admitted_unstamped(kube, ns), 30,
                 "failurePolicy Ignore to admit a pod the webhook never saw")
        lonely, _ = kube.create_pod(ns, pod_manifest("lonely", annotations={INJECT: "logging"}))
    finally:
        hook.server.start()
    assert stamp(lonely) is None

    found = hook.drift("--policies", str(hook.policies), "-o", "json")  # every namespace
    assert found.exit_code == 1, found.output
    (mine,) = [w for w in json.loads(found.stdout)["workloads"] if w["namespace"] == ns]
    assert (mine["kind"], mine["name"]) == ("Pod", "lonely")
    (pod,) = mine["pods"]
    assert (pod["reason"], pod["recorded"], pod["expected"]["policies"]) == (
        "unstamped", None, ["logging"])

    listed = hook.drift("-n", ns, "--policies", str(hook.policies), "--restart")
    assert listed.exit_code == 1, listed.output
    assert (f"Pod {ns}/lonely: not restarted: a bare pod is never deleted by drift"
            in listed.stdout)
    assert kube.exists(lambda: kube.core.read_namespaced_pod("lonely", ns))


def _dry_run_revision(kube: Kube, namespace: str) -> str | None:
    created, _ = kube.create_pod(namespace, pod_manifest(
        f"probe-{uuid.uuid4().hex[:6]}", annotations={INJECT: "logging"}), dry_run=True)
    return (stamp(created) or {}).get("revision")


def _admitted_unstamped(kube: Kube, namespace: str) -> bool:
    created, _ = kube.create_pod(namespace, pod_manifest(f"probe-{uuid.uuid4().hex[:6]}"),
                                 dry_run=True)
    return stamp(created) is None


def _apply_config_map(kube: Kube, body: dict[str, Any]) -> None:
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    try:
        kube.core.create_namespaced_config_map(namespace, body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        kube.core.replace_namespaced_config_map(name, namespace, body)
