"""`sidecar-injector policies test`: the test-file format, its verdicts, goldens, JUnit, errors."""

from __future__ import annotations

import json
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT, SHIPPED_POLICIES
from tests.unit.test_properties import INJECT, pods
from webhook.cli import cli
from webhook.policytest import suite_schema

SHIPPED_TESTS = SHIPPED_POLICIES / "tests"
HEADER = """\
apiVersion: sidecar.company.com/v1alpha1
kind: InjectionTest
metadata:
  name: demo
spec:
  policies: {policies}
  cases:
"""
POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: web
  annotations: {sidecar.company.com/inject: logging}
spec:
  containers: [{name: web, image: nginx:1.27}]
"""


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, ["policies", "test", *map(str, args)])


def write_suite(directory: Path, cases: str, *, policies: Path = SHIPPED_POLICIES) -> Path:
    """A test file in `directory` with `cases` (YAML list items), and pod.yaml beside it."""
    (directory / "pod.yaml").write_text(POD)
    path = directory / "demo.test.yaml"
    path.write_text(HEADER.format(policies=policies) + textwrap.indent(
        textwrap.dedent(cases), "    "))
    return path


def test_the_shipped_policies_pass_their_own_tests() -> None:
    result = run(SHIPPED_TESTS)
    assert result.exit_code == 0, result.output
    tested = {path.name.removesuffix(".test.yaml") for path in SHIPPED_TESTS.glob("*.test.yaml")}
    shipped = {path.stem for path in SHIPPED_POLICIES.glob("*.yaml")}
    assert tested == shipped  # every shipped policy has a test file
    assert "0 failed" in result.output


def test_a_passing_case_exits_0(tmp_path: Path) -> None:
    suite = write_suite(tmp_path, """\
        - name: logging goes in
          manifest: pod.yaml
          expect:
            applied: [logging]
            initContainers: {present: [logging-agent]}
            containers: {present: [web], absent: [logging-agent]}
            volumes: {present: [logging-state]}
            env: [{container: web, name: LOG_DIR, value: /var/log/app}]
            noWarnings: true
        """)
    result = run(suite)
    assert result.exit_code == 0, result.output
    assert "1 cases in 1 files, 1 passed, 0 failed" in result.output


@pytest.mark.parametrize(("expect", "message"), [
    ("applied: [logging, metrics-exporter]",
     "expect.applied: got ['logging'], want ['logging', 'metrics-exporter']"),
    ("applied: []", "expect.applied: got ['logging'], want []"),
    ("skipped: unknown-policy", "expect.skipped: want unknown-policy, got injected"),
    ("refused: {logging: namespace-not-allowed}", "expect.refused: got {}"),
    ("denied: clash", "expect.denied: the pod was allowed (injected)"),
    ("warnings: [nothing like this]", "expect.warnings: no warning contains 'nothing like this'"),
    ("containers: {present: [logging-agent]}",
     "expect.containers.present: 'logging-agent' is not in spec.containers ['web']"),
    ("initContainers: {absent: [logging-agent]}",
     "expect.initContainers.absent: 'logging-agent' is in spec.initContainers"),
    ("volumes: {present: [nope]}", "expect.volumes.present: 'nope' is not in spec.volumes"),
    ("env: [{container: web, name: LOG_DIR, value: /elsewhere}]",
     "expect.env: web.LOG_DIR is '/var/log/app', want '/elsewhere'"),
    ("env: [{container: web, name: NOPE}]", "expect.env: container 'web' has no NOPE"),
    ("env: [{container: ghost, name: X}]", "expect.env: there is no container 'ghost'"),
])
def test_every_assertion_fails_when_the_result_differs(tmp_path: Path, expect: str,
                                                       message: str) -> None:
    suite = write_suite(tmp_path, f"""\
        - name: a wrong expectation
          manifest: pod.yaml
          expect:
            {expect}
        """)
    result = run(suite)
    assert result.exit_code == 1, result.output
    assert f"FAIL {suite}:8: case 'a wrong expectation'" in result.output
    assert message in result.output
    assert "0 passed, 1 failed" in result.output


def test_denied_and_warnings_match_the_engines_answer(tmp_path: Path) -> None:
    suite = write_suite(tmp_path, """\
        - name: strict denies an unknown policy
          strict: true
          object: {apiVersion: v1, kind: Pod, metadata: {name: x, annotations:
                   {sidecar.company.com/inject: nope}}, spec: {containers: [{name: a, image: b}]}}
          expect: {denied: "'nope'"}
        - name: without strict it is a warning
          object: {apiVersion: v1, kind: Pod, metadata: {name: x, annotations:
                   {sidecar.company.com/inject: nope}}, spec: {containers: [{name: a, image: b}]}}
          expect: {skipped: unknown-policy, warnings: ["'nope'"]}
        - name: a denied pod fails any case that does not expect it
          strict: true
          object: {apiVersion: v1, kind: Pod, metadata: {name: x, annotations:
                   {sidecar.company.com/inject: nope}}, spec: {containers: [{name: a, image: b}]}}
          expect: {noWarnings: true}
        """)
    result = run(suite)
    assert result.exit_code == 1
    assert "2 passed, 1 failed" in result.output
    assert "case 'a denied pod fails any case that does not expect it'" in result.output
    assert "Pod/x: the pod was denied: " in result.output


def test_the_namespace_context_reaches_the_engine(tmp_path: Path) -> None:
    restricted = tmp_path / "policies"
    restricted.mkdir()
    policy = yaml.safe_load((SHIPPED_POLICIES / "logging.yaml").read_text())
    policy["spec"]["namespaceSelector"] = {"matchLabels": {"team": "payments"}}
    (restricted / "logging.yaml").write_text(yaml.safe_dump(policy))
    suite = write_suite(tmp_path, """\
        - name: allowed in the team's namespace
          namespace: {name: pay, labels: {team: payments}}
          manifest: pod.yaml
          expect: {applied: [logging]}
        - name: refused elsewhere
          namespace: {name: shop, labels: {team: shop}}
          manifest: pod.yaml
          expect: {skipped: namespace-not-allowed, warnings: [namespace shop is not one of them]}
        - name: refused when the labels are not known
          manifest: pod.yaml
          expect: {skipped: namespace-not-allowed, warnings: [are not known]}
        """, policies=restricted)
    result = run(suite)
    assert result.exit_code == 0, result.output


def test_defaults_apply_to_every_case_and_a_case_overrides_them(tmp_path: Path) -> None:
    suite = write_suite(tmp_path, """\
        - name: the defaults' default policies
          object: {apiVersion: v1, kind: Pod, metadata: {name: x},
                   spec: {containers: [{name: a, image: b}]}}
          expect: {applied: [metrics-exporter]}
        - name: its own
          defaultPolicies: logging
          object: {apiVersion: v1, kind: Pod, metadata: {name: x},
                   spec: {containers: [{name: a, image: b}]}}
          expect: {applied: [logging]}
        """)
    text = suite.read_text().replace("  cases:\n", "  defaults: {defaultPolicies: metrics-exporter}"
                                                  "\n  cases:\n")
    suite.write_text(text)
    result = run(suite)
    assert result.exit_code == 0, result.output


def test_a_golden_is_written_by_update_and_then_compared(tmp_path: Path) -> None:
    suite = write_suite(tmp_path, """\
        - name: logging goes in
          manifest: pod.yaml
          expect: {golden: golden/web.yaml}
        """)
    missing = run(suite)
    assert missing.exit_code == 1
    assert "golden/web.yaml does not exist; run with --update to write it" in missing.output
    updated = run(suite, "--update")
    assert updated.exit_code == 0, updated.output
    golden = tmp_path / "golden" / "web.yaml"
    assert "updated" in updated.output
    assert '"policies":["logging"]' in golden.read_text()
    assert run(suite).exit_code == 0
    golden.write_text(golden.read_text().replace("image: fluent/fluent-bit", "image: other"))
    changed = run(suite)
    assert changed.exit_code == 1
    assert "expect.golden: the result differs (- golden, + actual):" in changed.output
    assert "-    image: other" in changed.output
    assert "+    image: fluent/fluent-bit" in changed.output


def test_warnings_and_denials_are_part_of_the_golden(tmp_path: Path) -> None:
    suite = write_suite(tmp_path, """\
        - name: unknown
          object: {apiVersion: v1, kind: Pod, metadata: {name: x, annotations:
                   {sidecar.company.com/inject: nope}}, spec: {containers: [{name: a, image: b}]}}
          expect: {golden: unknown.yaml}
        - name: a golden alone records a denial
          strict: true
          object: {apiVersion: v1, kind: Pod, metadata: {name: x, annotations:
                   {sidecar.company.com/inject: nope}}, spec: {containers: [{name: a, image: b}]}}
          expect: {golden: denied.yaml}
        """)
    assert run(suite, "--update").exit_code == 0
    text = (tmp_path / "unknown.yaml").read_text()
    assert text.startswith("# warning: inline:1: Pod/x: ")
    assert "'nope'" in text.splitlines()[0]
    denied = (tmp_path / "denied.yaml").read_text()
    assert denied.startswith("# error: inline:1: Pod/x: denied: ")
    assert run(suite).exit_code == 0


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(pod=pods(), chosen=st.lists(st.sampled_from(
    sorted(p.stem for p in SHIPPED_POLICIES.glob("*.yaml"))), unique=True, max_size=3))
def test_a_test_written_against_a_result_passes_after_update(
        tmp_path_factory: pytest.TempPathFactory, pod: dict[str, Any], chosen: list[str]) -> None:
    """With no policy change, `--update` leaves a golden byte for byte as it was, and every
    assertion taken from the first result still holds: the output and its order are stable."""
    directory = tmp_path_factory.mktemp("suite")
    pod.setdefault("metadata", {}).setdefault("annotations", {})[INJECT] = ",".join(chosen)
    suite = write_suite(directory, f"""\
        - name: generated
          object: {json.dumps(pod, ensure_ascii=False)}
          expect: {{golden: golden.yaml}}
        """)
    written = run(suite, "--update")
    assert written.exit_code == 0, written.output
    golden = directory / "golden.yaml"
    first = golden.read_text()
    injected = next(d for d in yaml.safe_load_all(first.split("\n---\n", 1)[-1]) if d)
    stamp = json.loads(injected["metadata"]["annotations"].get("sidecar.company.com/status",
                                                               "{}"))
    assertion = ("denied: 'injection policy'" if "\n# error: " in f"\n{first}"
                 else f"applied: {json.dumps(stamp.get('policies', []))}")
    text = suite.read_text().replace("{golden: golden.yaml}",
                                     f"{{golden: golden.yaml, {assertion}}}")
    suite.write_text(text)
    again = run(suite, "--update")
    assert again.exit_code == 0, again.output
    assert "updated" not in again.output
    assert golden.read_text() == first
    assert run(suite).exit_code == 0


def test_junit_xml_names_every_case_and_its_failure(tmp_path: Path) -> None:
    suite = write_suite(tmp_path, """\
        - name: passes
          manifest: pod.yaml
          expect: {applied: [logging]}
        - name: fails
          manifest: pod.yaml
          expect: {applied: []}
        """)
    report = tmp_path / "junit.xml"
    result = run(suite, "--junit", report)
    assert result.exit_code == 1
    root = ET.fromstring(report.read_text())
    assert root.get("tests") == "2"
    assert root.get("failures") == "1"
    cases = {case.get("name"): case for case in root.iter("testcase")}
    assert set(cases) == {"passes", "fails"}
    assert cases["passes"].find("failure") is None
    failure = cases["fails"].find("failure")
    assert failure is not None
    assert "expect.applied: got ['logging'], want []" in (failure.get("message") or "")
    assert cases["fails"].get("file") == f"{suite}:11"


@pytest.mark.parametrize(("case", "line", "message"), [
    ("- name: x\n  manifest: pod.yaml\n  expect: {applied: [logging]}\n  bogus: 1\n",
     11, "spec.cases[0].bogus: unknown key"),
    ("- name: x\n  manifest: pod.yaml\n  expect: {aplied: [logging]}\n",
     10, "spec.cases[0].expect.aplied: unknown key"),
    ("- name: x\n  manifest: missing.yaml\n  expect: {applied: [logging]}\n",
     9, "spec.cases[0].manifest: {dir}/missing.yaml: no such file"),
    ("- name: x\n  manifest: pod.yaml\n  expect: {}\n",
     10, "spec.cases[0].expect: says nothing: give a golden file or at least one assertion"),
    ("- name: x\n  manifest: pod.yaml\n  expect: {skipped: sleepy}\n",
     10, "spec.cases[0].expect.skipped: Input should be"),
    ("- name: x\n  manifest: pod.yaml\n  expect: {applied: [no-such-policy]}\n",
     10, "spec.cases[0].expect.applied: policy 'no-such-policy' is not in"),
    ("- name: x\n  manifest: pod.yaml\n  object: {kind: Pod}\n  expect: {applied: []}\n",
     8, "spec.cases[0]: give exactly one of manifest and object"),
    ("- name: x\n  object: {kind: ConfigMap}\n  expect: {applied: []}\n",
     8, "inline: holds no Pod nor workload with a pod template"),
    ("- name: x\n  kubeVersion: one\n  manifest: pod.yaml\n  expect: {applied: []}\n",
     9, "spec.cases[0].kubeVersion: 'one' is not a Kubernetes version"),
    ("- name: x\n  namespace: {name: a}\n  object: {kind: Pod, metadata: {namespace: b}}\n"
     "  expect: {applied: []}\n", 8, "is in namespace 'b', and the case's namespace.name is 'a'"),
])
def test_an_invalid_test_is_exit_2_with_file_and_line(tmp_path: Path, case: str, line: int,
                                                      message: str) -> None:
    suite = write_suite(tmp_path, case)
    result = run(suite)
    assert result.exit_code == 2, result.output
    assert f"error: {suite}:{line}: " in result.stderr
    assert message.format(dir=tmp_path) in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_invalid_policies_are_exit_2_with_their_own_file_and_line(tmp_path: Path) -> None:
    broken = tmp_path / "policies"
    broken.mkdir()
    (broken / "bad.yaml").write_text(
        "apiVersion: sidecar.company.com/v1alpha1\nkind: InjectionPolicy\nmetadata:\n"
        "  name: bad\nspec:\n  resources: {limits: {cpu: lots}}\n")
    suite = write_suite(tmp_path, "- name: x\n  manifest: pod.yaml\n  expect: {applied: []}\n",
                        policies=broken)
    result = run(suite)
    assert result.exit_code == 2
    assert f"{broken / 'bad.yaml'}:6: spec.resources.limits.cpu: 'lots' is not a quantity" in (
        result.stderr)
    assert "spec.policies:" in result.stderr


def test_a_missing_path_or_an_empty_directory_is_exit_2(tmp_path: Path) -> None:
    missing = run(tmp_path / "nope.test.yaml")
    assert missing.exit_code == 2
    assert "nope.test.yaml: no such file or directory" in missing.stderr
    empty = run(tmp_path)
    assert empty.exit_code == 2
    assert "no *.test.yaml files found" in empty.stderr


def test_policies_overrides_every_files_own(tmp_path: Path) -> None:
    case = "- name: x\n  manifest: pod.yaml\n  expect: {applied: [logging]}\n"
    suite = write_suite(tmp_path, case, policies=tmp_path / "does-not-exist")
    assert run(suite).exit_code == 2
    assert run(suite, "--policies", SHIPPED_POLICIES).exit_code == 0


def test_the_published_schema_is_the_models() -> None:
    published = json.loads((ROOT / "policies" / "test-schema.json").read_text())
    assert published == suite_schema()
    assert published["title"] == "InjectionTest"
