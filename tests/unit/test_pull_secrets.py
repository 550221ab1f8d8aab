"""Image pull secrets a policy lists: merged into the pod's without duplicates, recorded in the
stamp, and removed by `--remove` (the pod's own stay)."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import pytest

from tests.conftest import WritePolicies
from webhook.engine import EngineConfig, mutate, unmutate
from webhook.errors import PolicyError
from webhook.policy import PolicySet, load_policy_dir

STATUS = "sidecar.company.com/status"
POLICY = """\
apiVersion: sidecar.company.com/v1alpha1
kind: InjectionPolicy
metadata: {{name: {name}}}
spec:
  imagePullSecrets: [{secrets}]
  containers: [{{name: {name}-agent, image: "registry.internal/{name}:1"}}]
"""


@pytest.fixture
def policies(write_policies: WritePolicies) -> PolicySet:
    return load_policy_dir(write_policies(
        agent=POLICY.format(name="agent", secrets="{name: internal}, {name: mirror}"),
        proxy=POLICY.format(name="proxy", secrets="{name: mirror}")))


def pod(secrets: list[str] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "app:1"}]}
    if secrets is not None:
        spec["imagePullSecrets"] = [{"name": name} for name in secrets]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "annotations": {
                "sidecar.company.com/inject": "agent,proxy"}}, "spec": spec}


@pytest.mark.parametrize(("own", "expected", "added"), [
    pytest.param(None, ["internal", "mirror"], ["internal", "mirror"], id="none-of-its-own"),
    pytest.param([], ["internal", "mirror"], ["internal", "mirror"], id="an-empty-list"),
    pytest.param(["mirror", "team"], ["mirror", "team", "internal"], ["internal"],
                 id="one-it-already-has"),
    pytest.param(["internal", "mirror"], ["internal", "mirror"], None, id="all-it-already-has"),
])
def test_pull_secrets_are_merged_once_and_recorded(
    policies: PolicySet, own: list[str] | None, expected: list[str], added: list[str] | None,
) -> None:
    before = pod(own)
    outcome = mutate(copy.deepcopy(before), namespace="shop", policies=policies,
                     config=EngineConfig())
    after = jsonpatch.apply_patch(before, outcome.patch)
    assert [ref["name"] for ref in after["spec"]["imagePullSecrets"]] == expected
    assert json.loads(after["metadata"]["annotations"][STATUS]).get("imagePullSecrets") == added
    undone = jsonpatch.apply_patch(after, unmutate(after, namespace="shop",
                                                   config=EngineConfig()))
    if own == []:  # as for every list the engine fills: an empty one is replaced, then removed
        del before["spec"]["imagePullSecrets"]
    assert undone == before


def test_a_pull_secret_that_is_not_a_name_is_refused_at_load(
    write_policies: WritePolicies,
) -> None:
    with pytest.raises(PolicyError, match="imagePullSecrets"):
        load_policy_dir(write_policies(bad=POLICY.format(name="bad", secrets="{name: Not_A_Name}")))
