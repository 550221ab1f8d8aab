"""`serve --engine admission-policy`, a real process with the admin kubeconfig, against the real
apiserver: it applies the compiled policy set, pods are injected by the apiserver alone (also
once the server has stopped), a policy file changed on disk reaches the cluster without a
restart, and a setting that no longer needs an object deletes it. Below 1.36 the server says
why it cannot, and is not ready. (The chart's pod doing the same with its own RBAC:
test_image.py.)"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import POLICIES, STATUS, pod_manifest
from tests.e2e.controlplane import MINOR, ControlPlane
from tests.e2e.kube import ApiException, Kube, wait_for
from tests.e2e.webhookconfig import (
    INJECT,
    RELEASE_NAMESPACE,
    policy_names,
    stored,
    wait_retired,
    without_the_suites_webhook,
)
from tests.serverproc import ServerProcess
from webhook.compiled import MINIMUM_MINOR, object_names
from webhook.kube import ADMISSION_KINDS

pytestmark = pytest.mark.e2e
NAME = "engine-e2e"


def engine_server(plane: ControlPlane, workdir: Path, policies: Path,
                  *extra: str) -> ServerProcess:
    return ServerProcess(workdir, policies=policies, log=plane.logs / "engine-webhook.log",
                         args=["--kubeconfig", str(plane.kubeconfig), "--default-policies",
                               "logging", "--engine", "admission-policy", "--engine-name", NAME,
                               "--reload-interval", "0.2", *extra],
                         env={"POD_NAMESPACE": RELEASE_NAMESPACE})


def injected(kube: Kube, namespace: str, policy: str = "logging") -> dict[str, Any] | None:
    """A pod asking for `policy`, created (dry run): the stored pod, if the compiled policy
    injected it."""
    body = pod_manifest(f"engine-{uuid.uuid4().hex[:6]}", annotations={INJECT: policy})
    try:
        pod, _ = kube.create_pod(namespace, body, dry_run=True)
    except ApiException:
        return None
    stamp = (pod["metadata"].get("annotations") or {}).get(STATUS)
    return pod if stamp and json.loads(stamp)["policies"] == [policy] else None


def images(pod: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["image"] for c in [*pod["spec"].get("initContainers", []),
                                            *pod["spec"]["containers"]]}


def delete_all(kube: Kube, name: str) -> None:
    """Delete every object `serve --engine --engine-name NAME` may have applied."""
    for kind, names in reversed(object_names(name).items()):
        method = f"delete_{ADMISSION_KINDS[kind]}"
        for each in names:
            try:
                getattr(kube.admission, method)(each)
            except ApiException as exc:
                if exc.status != 404:
                    raise


def after_the_first_sync(server: ServerProcess) -> httpx.Response:
    """Start `server`, and its `/readyz` once the first sync is over (done or failed); the
    server stopped after."""
    server.start(until="/healthz")
    try:
        with server.client() as client:
            def answered() -> httpx.Response:
                return client.get(server.url("/readyz"))
            wait_for(lambda: answered().json()["admissionPolicies"] != "not synced", 30,
                     "the first sync")
            return answered()
    finally:
        assert server.stop() == 0


@pytest.fixture
def alone(control_plane: ControlPlane, kube: Kube) -> Iterator[None]:
    """No webhook on the pod path while the test runs; its objects deleted (and out of effect)
    after."""
    with without_the_suites_webhook(kube):
        try:
            yield
        finally:
            delete_all(kube, NAME)
            wait_retired(control_plane, kube, policy_names(NAME))


if MINOR >= MINIMUM_MINOR:

    def test_serve_keeps_the_compiled_policies_in_the_cluster_in_step_with_its_files(
        control_plane: ControlPlane, kube: Kube, tmp_path: Path,
        alone: None,
    ) -> None:
        policies = tmp_path / "policies"
        shutil.copytree(POLICIES, policies)
        server = engine_server(control_plane, tmp_path, policies)
        server.start()  # ready only once the first sync succeeded
        try:
            with server.client() as client:
                ready = client.get(server.url("/readyz")).json()
            assert ready["admissionPolicies"] == "synced"
            assert stored(kube, NAME) == {  # --on-conflict deny (the default): the deny policy too
                kind: names for kind, names in object_names(NAME).items()}
            namespace = kube.ensure_namespace("engine-e2e", labels={INJECT: "enabled"})
            wait_for(lambda: injected(kube, namespace) is not None, 60,
                     "the apiserver to load the compiled policies")

            # a policy file changed on disk (a ConfigMap update) reaches the cluster
            logging = policies / "logging.yaml"
            logging.write_text(logging.read_text().replace("fluent/fluent-bit:3.2.4",
                                                           "fluent/fluent-bit:3.2.5"))
            wait_for(lambda: (images(injected(kube, namespace) or {"spec": {"containers": []}})
                              .get("logging-agent") == "fluent/fluent-bit:3.2.5"), 60,
                     "the changed policy to be compiled, applied and loaded")
        finally:
            assert server.stop() == 0
        # the Deployment scaled to zero: the apiserver injects on its own
        pod = injected(kube, namespace)
        assert pod is not None
        assert images(pod)["logging-agent"] == "fluent/fluent-bit:3.2.5"

        # a setting that no longer needs the deny policy: its objects are deleted
        server = engine_server(control_plane, tmp_path, policies, "--on-conflict", "skip")
        server.start()
        try:
            assert stored(kube, NAME) == {
                "MutatingAdmissionPolicy": [NAME],
                "ValidatingAdmissionPolicy": [f"{NAME}-warn"],
                "MutatingAdmissionPolicyBinding": [f"{NAME}-namespace", f"{NAME}-pod"],
                "ValidatingAdmissionPolicyBinding": [f"{NAME}-warn-namespace",
                                                     f"{NAME}-warn-pod"]}
        finally:
            assert server.stop() == 0
        lines = [json.loads(line) for line in server.log.read_text().splitlines()
                 if line.startswith("{")]
        assert [line for line in lines if line["level"] not in ("debug", "info")] == []
        assert any(line["message"] == "admission policies synced" for line in lines)

    def test_the_objects_go_with_their_owner_and_without_it_none_is_applied(
        control_plane: ControlPlane, kube: Kube, tmp_path: Path, alone: None,
    ) -> None:
        """--engine-owner (the chart's ClusterRole) becomes the owner of every object, also of
        those applied before without it; deleting it, as `helm uninstall` does, has the garbage
        collector delete them all; while it is missing nothing is applied."""
        owner = f"{NAME}-owner"
        role = kube.plain(kube.rbac.create_cluster_role({"metadata": {"name": owner},
                                                         "rules": []}))
        server = engine_server(control_plane, tmp_path, POLICIES)  # as before: no owner
        server.start()
        assert server.stop() == 0
        # a server with the owner (an upgraded chart) gives it to the objects already there
        server = engine_server(control_plane, tmp_path, POLICIES, "--engine-owner", owner)
        server.start()
        try:
            owners = {(kind, name): kube.plain(getattr(
                kube.admission, f"read_{ADMISSION_KINDS[kind]}")(name))["metadata"].get(
                    "ownerReferences") for kind, names in stored(kube, NAME).items()
                for name in names}
        finally:
            assert server.stop() == 0
        assert len(owners) == 9  # with --on-conflict deny, the default: all of them
        assert set(map(json.dumps, owners.values())) == {json.dumps([{
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "name": owner, "uid": role["metadata"]["uid"]}])}

        kube.rbac.delete_cluster_role(owner)
        wait_for(lambda: not stored(kube, NAME), 60,
                 "the garbage collector to delete the objects of the deleted owner")
        server = engine_server(control_plane, tmp_path, POLICIES, "--engine-owner", owner)
        ready = after_the_first_sync(server)
        assert ready.status_code == 503
        assert ready.json()["admissionPolicies"] == (
            f"failed: ClusterRole {owner} (--engine-owner) not found: the compiled objects "
            "would outlive it, so none is applied (the release is being uninstalled, or that "
            "ClusterRole must be created)")
        assert stored(kube, NAME) == {}

else:

    def test_serve_says_this_apiserver_cannot_run_compiled_policies_and_is_not_ready(
        control_plane: ControlPlane, kube: Kube, tmp_path: Path,
        alone: None,
    ) -> None:
        server = engine_server(control_plane, tmp_path, POLICIES)
        ready = after_the_first_sync(server)
        assert ready.status_code == 503
        assert ready.json()["admissionPolicies"] == (
            f"failed: {control_plane.url} (Kubernetes 1.{MINOR}) does not serve "
            "MutatingAdmissionPolicy in admissionregistration.k8s.io/v1: compiled policies "
            "need Kubernetes 1.36 or newer; keep the webhook")
        assert stored(kube, NAME) == {}
