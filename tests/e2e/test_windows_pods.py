"""Windows pods through the apiserver: a Linux policy is skipped (reason `unsupported-os`, a
warning), never a 422 after injection; a policy that supports Windows is injected without the
Linux-only securityContext fields the apiserver forbids there."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import pytest

from tests.conftest import WritePolicies
from tests.e2e.conftest import STATUS, NewNamespace, Register, pod_manifest
from tests.e2e.kube import Kube
from tests.unit.test_engine_cluster_rules import WINDOWS_AGENT
from webhook.engine import EngineConfig, mutate
from webhook.policy import load_policy_dir

pytestmark = [pytest.mark.e2e, pytest.mark.engines("compiled", "hybrid")]
INJECT = "sidecar.company.com/inject"


def windows(name: str, inject: str, by: str) -> dict[str, Any]:
    body = pod_manifest(name, annotations={INJECT: inject})
    if by == "os":
        body["spec"]["os"] = {"name": "windows"}
    else:
        body["spec"]["nodeSelector"] = {"kubernetes.io/os": "windows"}
    return body


@pytest.mark.parametrize("by", ["os", "nodeSelector"])
@pytest.mark.parametrize("policy", ["logging", "metrics-exporter", "wait-for-database"])
def test_a_windows_pod_is_admitted_without_linux_policies(
    kube: Kube, register: Register, namespace: NewNamespace, policy: str, by: str,
) -> None:
    ns = namespace()
    body = windows(f"win-{policy}-{by.lower()}", policy, by)
    alone = copy.deepcopy(body)
    alone["metadata"]["labels"][INJECT] = "false"
    kube.create_pod(ns, alone, dry_run=True)
    stored, warnings = kube.create_pod(ns, body)
    assert json.loads(stored["metadata"]["annotations"][STATUS]) == {
        "policies": [], "skipped": "unsupported-os"}
    assert any(policy in w and "windows" in w for w in warnings), warnings


def test_a_policy_for_windows_makes_a_valid_windows_pod(
    kube: Kube, namespace: NewNamespace, write_policies: WritePolicies,
) -> None:
    ns = namespace(opted_in=False)
    policies = load_policy_dir(write_policies(**{"win-agent": WINDOWS_AGENT}))
    body = windows("win-agent", "win-agent", "os")
    outcome = mutate(copy.deepcopy(body), namespace=ns, policies=policies,
                     config=EngineConfig())
    assert outcome.policies == ("win-agent",)
    stored, _ = kube.create_pod(ns, jsonpatch.apply_patch(body, outcome.patch))
    (agent,) = stored["spec"]["initContainers"]
    assert agent["securityContext"]["windowsOptions"] == {"runAsUserName": "ContainerUser"}
