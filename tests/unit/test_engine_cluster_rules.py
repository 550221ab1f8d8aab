"""The cluster's rules that leave a requested policy out: in a namespace that enforces a Pod
Security level, a policy that would make a compliant pod break it is skipped with a warning
(denied with --strict); a Windows pod gets no Linux-only policy, and a policy for Windows loses its
Linux-only securityContext fields there. The other policies still apply."""

from __future__ import annotations

import json
from typing import Any

import jsonpatch
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import SHIPPED_POLICIES, WritePolicies
from tests.integration.test_fuzz import JSON
from webhook.cli import cli
from webhook.engine import EngineConfig, mutate
from webhook.errors import PolicyError
from webhook.labels import Requirement, Selector
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


WINDOWS_AGENT = """\
apiVersion: sidecar.company.com/v1alpha1
kind: InjectionPolicy
metadata: {name: win-agent}
spec:
  os: [linux, windows]
  containers:
    - name: win-agent
      image: agent:1
      securityContext:
        runAsNonRoot: true
        runAsUser: 1000
        allowPrivilegeEscalation: false
        capabilities: {drop: [ALL]}
        seccompProfile: {type: RuntimeDefault}
        windowsOptions: {runAsUserName: ContainerUser}
"""


def windows_pod(inject: str, *, by: str = "os") -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "app:1"}]}
    if by == "os":
        spec["os"] = {"name": "windows"}
    else:
        spec["nodeSelector"] = {"kubernetes.io/os": "windows"}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "win", "annotations": {KEY: inject}}, "spec": spec}


@pytest.mark.parametrize("by", ["os", "nodeSelector"])
def test_a_windows_pod_gets_no_linux_policy(policies: PolicySet, by: str) -> None:
    outcome, pod = run(policies, "logging", None, pod=windows_pod("logging", by=by))
    assert isinstance(outcome.decision, Skip)
    assert outcome.decision.reason is SkipReason.UNSUPPORTED_OS
    assert json.loads(pod["metadata"]["annotations"][STATUS])["skipped"] == "unsupported-os"
    (warning,) = outcome.warnings
    assert "'logging'" in warning
    assert "windows" in warning


def test_a_policy_for_windows_loses_its_linux_only_fields_in_a_windows_pod(
    write_policies: WritePolicies,
) -> None:
    logging = (SHIPPED_POLICIES / "logging.yaml").read_text()
    policies = load_policy_dir(write_policies(**{"win-agent": WINDOWS_AGENT, "logging": logging}))
    outcome, pod = run(policies, "win-agent,logging", None, pod=windows_pod("win-agent,logging"))
    assert outcome.policies == ("win-agent",)
    assert json.loads(pod["metadata"]["annotations"][STATUS])["refused"] == {
        "logging": "unsupported-os"}
    (agent,) = pod["spec"]["initContainers"]
    assert agent["securityContext"] == {"runAsNonRoot": True,
                                        "windowsOptions": {"runAsUserName": "ContainerUser"}}


def test_a_policy_for_windows_keeps_its_fields_in_a_linux_pod(
    write_policies: WritePolicies,
) -> None:
    policies = load_policy_dir(write_policies(**{"win-agent": WINDOWS_AGENT}))
    _, pod = run(policies, "win-agent", None)
    (agent,) = pod["spec"]["initContainers"]
    assert agent["securityContext"]["capabilities"] == {"drop": ["ALL"]}


JUNK_PATHS = [("spec", "securityContext"), ("spec", "os"), ("spec", "nodeSelector"),
              ("spec", "resources"), ("spec", "imagePullSecrets"), ("spec", "hostNetwork"),
              ("spec", "volumes"), ("spec", "initContainers"), ("metadata", "labels")]


