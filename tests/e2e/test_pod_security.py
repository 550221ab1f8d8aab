"""webhook.podsecurity against its oracle: the real apiserver's PodSecurity admission plugin.

Every policy is injected offline (`webhook.engine.mutate`) into a pod that meets the level; the
injected pod is then dry-run-created in a namespace that enforces the level and is not opted in to
the webhook. `new_violations` must be non-empty exactly when the apiserver forbids the injected
pod, and the reasons must be the ones the apiserver gives. The unit table of check cases is
replayed the same way.
"""

from __future__ import annotations

import json
import re
import shutil
from typing import Any

import jsonpatch
import pytest

from tests.e2e.conftest import POLICIES
from tests.e2e.controlplane import MINOR
from tests.e2e.kube import ApiException, Kube
from tests.unit.test_podsecurity import CASES, PRIVILEGED_POLICIES, pod
from webhook.engine import EngineConfig, mutate
from webhook.podsecurity import (
    ENFORCE_LABEL,
    Level,
    compliant_pod,
    new_violations,
    violations,
)
from webhook.policy import PolicySet, load_policy_dir

pytestmark = pytest.mark.e2e

INJECT = "sidecar.company.com/inject"
LEVELS = (Level.BASELINE, Level.RESTRICTED)
POLICY_NAMES = [*load_policy_dir(POLICIES).names(), *sorted(PRIVILEGED_POLICIES)]
#: Unit cases the apiserver refuses as invalid (422) before PodSecurity sees them.
API_INVALID = {"procMount-unmasked": "procMount Unmasked needs hostUsers: false"}
#: cases whose verdict is policy version "latest"'s only from this Kubernetes minor on: an older
#: apiserver forbids them (pod-level sysctls, which no injection adds)
SINCE = {"sysctl-safe-since-1.37": 37}
#: Every reason PodSecurity gives, plural forms mapped to ours (always singular).
REASONS = {
    "privileged": "privileged", "host namespaces": "host namespaces",
    "hostPath volumes": "hostPath volumes", "hostPort": "hostPort",
    "non-default capabilities": "non-default capabilities", "seccompProfile": "seccompProfile",
    "seLinuxOptions": "seLinuxOptions", "procMount": "procMount",
    "forbidden sysctls": "forbidden sysctls", "hostProcess": "hostProcess",
    "forbidden AppArmor profiles": "forbidden AppArmor profile",
    "forbidden AppArmor profile": "forbidden AppArmor profile",
    "probe or lifecycle host": "probe or lifecycle host",
    "allowPrivilegeEscalation != false": "allowPrivilegeEscalation != false",
    "unrestricted capabilities": "unrestricted capabilities",
    "restricted volume types": "restricted volume types",
    "runAsNonRoot != true": "runAsNonRoot != true", "runAsUser=0": "runAsUser=0",
}
_REASON = re.compile("(?:^|, )(" + "|".join(
    re.escape(r) for r in sorted(REASONS, key=len, reverse=True)) + r")(?= \(|, |$)")


@pytest.fixture(scope="module")
def enforcing(kube: Kube) -> dict[Level, str]:
    """A namespace per level that enforces it and is not opted in to the webhook."""
    return {level: kube.ensure_namespace(f"psa-{level}", labels={ENFORCE_LABEL: str(level)})
            for level in LEVELS}


@pytest.fixture(scope="module")
def policy_set(tmp_path_factory: pytest.TempPathFactory) -> PolicySet:
    """The shipped policies plus the privileged test ones."""
    directory = tmp_path_factory.mktemp("psa-policies")
    for path in POLICIES.glob("*.yaml"):
        shutil.copy(path, directory / path.name)
    for name, text in PRIVILEGED_POLICIES.items():
        (directory / f"{name}.yaml").write_text(text, encoding="utf-8")
    return load_policy_dir(directory)


