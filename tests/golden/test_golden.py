"""Golden tests: every corpus manifest and shipped example, injected, equals its checked-in result.

Inputs: `tests/golden/corpus/<case>.yaml` and `examples/<policy>.yaml`. Expected results sit
beside the goldens as `<case>.yaml.injected`: the `inject` CLI's stderr lines and exit code as
`#` comments, then its stdout. Refresh with `make golden` (REFRESH_GOLDEN=true) and review the
diff. Every output is also checked against the strict Kubernetes schema, injected again to prove
idempotency, and no golden may outlive its input.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from tests.conftest import ROOT, SHIPPED_POLICIES
from webhook import k8s_schema
from webhook.cli import cli

GOLDEN = Path(__file__).resolve().parent
CORPUS = GOLDEN / "corpus"
EXAMPLES = ROOT / "examples"
EXPECTED_EXAMPLES = GOLDEN / "examples"
REFRESH = os.environ.get("REFRESH_GOLDEN", "").lower() in {"1", "true", "yes"}
#: What the corpus runs with: the server's `--default-policies` for pods that name none.
DEFAULTS = "logging"


def cases() -> list[Any]:
    pairs = [(p, CORPUS / f"{p.name}.injected") for p in sorted(CORPUS.glob("*.yaml"))]
    pairs += [
        (p, EXPECTED_EXAMPLES / f"{p.name}.injected") for p in sorted(EXAMPLES.glob("*.yaml"))
    ]
    return [pytest.param(src, exp, id=f"{src.parent.name}/{src.stem}") for src, exp in pairs]


def run_inject(source: Path | None, text: str | None = None) -> tuple[int, str, str]:
    args = ["inject", "-f", str(source) if source else "-", "--policies", str(SHIPPED_POLICIES),
            "--default-policies", DEFAULTS]
    result = CliRunner().invoke(cli, args, input=text)
    return result.exit_code, result.stdout, result.stderr


def render_golden(code: int, stdout: str, stderr: str) -> str:
    header = [f"# exit: {code}"] + [f"# {line}" for line in stderr.splitlines()]
    return "\n".join(header) + "\n" + stdout


def test_the_corpus_is_big_enough() -> None:
    assert len(list(CORPUS.glob("*.yaml"))) >= 25
    assert len(list(EXAMPLES.glob("*.yaml"))) >= 11


@pytest.mark.parametrize(("source", "expected"), cases())
def test_injected_output_matches_the_golden(source: Path, expected: Path) -> None:
    code, stdout, stderr = run_inject(source)
    assert "Traceback" not in stderr
    actual = render_golden(code, stdout, stderr.replace(str(source), source.name))
    if REFRESH:
        expected.parent.mkdir(parents=True, exist_ok=True)
        expected.write_text(actual, encoding="utf-8")
    assert expected.exists(), f"no golden for {source.name}: run `make golden` and review it"
    wanted = expected.read_text(encoding="utf-8")
    if actual != wanted:
        diff = difflib.unified_diff(wanted.splitlines(), actual.splitlines(), str(expected),
                                    "actual", lineterm="")
        pytest.fail("injected output differs from the golden:\n" + "\n".join(diff))


@pytest.mark.parametrize(("source", "expected"), cases())
def test_injected_output_is_a_valid_kubernetes_object(source: Path, expected: Path) -> None:
    _, stdout, _ = run_inject(source)
    for document in yaml.safe_load_all(stdout):
        for obj in document.get("items", [document]) if document["kind"] == "List" else [document]:
            validator = k8s_schema.object_validator(obj["kind"], obj["apiVersion"])
            errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
                      for e in validator.iter_errors(obj)]
            assert errors == [], f"{source.name}: {obj['kind']} fails the strict schema"


@pytest.mark.parametrize(("source", "expected"), cases())
def test_injecting_the_output_again_changes_nothing(source: Path, expected: Path) -> None:
    _, once, _ = run_inject(source)
    _, twice, _ = run_inject(None, once)
    assert twice == once


def test_no_golden_outlives_its_input() -> None:
    inputs = {f"{p.name}.injected" for p in CORPUS.glob("*.yaml")}
    inputs |= {f"{p.name}.injected" for p in EXAMPLES.glob("*.yaml")}
    goldens = list(CORPUS.glob("*.injected")) + list(EXPECTED_EXAMPLES.glob("*.injected"))
    stale = sorted(str(p.relative_to(GOLDEN)) for p in goldens if p.name not in inputs)
    assert stale == [], "stale goldens: delete them"


def test_every_shipped_policy_has_an_example() -> None:
    policies = {p.stem for p in SHIPPED_POLICIES.glob("*.yaml")}
    examples = {p.stem for p in EXAMPLES.glob("*.yaml")}
    assert policies <= examples, f"policies without an example: {sorted(policies - examples)}"