@pytest.fixture(scope="module")
def scanner_and_logging(tmp_path_factory: pytest.TempPathFactory) -> PolicySet:
    directory = tmp_path_factory.mktemp("policies")
    (directory / "scanner.yaml").write_text(SCANNER)
    (directory / "logging.yaml").write_text((SHIPPED_POLICIES / "logging.yaml").read_text())
    return load_policy_dir(directory)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(JUNK_PATHS), junk=JSON,
       level=st.sampled_from([None, Level.BASELINE, Level.RESTRICTED]),
       strict=st.booleans(), container_junk=JSON)
def test_junk_in_the_fields_these_rules_read_never_raises(
    scanner_and_logging: PolicySet, path: tuple[str, str], junk: Any, level: Level | None,
    strict: bool, container_junk: Any,
) -> None:
    pod = compliant_pod(Level.RESTRICTED, annotations={KEY: "scanner,logging"})
    pod[path[0]][path[1]] = junk
    pod["spec"]["containers"][0]["securityContext"] = container_junk
    outcome = mutate(pod, namespace="shop", policies=scanner_and_logging, pod_security=level,
                     config=EngineConfig(selection=Selection(strict=strict)))
    assert outcome.result  # a decision, whatever it is


VAULT = """\
apiVersion: sidecar.company.com/v1alpha1
kind: InjectionPolicy
metadata: {name: payments-secrets}
spec:
  namespaceSelector:
    matchLabels: {team: payments}
    matchExpressions:
      - {key: tier, operator: NotIn, values: [sandbox]}
  initContainers: [{name: payments-secrets, image: "vault:1.18"}]
"""


@pytest.fixture
def restricted(write_policies: WritePolicies) -> PolicySet:
    logging = (SHIPPED_POLICIES / "logging.yaml").read_text()
    return load_policy_dir(write_policies(**{"payments-secrets": VAULT, "logging": logging}))


def inject_in(policies: PolicySet, labels: dict[str, str] | None, *,
              strict: bool = False) -> Any:
    pod = compliant_pod(Level.RESTRICTED, annotations={KEY: "payments-secrets,logging"})
    return mutate(pod, namespace="shop", policies=policies, namespace_labels=labels,
                  config=EngineConfig(selection=Selection(strict=strict)))


@pytest.mark.parametrize(("labels", "applied"), [
    pytest.param({"team": "payments"}, ("payments-secrets", "logging"), id="selected"),
    pytest.param({"team": "payments", "tier": "prod"}, ("payments-secrets", "logging"),
                 id="selected-notin-other-value"),
    pytest.param({"team": "payments", "tier": "sandbox"}, ("logging",), id="excluded-by-notin"),
    pytest.param({"team": "web"}, ("logging",), id="another-team"),
    pytest.param({}, ("logging",), id="no-labels"),
    pytest.param(None, ("logging",), id="labels-unknown-fail-closed"),
])
def test_a_restricted_policy_applies_only_in_the_namespaces_it_selects(
    restricted: PolicySet, labels: dict[str, str] | None, applied: tuple[str, ...],
) -> None:
    outcome = inject_in(restricted, labels)
    assert outcome.policies == applied
    if "payments-secrets" not in applied:
        pod = jsonpatch.apply_patch(compliant_pod(Level.RESTRICTED, annotations={
            KEY: "payments-secrets,logging"}), outcome.patch)
        assert json.loads(pod["metadata"]["annotations"][STATUS])["refused"] == {
            "payments-secrets": "namespace-not-allowed"}
        (warning,) = [w for w in outcome.warnings if "payments-secrets" in w]
        assert "team=payments,tier notin (sandbox)" in warning
        assert ("not known" in warning) is (labels is None)


def test_strict_denies_a_restricted_policy_outside_its_namespaces(restricted: PolicySet) -> None:
    outcome = inject_in(restricted, {"team": "web"}, strict=True)
    assert isinstance(outcome.decision, Deny)
    assert "namespace shop is not one of them" in (outcome.message or "")