def forbidden(kube: Kube, namespace: str, pod_: dict[str, Any]) -> str | None:
    """The apiserver's 403 message for a dry-run create of `pod_`, or None if it is admitted."""
    try:
        kube.create_pod(namespace, pod_, dry_run=True)
    except ApiException as exc:
        if exc.status == 403:
            message: str = json.loads(exc.body or "{}").get("message", str(exc))
            return message
        raise
    return None


def reasons(message: str) -> set[str]:
    """The PodSecurity reasons in a 403 message (`violates PodSecurity "L:latest": ...`)."""
    assert "violates PodSecurity" in message, message
    listed = message.split('": ', 2)[-1]
    return {REASONS[m.group(1)] for m in _REASON.finditer(listed)}


def inject(pod_: dict[str, Any], namespace: str, policies: PolicySet) -> dict[str, Any]:
    outcome = mutate(pod_, namespace=namespace, policies=policies, config=EngineConfig())
    assert outcome.policies == (pod_["metadata"]["annotations"][INJECT],), outcome
    result: dict[str, Any] = jsonpatch.apply_patch(pod_, outcome.patch)
    return result


@pytest.mark.parametrize(("level", "policy"), [
    pytest.param(level, name, id=f"{level}-{name}") for level in LEVELS for name in POLICY_NAMES])
def test_an_injection_breaks_the_level_exactly_when_the_apiserver_says_so(
        kube: Kube, enforcing: dict[Level, str], policy_set: PolicySet, level: Level,
        policy: str) -> None:
    namespace = enforcing[level]
    before = compliant_pod(level, name=f"psa-{policy}", annotations={INJECT: policy})
    assert forbidden(kube, namespace, before) is None, "the un-injected pod must be admitted"
    after = inject(before, namespace, policy_set)
    ours = new_violations(before, after, level)
    verdict = forbidden(kube, namespace, after)
    assert (verdict is not None) == bool(ours), (verdict, ours)
    if verdict is not None:
        assert reasons(verdict) == {v.reason for v in violations(after, level)}, verdict
    assert bool(ours) == (policy in PRIVILEGED_POLICIES)


@pytest.mark.parametrize(("level", "offence"), [
    pytest.param(Level.BASELINE, {"sc": {"privileged": True}}, id="baseline-privileged-app"),
    pytest.param(Level.RESTRICTED, {"drop": ("allowPrivilegeEscalation", "runAsNonRoot")},
                 id="restricted-lax-app"),
])
def test_a_pods_own_violations_are_not_blamed_on_the_injection(
        kube: Kube, enforcing: dict[Level, str], policy_set: PolicySet, level: Level,
        offence: dict[str, Any]) -> None:
    namespace = enforcing[level]
    before = pod(level, annotations={INJECT: "logging"}, **offence)
    after = inject(before, namespace, policy_set)
    assert violations(before, level)
    assert new_violations(before, after, level) == []
    denied_before = forbidden(kube, namespace, before)
    denied_after = forbidden(kube, namespace, after)
    assert denied_before is not None
    assert denied_after == denied_before, "the injection changed what the apiserver objects to"
    assert reasons(denied_after) == {v.reason for v in violations(after, level)}


@pytest.mark.parametrize(("level", "pod_", "expected"), CASES)
def test_each_check_case_gets_the_apiservers_verdict(
        kube: Kube, enforcing: dict[Level, str], request: pytest.FixtureRequest, level: Level,
        pod_: dict[str, Any], expected: set[str]) -> None:
    case = request.node.callspec.id
    if case in API_INVALID:
        with pytest.raises(ApiException) as invalid:
            kube.create_pod(enforcing[level], pod_, dry_run=True)
        assert invalid.value.status == 422, API_INVALID[case]
        return
    ours = violations(pod_, level)
    verdict = forbidden(kube, enforcing[level], pod_)
    if SINCE.get(case, 0) > MINOR:
        assert verdict is not None, f"{case}: allowed before 1.{SINCE[case]}?"
        return
    assert (verdict is not None) == bool(ours), (verdict, ours)
    if verdict is not None:
        assert reasons(verdict) == {v.reason for v in ours}, verdict

