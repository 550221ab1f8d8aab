"""One webhook call per pod, counted by the apiserver itself: injected containers carry the
service-account token mount the ServiceAccount plugin would add, so the plugin changes nothing
after the webhook and `reinvocationPolicy: IfNeeded` does not call it again."""

from __future__ import annotations

import json
import re

import pytest

from tests.e2e.conftest import STATUS, NewNamespace, Register, pod_manifest
from tests.e2e.controlplane import ControlPlane
from tests.e2e.kube import Kube

pytestmark = pytest.mark.e2e
WEBHOOK = "namespace.sidecar-injector.sidecar.company.com"
INJECT = "sidecar.company.com/inject"


def webhook_calls(plane: ControlPlane) -> float:
    """CREATE calls the apiserver made to the namespace entry of the suite's webhook."""
    total = 0.0
    for line in plane.metrics().splitlines():
        if line.startswith("apiserver_admission_webhook_request_total{") and (
                f'name="{WEBHOOK}"' in line and 'operation="CREATE"' in line):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize(("inject", "outcome"), [
    pytest.param("logging", "injected", id="native-sidecar"),
    pytest.param("wait-for-database,metrics-exporter", "injected", id="init-and-sidecar"),
    pytest.param("nope", "unknown-policy", id="skipped-unknown-policy"),
    pytest.param("false", "opted-out", id="skipped-opted-out"),
])
def test_the_apiserver_calls_the_webhook_once_per_pod(
    control_plane: ControlPlane, kube: Kube, register: Register, namespace: NewNamespace,
    request: pytest.FixtureRequest, inject: str, outcome: str,
) -> None:
    ns = namespace()
    before = webhook_calls(control_plane)
    pods = 5
    for index in range(pods):
        name = f"{request.node.callspec.id}-{index}"
        stored, _ = kube.create_pod(ns, pod_manifest(name,
                                                     annotations={INJECT: inject}))
        status = json.loads(stored["metadata"]["annotations"][STATUS])
        assert (status.get("skipped") or "injected") == outcome
        for container in [*stored["spec"].get("initContainers", []),
                          *stored["spec"]["containers"]]:
            assert any(re.match(r"kube-api-access-", m["name"])
                       for m in container.get("volumeMounts", [])), container["name"]
    calls = webhook_calls(control_plane) - before
    assert calls == pods, f"{calls:.0f} webhook calls for {pods} pods"
