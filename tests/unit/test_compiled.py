"""`policies compile` offline: the compiled CEL, run by a real CEL implementation (tests.celeval),
decides every generated pod as the engine's selection does, and writes the same warning. (The
apiserver, in tests/e2e/test_compiled.py, is the final oracle.)"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.celeval import evaluate, run_variables
from tests.conftest import SHIPPED_POLICIES, WritePolicies
from tests.unit.test_compiled_injection import EXTRA
from webhook.cli import cli
from webhook.compiled import MAX_TEXT, PLAIN_NAME, Target, compile_policies
from webhook.compiled_injection import INJECT as INJECTED
from webhook.compiled_injection import literal
from webhook.engine import EngineConfig
from webhook.keys import Keys
from webhook.policy import PolicySet, load_policy_dir, revision
from webhook.render import skipped_status
from webhook.selection import (
    Deny,
    Inject,
    Selection,
    Skip,
    SkipReason,
    parse_policy_list,
    select,
)

KEYS = Keys()
POLICIES = load_policy_dir(SHIPPED_POLICIES)
NAMESPACE = "shop"
POD = "web"


def objects(policies: PolicySet, config: EngineConfig) -> dict[str, dict[str, Any]]:
    """The compiled objects by name."""
    compiled = compile_policies(policies, config, Target(own_namespace="sidecar-injector"))
    return {obj["metadata"]["name"]: obj for obj in compiled.objects}


ODD_NAMES = ["it's", "a\\b", 'say"x"', "\u200bx", "caf\u00e9", "tab\tin", "new\nline"]
NAMES = st.one_of(st.sampled_from([*POLICIES.names(), "nope", "other", "Logging"]),
                  st.sampled_from(ODD_NAMES))
SPACE = st.sampled_from(["", " ", "  ", "\t", "\xa0", "\u3000", "\x85", "\x1c", "\x1f"])
WORDS = st.sampled_from(["true", "TRUE", "enabled", "Enabled", "false", "False", ""])


@st.composite
def policy_lists(draw: st.DrawFn) -> str:
    items = draw(st.lists(st.one_of(NAMES, st.just("")), max_size=4))
    text = ",".join(draw(SPACE) + item + draw(SPACE) for item in items)
    return text * draw(st.sampled_from([1, 1, 1, 200]))  # now and then, a huge annotation


INJECT = st.one_of(st.none(), policy_lists(), st.builds(lambda a, w, b: a + w + b, SPACE, WORDS,
                                                         SPACE))


def left_to_the_webhook(texts: list[str], unknown: list[str]) -> bool:
    """The pods the compiled policy leaves to the webhook (webhook.compiled's MAX_TEXT,
    PYTHON_ONLY_SPACE, PLAIN_NAME): then the webhook decides, so both engines agree."""
    return (any(len(t) > MAX_TEXT or re.search("[\x1c-\x1f]", t) for t in texts)
            or any(not re.fullmatch(PLAIN_NAME, name) for name in unknown))


@settings(max_examples=400, deadline=None)
@given(inject=INJECT, namespace_policies=st.one_of(st.none(), policy_lists()),
       defaults=st.lists(NAMES, max_size=2, unique=True), strict=st.booleans(),
       bare=st.booleans(), stamped=st.booleans())
def test_the_compiled_selection_decides_as_the_engine(
    inject: str | None, namespace_policies: str | None, defaults: list[str], strict: bool,
    bare: bool, stamped: bool,
) -> None:
    """`bare`: a pod without annotations at all; `stamped`: one its author stamped already."""
    selection = Selection(keys=KEYS, default_policies=tuple(defaults), strict=strict,
                          own_namespace="sidecar-injector")
    config = EngineConfig(selection=selection)
    annotations = {} if inject is None else {KEYS.inject: inject}
    if stamped:
        annotations[KEYS.status] = '{"policies":[]}'
    metadata: dict[str, Any] = {"name": POD, "namespace": NAMESPACE}
    if annotations or not bare:
        metadata["annotations"] = annotations
    namespace_annotations = ({} if namespace_policies is None
                             else {KEYS.policies: namespace_policies})
    expected = select(metadata, namespace=NAMESPACE, settings=selection, known=POLICIES.policies,
                      namespace_policies=parse_policy_list(namespace_policies or ""))
    made = objects(POLICIES, config)
    engine = made["sidecar-injector"]["spec"]
    pod = {"metadata": metadata, "spec": {"containers": [{"name": "app", "image": "app:1"}]}}
    data = {"object": pod,
            "namespaceObject": {"metadata": {"name": NAMESPACE,
                                             "annotations": namespace_annotations}}}
    (condition,) = engine["matchConditions"]
    if not evaluate(condition["expression"], data):
        assert isinstance(expected, Skip)
        assert expected.reason is SkipReason.ALREADY_INJECTED
        return
    variables = run_variables(engine, data)
    decision = variables["decision"]
    if left_to_the_webhook([inject or "", namespace_policies or ""], variables["unknown"]):
        assert decision == ""
    elif isinstance(expected, Skip):
        assert decision == expected.reason.value
    else:  # injecting (every shipped policy compiles), or a strict denial (the deny policy's)
        assert isinstance(expected, Inject | Deny)
        assert decision == (INJECTED if isinstance(expected, Inject) else "")
    if strict:
        _check_the_denial(made["sidecar-injector-deny"]["spec"], data, expected,
                          left=left_to_the_webhook([inject or "", namespace_policies or ""],
                                                   variables["unknown"]))
    else:
        # only --on-conflict deny's clash denial (tests/unit/test_compiled_injection.py)
        assert len(made["sidecar-injector-deny"]["spec"]["validations"]) == 1
    warn = made["sidecar-injector-warn"]["spec"]
    stamp = (skipped_status(decision) if decision not in ("", INJECTED)
             else "injected, or left to the webhook")
    after = {**data, "object": {**pod, "metadata": {**metadata, "annotations": {
        **annotations, KEYS.status: stamp}}}}
    after["variables"] = run_variables(warn, after)
    warned = [evaluate(validation["messageExpression"], after)
              for validation in warn["validations"]
              if not evaluate(validation["expression"], after)]
    assert warned == (list(expected.warnings) if decision == SkipReason.UNKNOWN_POLICY.value
                      else [])


def _check_the_denial(deny: dict[str, Any], data: dict[str, Any], expected: object, *,
                      left: bool) -> None:
    """The deny policy runs after the engine policy stamped every pod it skips: it denies what
    the engine denies, with its message, unless the pod is left to the webhook."""
    variables = run_variables(deny, data)
    # --strict's (an unknown policy, then one restricted away: tests/unit/
    # test_compiled_injection.py), then --on-conflict deny's
    validation, _restricted, _clash = deny["validations"]
    assert validation["reason"] == "Forbidden"
    admits = evaluate(validation["expression"], {**data, "variables": variables})
    if isinstance(expected, Deny) and not left:
        assert not admits
        assert evaluate(validation["messageExpression"], {**data, "variables": variables}) == (
            expected.message)
    elif left or not isinstance(expected, Skip):
        assert admits
    # else a skip, which the engine policy stamped: the deny policy's matchCondition leaves it


def test_literals_are_cel_strings_lists_and_maps() -> None:
    for value in ["plain", 'quote " and \\ back', "ünï\tcode\n\x01", ["a", "b"], {"a": True}]:
        assert evaluate(literal(value), {}) == value


WINDOWS_ONLY = """\
apiVersion: sidecar.company.com/v1alpha1
kind: InjectionPolicy
metadata: {name: win-agent}
spec:
  os: [windows]
  initContainers: [{name: win-agent, image: "mcr.microsoft.com/windows/nanoserver:ltsc2022"}]
