"""The engine in a namespace that enforces a Pod Security level: a policy that would make a
compliant pod break it is skipped with a warning (denied with --strict); the rest still apply."""

from __future__ import annotations

import json
from typing import Any

import jsonpatch
import pytest

from tests.conftest import SHIPPED_POLICIES, WritePolicies
from webhook.engine import EngineConfig, mutate
from webhook.podsecurity import Level, compliant_pod
from webhook.policy import PolicySet, load_policy_dir
from webhook.selection import Deny, Selection, Skip, SkipReason

KEY = "sidecar.company.com/inject"
STATUS = "sidecar.company.com/status"
SCANNER = """\
apiVersion: sidecar.company.com/v1alpha1
kind: InjectionPolicy
metadata: {name: scanner}
spec:
  containers:
    - name: scanner
      image: scanner:1
      securityContext: {privileged: true}
"""


@pytest.fixture
def policies(write_policies: WritePolicies) -> PolicySet:
    logging = (SHIPPED_POLICIES / "logging.yaml").read_text()
    return load_policy_dir(write_policies(scanner=SCANNER, logging=logging))


def run(policies: PolicySet, inject: str, level: Level | None, *, strict: bool = False,
        pod: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    obj = pod or compliant_pod(Level.RESTRICTED, annotations={KEY: inject})
    outcome = mutate(obj, namespace="shop", policies=policies, pod_security=level,
                     config=EngineConfig(selection=Selection(strict=strict)))
    return outcome, jsonpatch.apply_patch(obj, outcome.patch)


@pytest.mark.parametrize("level", [Level.BASELINE, Level.RESTRICTED])
def test_a_policy_that_breaks_the_level_is_skipped_and_the_rest_applied(
    policies: PolicySet, level: Level,
) -> None:
    outcome, pod = run(policies, "scanner,logging", level)
    assert outcome.policies == ("logging",)
    status = json.loads(pod["metadata"]["annotations"][STATUS])
    assert status["refused"] == {"scanner": "pod-security"}
    (warning,) = [w for w in outcome.warnings if "scanner" in w]
    assert f"Pod Security level '{level.value}'" in warning
    assert 'privileged: container "scanner"' in warning


def test_when_every_policy_breaks_the_level_the_pod_is_stamped_skipped(
    policies: PolicySet,
) -> None:
    outcome, pod = run(policies, "scanner", Level.BASELINE)
    assert isinstance(outcome.decision, Skip)
    assert outcome.decision.reason is SkipReason.POD_SECURITY
    assert json.loads(pod["metadata"]["annotations"][STATUS]) == {
        "policies": [], "skipped": "pod-security"}
    assert outcome.warnings


def test_strict_denies_with_the_same_message(policies: PolicySet) -> None:
    outcome, _ = run(policies, "scanner,logging", Level.BASELINE, strict=True)
    assert isinstance(outcome.decision, Deny)
    assert "would break the namespace's Pod Security level 'baseline'" in (outcome.message or "")


@pytest.mark.parametrize("level", [None, Level.PRIVILEGED])
def test_without_an_enforced_level_every_policy_applies(policies: PolicySet,
                                                        level: Level | None) -> None:
    outcome, _ = run(policies, "scanner,logging", level)
    assert outcome.policies == ("scanner", "logging")


def test_the_pods_own_violations_are_not_blamed_on_the_policy(policies: PolicySet) -> None:
    pod = compliant_pod(Level.RESTRICTED, annotations={KEY: "logging"})
    pod["spec"]["containers"][0]["securityContext"]["privileged"] = True
    outcome, _ = run(policies, "logging", Level.BASELINE, pod=pod)
    assert outcome.policies == ("logging",)
