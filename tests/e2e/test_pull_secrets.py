"""Image pull secrets a policy lists make a pod the apiserver accepts, merged with the pod's."""

from __future__ import annotations

import copy

import jsonpatch
import pytest

from tests.conftest import WritePolicies
from tests.e2e.conftest import NewNamespace, pod_manifest
from tests.e2e.kube import Kube
from tests.unit.test_pull_secrets import POLICY
from webhook.engine import EngineConfig, mutate
from webhook.policy import load_policy_dir

pytestmark = pytest.mark.e2e


def test_a_policys_pull_secrets_are_merged_into_a_valid_pod(
    kube: Kube, namespace: NewNamespace, write_policies: WritePolicies,
) -> None:
    ns = namespace(opted_in=False)
    policies = load_policy_dir(write_policies(
        agent=POLICY.format(name="agent", secrets="{name: internal}, {name: mirror}")))
    body = pod_manifest("pulls", annotations={"sidecar.company.com/inject": "agent"})
    body["spec"]["imagePullSecrets"] = [{"name": "mirror"}]
    outcome = mutate(copy.deepcopy(body), namespace=ns, policies=policies,
                     config=EngineConfig())
    stored, _ = kube.create_pod(ns, jsonpatch.apply_patch(body, outcome.patch))
    assert [ref["name"] for ref in stored["spec"]["imagePullSecrets"]] == ["mirror", "internal"]