"""


def test_compile_names_each_policy_it_cannot_compile_and_exits_1(
    write_policies: WritePolicies,
) -> None:
    directory = write_policies(windows=WINDOWS_ONLY)
    for name in ("logging", "wait-for-database"):
        (directory / f"{name}.yaml").write_text((SHIPPED_POLICIES / f"{name}.yaml").read_text())
    result = CliRunner().invoke(cli, ["policies", "compile", "--policies", str(directory)])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "warning: POD_NAMESPACE is not set, so only the system namespaces are excluded: set it "
        "to the webhook's namespace (the chart's release namespace)",
        f"error: {directory / 'windows.yaml'}:3: policy 'win-agent': a policy for Windows pods "
        "only is not compiled yet"]
    hybrid = CliRunner().invoke(cli, ["policies", "compile", "--hybrid", "--policies",
                                      str(directory)])
    assert hybrid.exit_code == 0, hybrid.output
    assert (f"left to the webhook: {directory / 'windows.yaml'}:3: policy 'win-agent'"
            in hybrid.stderr)


def test_every_shipped_policy_compiles() -> None:
    result = CliRunner().invoke(cli, ["policies", "compile", "--policies", str(SHIPPED_POLICIES)],
                                env={"POD_NAMESPACE": "sidecar-injector"})
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "warning: left to the webhook, and admitted uninjected without one: pods with pod-level "
        "spec.resources over 8Ti, over 32 init containers or 8 resources; "
        "pods too large for the CEL cost limits (docs/spec.md)"]
    assert "kind: MutatingAdmissionPolicy\n" in result.stdout


def test_compile_names_the_pods_it_leaves_to_the_webhook_whatever_they_ask_for(
    write_policies: WritePolicies,
) -> None:
    """A policy that may break a Pod Security level, one restricted to some namespaces, one
    that supports Windows pods too, and --on-conflict skip's clashes."""
    directory = write_policies(dual=EXTRA["dual-agent"], privileged="""\
        apiVersion: sidecar.company.com/v1alpha1
        kind: InjectionPolicy
        metadata: {name: node-agent}
        spec:
          containers:
            - {name: node-agent, image: "busybox:1.37", securityContext: {privileged: true}}
        """, restricted="""\
        apiVersion: sidecar.company.com/v1alpha1
        kind: InjectionPolicy
        metadata: {name: vault-agent}
        spec:
          namespaceSelector: {matchLabels: {team: payments}}
          initContainers: [{name: vault-agent, image: "hashicorp/vault:1.18"}]
        """)
    result = CliRunner().invoke(cli, ["policies", "compile", "--policies", str(directory),
                                      "--on-conflict", "skip"],
                                env={"POD_NAMESPACE": "sidecar-injector"})
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "warning: left to the webhook, and admitted uninjected without one: pods with pod-level "
        "spec.resources over 8Ti, over 32 init containers or 8 resources; "
        "Windows pods asking for 'dual-agent'; pods too large for the CEL cost limits; name "
        "clashes under --on-conflict skip; pods in a namespace enforcing a Pod Security level "
        "that 'dual-agent', 'node-agent', 'vault-agent' may break; pods asking for "
        "'vault-agent' in a namespace its namespaceSelector excludes, along with a policy the "
        "namespace may use (docs/spec.md)"]
    hybrid = CliRunner().invoke(cli, ["policies", "compile", "--hybrid", "--policies",
                                      str(directory)], env={"POD_NAMESPACE": "sidecar-injector"})
    assert hybrid.stderr == ""


