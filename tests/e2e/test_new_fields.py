"""Fields newer than the engine's client libraries pass through injection untouched.

The app's container carries fields of recent Kubernetes releases (container `restartPolicy` and
`restartPolicyRules` of KEP-5307, `resizePolicy`) and the pod sets pod-level resources. The same
pod is stored once without the webhook and once through it: the app's container must come out
the same, but for the mounts and env the policy documents.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from tests.e2e.conftest import STATUS, NewNamespace, Register, pod_manifest
from tests.e2e.kube import Kube

pytestmark = [pytest.mark.e2e, pytest.mark.engines("compiled", "hybrid")]
INJECT = "sidecar.company.com/inject"
APP: dict[str, Any] = {
    "name": "app", "image": "nginx:1.27",
    "restartPolicy": "Never",
    "restartPolicyRules": [{"action": "Restart",
                            "exitCodes": {"operator": "In", "values": [42]}}],
    "resizePolicy": [{"resourceName": "cpu", "restartPolicy": "NotRequired"},
                     {"resourceName": "memory", "restartPolicy": "RestartContainer"}],
    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
}


@pytest.mark.parametrize("policy", ["logging", "metrics-exporter", "auth-proxy"])
def test_fields_the_engine_does_not_know_survive_injection(
    kube: Kube, register: Register, namespace: NewNamespace, policy: str,
) -> None:
    ns = namespace()
    body = pod_manifest(f"new-fields-{policy}", annotations={INJECT: policy},
                        containers=[copy.deepcopy(APP)])
    body["spec"]["resources"] = {"requests": {"cpu": "100m", "memory": "128Mi"}}
    alone_body = copy.deepcopy(body)
    alone_body["metadata"]["labels"][INJECT] = "false"
    alone, _ = kube.create_pod(ns, alone_body, dry_run=True)
    injected, _ = kube.create_pod(ns, body)
    status = json.loads(injected["metadata"]["annotations"][STATUS])
    assert status["policies"] == [policy]
    (app_alone,) = [c for c in alone["spec"]["containers"] if c["name"] == "app"]
    (app,) = [c for c in injected["spec"]["containers"] if c["name"] == "app"]
    added_env = set(status["env"].get("app", []))
    added_mounts = set(status["volumeMounts"].get("app", []))
    app["env"] = [e for e in app.get("env", []) if e["name"] not in added_env]
    app["volumeMounts"] = [m for m in app.get("volumeMounts", [])
                           if m["mountPath"] not in added_mounts]
    for key in ("env", "volumeMounts"):
        if not app[key] and key not in app_alone:
            del app[key]
    assert _tokenless(app) == _tokenless(app_alone)
    # what the apiserver keeps of the new fields on this version, injection keeps too
    for field in ("restartPolicy", "restartPolicyRules", "resizePolicy"):
        assert app.get(field) == app_alone.get(field)
    print(f"kept by the apiserver: {sorted(set(APP) & set(app_alone))}")


def _tokenless(container: dict[str, Any]) -> dict[str, Any]:
    """The container with the ServiceAccount plugin's token volume named alike (its name has a
    random suffix per pod)."""
    result = copy.deepcopy(container)
    for mount in result.get("volumeMounts", []):
        if mount["name"].startswith("kube-api-access-"):
            mount["name"] = "kube-api-access"
    return result
