"""`policies compile` offline: the compiled CEL, run by a real CEL implementation (cel-cpp, through
cel-expr-python), decides every generated pod as the engine's selection does, and writes the
same warning. (The apiserver, in tests/e2e/test_compiled.py, is the final oracle: this one has
none of Kubernetes' CEL libraries but `distinct`, supplied below.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cel_expr_python import cel
from cel_expr_python.ext import ext_strings
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import SHIPPED_POLICIES
from webhook.cli import cli
from webhook.compiled import Target, compile_policies, literal
from webhook.engine import EngineConfig
from webhook.keys import Keys
from webhook.policy import PolicySet, load_policy_dir
from webhook.render import skipped_status
from webhook.selection import Deny, Inject, Selection, Skip, parse_policy_list, select

KEYS = Keys()
POLICIES = load_policy_dir(SHIPPED_POLICIES)
NAMESPACE = "shop"
POD = "web"


def _distinct(values: list[Any]) -> list[Any]:
    kept: list[Any] = []
    for value in values:
        if value not in kept:
            kept.append(value)
    return kept


ENV = cel.NewEnv(
    variables={name: cel.Type.DYN for name in ("object", "namespaceObject", "variables")},
    extensions=[ext_strings.ExtStrings()],
    functions=[cel.FunctionDecl("distinct", [cel.Overload(
        "list_distinct", return_type=cel.Type.List(cel.Type.DYN),
        parameters=[cel.Type.List(cel.Type.DYN)], is_member=True, impl=_distinct)])],
)


def objects(policies: PolicySet, config: EngineConfig) -> dict[str, dict[str, Any]]:
    compiled = compile_policies(policies, config, Target(own_namespace="sidecar-injector"))
    return {obj["kind"]: obj for obj in compiled.objects}


def evaluate(expression: str, data: dict[str, Any]) -> Any:
    return ENV.compile(expression).eval(data=data).plain_value()


def run_variables(spec: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """Each variable of a policy's spec, in order, each seeing the ones before it."""
    variables: dict[str, Any] = {}
    for variable in spec["variables"]:
        variables[variable["name"]] = evaluate(variable["expression"],
                                               {**data, "variables": variables})
    return variables


NAMES = st.sampled_from([*POLICIES.names(), "nope", "other", "Logging"])
SPACE = st.sampled_from(["", " ", "  ", "\t"])
WORDS = st.sampled_from(["true", "TRUE", "enabled", "Enabled", "false", "False", ""])


@st.composite
def policy_lists(draw: st.DrawFn) -> str:
    items = draw(st.lists(st.one_of(NAMES, st.just("")), max_size=4))
    return ",".join(draw(SPACE) + item + draw(SPACE) for item in items)


INJECT = st.one_of(st.none(), policy_lists(), st.builds(lambda a, w, b: a + w + b, SPACE, WORDS,
                                                         SPACE))


@settings(max_examples=300, deadline=None)
@given(inject=INJECT, namespace_policies=st.one_of(st.none(), policy_lists()),
       defaults=st.lists(NAMES, max_size=2, unique=True), strict=st.booleans())
def test_the_compiled_selection_decides_as_the_engine(
    inject: str | None, namespace_policies: str | None, defaults: list[str], strict: bool,
) -> None:
    selection = Selection(keys=KEYS, default_policies=tuple(defaults), strict=strict,
                          own_namespace="sidecar-injector")
    config = EngineConfig(selection=selection)
    annotations = {} if inject is None else {KEYS.inject: inject}
    metadata = {"name": POD, "namespace": NAMESPACE, "annotations": annotations}
    namespace_annotations = ({} if namespace_policies is None
                             else {KEYS.policies: namespace_policies})
    expected = select(metadata, namespace=NAMESPACE, settings=selection, known=POLICIES.policies,
                      namespace_policies=parse_policy_list(namespace_policies or ""))
    made = objects(POLICIES, config)
    data = {"object": {"metadata": metadata},
            "namespaceObject": {"metadata": {"name": NAMESPACE,
                                             "annotations": namespace_annotations}}}
    decision = run_variables(made["MutatingAdmissionPolicy"]["spec"], data)["decision"]
    if isinstance(expected, Skip):
        assert decision == expected.reason.value
    else:  # injecting, or a strict denial: left to the webhook
        assert isinstance(expected, Inject | Deny)
        assert decision == ""
    warn = made["ValidatingAdmissionPolicy"]["spec"]
    stamp = skipped_status(decision) if decision else "injected, or left to the webhook"
    stamped = {**metadata, "annotations": {**annotations, KEYS.status: stamp}}
    validation = warn["validations"][0]
    warned_data = {**data, "object": {"metadata": stamped}}
    warned_data["variables"] = run_variables(warn, warned_data)
    passes = evaluate(validation["expression"], warned_data)
    if passes:
        assert expected.warnings == ()
    else:
        assert [evaluate(validation["messageExpression"], warned_data)] == list(expected.warnings)


def test_literals_are_cel_strings_lists_and_maps() -> None:
    for value in ["plain", 'quote " and \\ back', "ünï\tcode\n\x01", ["a", "b"], {"a": True}]:
        assert evaluate(literal(value), {}) == value


def test_compile_names_each_policy_it_cannot_compile_and_exits_1() -> None:
    result = CliRunner().invoke(cli, ["policies", "compile", "--policies", str(SHIPPED_POLICIES)])
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == len(POLICIES)
    logging = POLICIES["logging"].source
    assert f"error: {logging}: policy 'logging': injecting a policy is not compiled yet" in (
        result.stderr)


def test_hybrid_writes_the_objects_and_says_what_is_left_to_the_webhook() -> None:
    result = CliRunner().invoke(cli, ["policies", "compile", "--hybrid", "--strict",
                                      "--name", "injector"])
    assert result.exit_code == 0, result.output
    assert "left to the webhook: --strict: " in result.stderr
    assert "kind: MutatingAdmissionPolicy\nmetadata:\n  name: injector\n" in result.stdout
    assert "name: injector-warn-pod" in result.stdout


def test_no_pod_opt_in_binds_opted_in_namespaces_only() -> None:
    config = EngineConfig()
    compiled = compile_policies(POLICIES, config, Target(pod_opt_in=False))
    bindings = [o["metadata"]["name"] for o in compiled.objects if o["kind"].endswith("Binding")]
    assert bindings == ["sidecar-injector-namespace", "sidecar-injector-warn-namespace"]


def test_invalid_policies_are_the_same_file_line_errors_as_check(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("apiVersion: sidecar.company.com/v1\nkind: Nope\n")
    compiled = CliRunner().invoke(cli, ["policies", "compile", "--policies", str(tmp_path)])
    checked = CliRunner().invoke(cli, ["policies", "check", str(tmp_path)])
    assert compiled.exit_code == checked.exit_code == 1
    assert compiled.stderr == checked.stderr
    assert f"{tmp_path / 'bad.yaml'}:" in compiled.stderr
