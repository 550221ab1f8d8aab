"""Pods with pod-level resources (KEP-2837) stay valid after injection, through the apiserver.

Each pod is first checked on its own (admitted without the webhook), then created through the
webhook: the apiserver's own validation is the judge of the pod-level arithmetic. Classic
sidecars and a policy that shares the pod's envelope are injected offline with the same engine
and the result created as it is.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import pytest

from tests.conftest import WritePolicies
from tests.e2e.conftest import STATUS, NewNamespace, Register, pod_manifest
from tests.e2e.kube import Kube
from webhook.engine import EngineConfig, mutate
from webhook.policy import load_policy_dir

pytestmark = [pytest.mark.e2e, pytest.mark.engines("compiled", "hybrid")]
INJECT = "sidecar.company.com/inject"
APP_REQUESTS = {"cpu": "100m", "memory": "128Mi"}
APP_LIMITS = {"cpu": "500m", "memory": "256Mi"}
ENVELOPES = {
    "requests": ({"requests": APP_REQUESTS}, {"requests": APP_REQUESTS}),
    "limits": ({"limits": APP_LIMITS}, {"requests": APP_REQUESTS, "limits": APP_LIMITS}),
    "both": ({"requests": APP_REQUESTS, "limits": APP_LIMITS},
             {"requests": APP_REQUESTS, "limits": APP_LIMITS}),
}


def enveloped(name: str, envelope: str, inject: str) -> dict[str, Any]:
    pod_level, app = ENVELOPES[envelope]
    body = pod_manifest(name, annotations={INJECT: inject}, containers=[
        {"name": "app", "image": "nginx:1.27", "resources": copy.deepcopy(app)}])
    body["spec"]["resources"] = copy.deepcopy(pod_level)
    return body


def admitted_alone(kube: Kube, namespace: str, body: dict[str, Any]) -> None:
    """The pod as written is valid: created (dry run) with the webhook's opt-out label."""
    alone = copy.deepcopy(body)
    alone["metadata"]["labels"][INJECT] = "false"
    kube.create_pod(namespace, alone, dry_run=True)


@pytest.mark.parametrize("envelope", sorted(ENVELOPES))
@pytest.mark.parametrize("policy", ["logging", "metrics-exporter", "wait-for-database"])
def test_a_pod_with_pod_level_resources_is_admitted_injected(
    kube: Kube, register: Register, namespace: NewNamespace, policy: str, envelope: str,
) -> None:
    ns = namespace()
    body = enveloped(f"{policy}-{envelope}", envelope, policy)
    admitted_alone(kube, ns, body)
    stored, _ = kube.create_pod(ns, body)
    status = json.loads(stored["metadata"]["annotations"][STATUS])
    assert status["policies"] == [policy]
    (app,) = [c for c in stored["spec"]["containers"] if c["name"] == "app"]
    assert app["resources"] == ENVELOPES[envelope][1]  # the app's own budget is untouched
    if "podResources" in status:
        assert status["podResources"] != stored["spec"]["resources"]


CLASSIC_AND_SHARED = """
apiVersion: sidecar.company.com/v1alpha1
kind: InjectionPolicy
metadata: {{name: {name}}}
spec:
  sidecarMode: classic
  podResources: {mode}
  initContainers:
    - name: {name}-setup
      image: busybox:1.37
      resources: {{requests: {{cpu: 300m, memory: 32Mi}}, limits: {{cpu: 300m, memory: 32Mi}}}}
  containers:
    - name: {name}-agent
      image: agent:1
      resources: {{requests: {{cpu: 50m, memory: 64Mi}}, limits: {{cpu: 200m, memory: 128Mi}}}}
"""


@pytest.mark.parametrize("envelope", sorted(ENVELOPES))
@pytest.mark.parametrize("mode", ["add", "share"])
def test_classic_sidecars_and_shared_envelopes_make_valid_pods(
    kube: Kube, namespace: NewNamespace, write_policies: WritePolicies, mode: str, envelope: str,
) -> None:
    ns = namespace(opted_in=False)
    name = f"{mode}-policy"
    policies = load_policy_dir(write_policies(**{name: CLASSIC_AND_SHARED.format(
        name=name, mode=mode)}))
    body = enveloped(f"{mode}-{envelope}", envelope, name)
    admitted_alone(kube, ns, body)
    outcome = mutate(copy.deepcopy(body), namespace=ns, policies=policies,
                     config=EngineConfig())
    injected = jsonpatch.apply_patch(body, outcome.patch)
    assert [c["name"] for c in injected["spec"]["containers"]] == ["app", f"{name}-agent"]
    stored, _ = kube.create_pod(ns, injected)
    if mode == "share":
        assert stored["spec"]["resources"] == body["spec"]["resources"] or envelope == "limits"
        assert all("resources" not in c for c in injected["spec"]["containers"][1:])