def test_hybrid_writes_the_objects_and_says_what_is_left_to_the_webhook(
    write_policies: WritePolicies,
) -> None:
    result = CliRunner().invoke(cli, ["policies", "compile", "--hybrid", "--strict",
                                      "--name", "injector", "--policies",
                                      str(write_policies(windows=WINDOWS_ONLY))])
    assert result.exit_code == 0, result.output
    assert "left to the webhook: " in result.stderr
    assert "--strict" not in result.stderr  # its denial is compiled
    assert "kind: MutatingAdmissionPolicy\nmetadata:\n  name: injector\n" in result.stdout
    assert "name: injector-warn-pod" in result.stdout
    assert "name: injector-deny-namespace" in result.stdout


def test_no_pod_opt_in_binds_opted_in_namespaces_only() -> None:
    config = EngineConfig()
    compiled = compile_policies(POLICIES, config, Target(pod_opt_in=False))
    bindings = [o["metadata"]["name"] for o in compiled.objects if o["kind"].endswith("Binding")]
    assert bindings == ["sidecar-injector-namespace", "sidecar-injector-warn-namespace",
                        "sidecar-injector-deny-namespace"]


@pytest.mark.parametrize("name", ["", "Injector", "bad name!", "-injector", "a" * 201])
def test_a_name_the_apiserver_would_refuse_exits_2_before_anything_is_written(
    name: str,
) -> None:
    message = (f"{name!r} cannot name the admission policies: use up to 200 lowercase letters, "
               "digits, '-' and '.', starting and ending with a letter or digit")
    compiled = CliRunner().invoke(cli, ["policies", "compile", "--name", name])
    assert (compiled.exit_code, compiled.stdout) == (2, "")
    assert compiled.stderr == f"error: --name {message}\n"
    served = CliRunner().invoke(cli, ["serve", "--engine", "hybrid", "--engine-name", name])
    assert served.exit_code == 2
    assert served.stderr == f"error: invalid settings: engine_name: Value error, {message}\n"


