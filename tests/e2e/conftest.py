"""Fixtures for the end-to-end suite: a real control plane, the webhook as a local process, and
its registration with the apiserver, all started once per session."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.controlplane import K8S_VERSION, MINOR, ROOT, ControlPlane
from tests.e2e.engines import ENGINES, Twins, twin_engines
from tests.e2e.kube import ApiException, Kube, wait_for
from tests.e2e.webhookconfig import INJECT, RELEASE_NAMESPACE, VALIDATING, webhook_configuration
from tests.serverproc import ServerProcess
from webhook.compiled import MINIMUM_MINOR

STATUS = "sidecar.company.com/status"
POLICIES = ROOT / "policies"
ARTIFACTS = ROOT / "artifacts" / "e2e" / K8S_VERSION  # a failed run's logs, per version


@pytest.fixture(scope="session")
def control_plane(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                  ) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path_factory.mktemp("controlplane"), ARTIFACTS)
    try:
        plane.start()
        yield plane
    finally:
        plane.stop()
        plane.keep_logs(request.session.testsfailed > 0)


@pytest.fixture(scope="session")
def kube(control_plane: ControlPlane) -> Kube:
    kube = Kube(str(control_plane.kubeconfig))
    wait_for(lambda: kube.exists(
        lambda: kube.core.read_namespaced_service_account("default", "default")),
        120, "the serviceaccount controller to create default/default")
    return kube


class Webhook(ServerProcess):
    """The webhook the apiserver calls: serve with the shipped policies (or `policies`) and the
    admin kubeconfig (for the Namespace watch), in the release namespace; `extra` serve flags,
    logged to `log_name`."""

    def __init__(self, workdir: Path, kubeconfig: Path, logs: Path, *extra: str,
                 log_name: str = "webhook.log", policies: Path = POLICIES) -> None:
        super().__init__(workdir, policies=policies, log=logs / log_name,
                         args=["--kubeconfig", str(kubeconfig), "--default-policies", "logging",
                               *extra],
                         env={"POD_NAMESPACE": RELEASE_NAMESPACE})

    @property
    def mutate_url(self) -> str:
        return self.url("/mutate")


@pytest.fixture(scope="session")
def webhook(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory,
            ) -> Iterator[Webhook]:
    server = Webhook(tmp_path_factory.mktemp("webhook"), control_plane.kubeconfig,
                     control_plane.logs)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def twins(control_plane: ControlPlane, kube: Kube) -> Iterator[Twins]:
    """The compiled engines beside the webhook, for tests marked `engines` (tests/e2e/engines)."""
    with twin_engines(control_plane, kube) as made:
        yield made


@pytest.fixture(autouse=True)
def _both_engines(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
                  ) -> Iterator[None]:
    """In a test marked `engines(...)`, every pod and Deployment is created once more through each
    engine named, and its pods must come out the same (tests/e2e/engines)."""
    marker = request.node.get_closest_marker("engines")
    if marker is None or not marker.args or MINOR < MINIMUM_MINOR:
        yield
        return
    assert set(marker.args) <= set(ENGINES), marker.args
    kube: Kube = request.getfixturevalue("kube")
    twins: Twins = request.getfixturevalue("twins")
    monkeypatch.setattr(kube, "create_pod", twins.wrap(tuple(marker.args)))
    monkeypatch.setattr(kube, "create_deployment", twins.wrap_deployments(tuple(marker.args)))
    yield
    differences = twins.differences()
    assert not differences, "\n".join(differences)


Register = Callable[[str], None]


@pytest.fixture(scope="session")
def register(kube: Kube, webhook: Webhook) -> Register:
    """(Re)register the webhook with a failure policy and wait until the apiserver calls it."""
    kube.ensure_namespace(RELEASE_NAMESPACE)
    probe_ns = kube.ensure_namespace("e2e-probe", labels={INJECT: "enabled"})

    def apply(failure_policy: str) -> None:
        kube.apply_mutating_webhook(webhook_configuration(
            url=webhook.mutate_url, ca_bundle=webhook.ca_bundle, failure_policy=failure_policy))
        kube.apply_validating_webhook(webhook_configuration(  # the workload warnings
            url=webhook.mutate_url, ca_bundle=webhook.ca_bundle, failure_policy=failure_policy,
            kind=VALIDATING))
        wait_for(lambda: _webhook_called(kube, probe_ns), 60,
                 "the webhook configuration to take effect")

    apply("Fail")
    return apply


def _webhook_called(kube: Kube, namespace: str) -> bool:
    try:
        created, _ = kube.create_pod(namespace, pod_manifest(f"probe-{uuid.uuid4().hex[:6]}"),
                                     dry_run=True)
    except ApiException:
        return False
    return STATUS in (created["metadata"].get("annotations") or {})


def pod_manifest(name: str | None = None, *, annotations: dict[str, str] | None = None,
                 labels: dict[str, str] | None = None, generate_name: str | None = None,
                 containers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"labels": {"app": "shop", **(labels or {})},
                                "annotations": annotations or {}}
    if name:
        metadata["name"] = name
    if generate_name:
        metadata["generateName"] = generate_name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
            "spec": {"containers": containers or [{"name": "app", "image": "nginx:1.27"}]}}


NewNamespace = Callable[..., str]


@pytest.fixture
def namespace(kube: Kube, request: pytest.FixtureRequest) -> NewNamespace:
    """Make a fresh namespace for this test (opted in unless told otherwise)."""
    count = 0

    def make(*, opted_in: bool = True, annotations: dict[str, str] | None = None) -> str:
        nonlocal count
        count += 1
        stem = request.node.name.removeprefix("test_")[:40].replace("_", "-").strip("-")
        labels = {INJECT: "enabled"} if opted_in else {}
        return kube.ensure_namespace(f"{stem}-{count}", labels=labels, annotations=annotations)

    return make