@pytest.mark.parametrize(("expression", "message"), [
    pytest.param("{key: tier, operator: In}", "needs values", id="in-without-values"),
    pytest.param("{key: tier, operator: Exists, values: [a]}", "takes no values",
                 id="exists-with-values"),
    pytest.param("{key: tier, operator: Near, values: [a]}", "operator", id="unknown-operator"),
])
def test_an_invalid_namespace_selector_is_refused_with_file_and_line(
    write_policies: WritePolicies, expression: str, message: str,
) -> None:
    text = VAULT.replace("{key: tier, operator: NotIn, values: [sandbox]}", expression)
    with pytest.raises(PolicyError) as refused:
        load_policy_dir(write_policies(bad=text))
    (problem,) = refused.value.problems
    assert problem.startswith(str(write_policies()) + "/bad.yaml:")
    assert message in problem


def test_a_policy_left_out_by_one_rule_is_not_judged_again_by_the_next(
    write_policies: WritePolicies,
) -> None:
    restricted_scanner = SCANNER.replace(
        "spec:\n", "spec:\n  namespaceSelector: {matchLabels: {team: payments}}\n", 1)
    logging = (SHIPPED_POLICIES / "logging.yaml").read_text()
    policies = load_policy_dir(write_policies(scanner=restricted_scanner, logging=logging))
    pod = compliant_pod(Level.RESTRICTED, annotations={KEY: "scanner,logging"})
    outcome = mutate(pod, namespace="shop", policies=policies, pod_security=Level.BASELINE,
                     namespace_labels={"team": "web"}, config=EngineConfig())
    after = jsonpatch.apply_patch(pod, outcome.patch)
    assert json.loads(after["metadata"]["annotations"][STATUS])["refused"] == {
        "scanner": "namespace-not-allowed"}
    assert len([w for w in outcome.warnings if "'scanner'" in w]) == 1


@pytest.mark.parametrize(("expressions", "why"), [
    pytest.param("[{key: team, operator: DoesNotExist}]",
                 "'team' must be set and must not be set", id="label-and-does-not-exist"),
    pytest.param("[{key: team, operator: NotIn, values: [payments]}]",
                 "no value of 'team' meets all of team=payments,team notin (payments)",
                 id="label-and-not-in-it"),
    pytest.param("[{key: zone, operator: In, values: [a]}, {key: zone, operator: In, values: [b]}]",
                 "no value of 'zone' meets all of zone=a,zone=b", id="disjoint-ins"),
])
def test_policies_check_warns_about_a_selector_that_matches_nothing(
    write_policies: WritePolicies, expressions: str, why: str,
) -> None:
    old = "    matchExpressions:\n      - {key: tier, operator: NotIn, values: [sandbox]}\n"
    assert old in VAULT
    directory = write_policies(bad=VAULT.replace(old, f"    matchExpressions: {expressions}\n"))
    result = CliRunner().invoke(cli, ["policies", "check", str(directory)])
    assert result.exit_code == 0, result.output  # valid in Kubernetes, so not an error
    assert (f"warning: {directory}/bad.yaml:3: policy payments-secrets: spec.namespaceSelector "
            f"matches no namespace ({why}), so no pod can get it") in result.stderr


def test_policies_check_is_silent_about_a_selector_that_can_match(
    write_policies: WritePolicies,
) -> None:
    result = CliRunner().invoke(cli, ["policies", "check", str(write_policies(ok=VAULT))])
    assert result.exit_code == 0
    assert "warning" not in result.stderr


_KEYS = st.sampled_from(["a", "b"])
_VALUES = st.frozensets(st.sampled_from(["x", "y", "z"]), min_size=1)


@settings(max_examples=300)
@given(st.lists(st.builds(
    Requirement, _KEYS, st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]),
    _VALUES), max_size=4))
def test_a_selector_has_a_contradiction_exactly_when_no_labels_match(
    requirements: list[Requirement],
) -> None:
    selector = Selector(tuple(requirements))
    choices: list[str | None] = [None, "x", "y", "z", "other"]
    some = any(selector.matches({k: v for k, v in (("a", a), ("b", b)) if v is not None})
               for a in choices for b in choices)
    assert (selector.contradiction() is None) == some