def test_an_owner_without_an_engine_that_applies_objects_exits_2() -> None:
    served = CliRunner().invoke(cli, ["serve", "--engine-owner", "injector"])
    assert served.exit_code == 2
    assert served.stderr == ("error: invalid settings: engine_owner: Value error, needs --engine "
                             "admission-policy or hybrid: with --engine webhook nothing is "
                             "applied for it to own\n")


def test_invalid_policies_are_the_same_file_line_errors_as_check(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("apiVersion: sidecar.company.com/v1\nkind: Nope\n")
    compiled = CliRunner().invoke(cli, ["policies", "compile", "--policies", str(tmp_path)])
    checked = CliRunner().invoke(cli, ["policies", "check", str(tmp_path)])
    assert compiled.exit_code == checked.exit_code == 1
    assert compiled.stderr == checked.stderr
    assert f"{tmp_path / 'bad.yaml'}:" in compiled.stderr


def test_compile_warns_when_the_webhooks_own_namespace_is_unknown() -> None:
    without = CliRunner().invoke(cli, ["policies", "compile", "--hybrid"],
                                 env={"POD_NAMESPACE": None})
    assert "warning: POD_NAMESPACE is not set" in without.stderr
    with_it = CliRunner().invoke(cli, ["policies", "compile", "--hybrid"],
                                 env={"POD_NAMESPACE": "injector"})
    assert "POD_NAMESPACE" not in with_it.stderr
    assert "- injector\n" in with_it.stdout  # excluded by every binding


def test_the_engine_policy_records_what_it_was_compiled_from() -> None:
    config = EngineConfig(selection=Selection(default_policies=("logging",), strict=True))
    engine = objects(POLICIES, config)["sidecar-injector"]
    recorded = json.loads(engine["metadata"]["annotations"]["sidecar.company.com/compiled-from"])
    assert recorded == {"policies": revision([POLICIES[n] for n in POLICIES.names()]),
                        "defaultPolicies": ["logging"], "strict": True, "onConflict": "deny",
                        "ownNamespace": None}


def test_check_cluster_without_cluster_access_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("SIDECAR_INJECTOR_KUBECONFIG", raising=False)
    result = CliRunner().invoke(cli, ["policies", "compile", "--hybrid", "--check-cluster"])
    assert result.exit_code == 2
    assert result.stderr == ("error: no cluster access: not running in a cluster and no "
                             "--kubeconfig given\n")
