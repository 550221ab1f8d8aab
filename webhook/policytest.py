"""`sidecar-injector policies test`: test files for users' own policies, run through the engine.

A test file is a YAML document of kind `InjectionTest` (schema: `policies/test-schema.json`). Each
case names a manifest (a path beside the test file, or an inline object), the context the webhook
would see (namespace, `--default-policies`, kube version, prefix, strict, on-conflict), and what
to expect: a golden file and/or assertions. A case runs exactly what `inject` runs
(`offline.inject_text`, hence `engine.mutate`), so a passing test means the webhook answers the
same.

    load (file:line problems -> SuiteError) -> run each case -> CaseResult -> report, JUnit

Failures name the case and its `file:line`; `--update` rewrites the goldens, whose text is stable
(keys in the engine's order, warnings in the engine's order), so a test written against a result
still passes after `--update` when no policy changed.
"""

from __future__ import annotations

import difflib
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from webhook.engine import EngineConfig
from webhook.errors import InputError, PolicyError, SuiteError
from webhook.keys import DEFAULT_PREFIX, Keys
from webhook.offline import Report, inject_text
from webhook.podsecurity import ENFORCE_LABEL, parse_level
from webhook.policy import DNS1123_LABEL, PolicySet, load_policy_dir
from webhook.selection import Selection, Skip, SkipReason, parse_policy_list
from webhook.settings import parse_kube_version, shipped_policies
from webhook.workloads import pod_slots
from webhook.yamlsource import Document, format_path, load_documents, read_documents

API_VERSION = "sidecar.company.com/v1alpha1"
KIND = "InjectionTest"
#: What a directory given to `policies test` is searched for, recursively.
TEST_FILE_SUFFIX = ".test.yaml"
#: The skip reasons a stamp can name (the ones a test can expect).
STAMPED_REASONS = tuple(reason.value for reason in SkipReason if reason.stamped)


# ---------------------------------------------------------------------------------------------
# The file format


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


class NamespaceContext(_Model):
    """The namespace the pod is created in, as the webhook's Namespace watch would see it."""

    name: str | None = Field(default=None, description=(
        "The namespace of objects that name none [default: the object's, else `default`]."))
    labels: dict[str, str] | None = Field(default=None, description=(
        "Its labels (`pod-security.kubernetes.io/enforce`, those a policy's namespaceSelector "
        "reads). Absent: not known, as without cluster access."))
    annotations: dict[str, str] | None = Field(default=None, description=(
        "Its annotations; `P/policies` gives its default policies. Absent: not known."))


class Context(_Model):
    """What the server's flags and the cluster would be for a case."""

    namespace: NamespaceContext | None = None
    default_policies: str | None = Field(default=None, description=(
        "The server's --default-policies, e.g. `logging,metrics-exporter`."))
    kube_version: str | None = Field(default=None, description=(
        "The cluster version, for sidecarMode: auto, e.g. `1.28` [default: native sidecars]."))
    prefix: str | None = Field(default=None, description=f"[default: {DEFAULT_PREFIX}]")
    strict: bool | None = Field(default=None, description="The server's --strict.")
    on_conflict: Literal["deny", "skip"] | None = Field(default=None, description=(
        "The server's --on-conflict [default: deny]."))


class Names(_Model):
    """Names that must be there, and names that must not."""

    present: list[str] = Field(default_factory=list)
    absent: list[str] = Field(default_factory=list)


class EnvValue(_Model):
    """An env variable in a named container (init or regular) of the injected pod."""

    container: str
    name: str
    value: str | None = Field(default=None, description="Its value; absent: only that it is set.")


class Expectation(_Model):
    """What the injected pod must look like. Every assertion holds for every pod in the
    manifest (a Pod, or a workload's pod template)."""

    golden: str | None = Field(default=None, description=(
        "A file beside the test file that holds the whole result: the warnings and denials as "
        "`#` lines, then the YAML. `policies test --update` writes it."))
    applied: list[str] | None = Field(default=None, description=(
        "Exactly these policies are applied, in this order ([] for none)."))
    skipped: Literal[STAMPED_REASONS] | None = Field(  # type: ignore[valid-type]
        default=None, description="Nothing is injected, and the stamp names this reason.")
    refused: dict[str, str] | None = Field(default=None, description=(
        "Exactly these policies were left out of an injection that went ahead, with their "
        "reasons (the stamp's `refused`)."))
    denied: str | None = Field(default=None, description=(
        "The pod is denied, with a message that contains this text."))
    warnings: list[str] = Field(default_factory=list, description=(
        "Each text is contained in some warning."))
    no_warnings: bool = Field(default=False, description="There are no warnings at all.")
    containers: Names | None = Field(default=None, description="Names in spec.containers.")
    init_containers: Names | None = Field(default=None, description=(
        "Names in spec.initContainers, where native sidecars live."))
    volumes: Names | None = Field(default=None, description="Names in spec.volumes.")
    env: list[EnvValue] = Field(default_factory=list)

    @model_validator(mode="after")
    def _says_something(self) -> Expectation:
        if not self.model_fields_set:
            raise ValueError("says nothing: give a golden file or at least one assertion")
        if self.denied is not None and (self.applied or self.skipped):
            raise ValueError("a denied pod has nothing applied or skipped: remove one of them")
        return self


class Case(Context):
    """One pod (or workload) in, what to expect out."""

    name: str = Field(min_length=1)
    manifest: str | None = Field(default=None, description="A manifest file, beside this one.")
    object: dict[str, Any] | None = Field(default=None, description="An inline manifest.")
    expect: Expectation

    @model_validator(mode="after")
    def _one_input(self) -> Case:
        if (self.manifest is None) == (self.object is None):
            raise ValueError("give exactly one of manifest and object")
        return self


class SuiteMetadata(_Model):
    name: str = Field(pattern=DNS1123_LABEL, max_length=63)


class SuiteSpec(_Model):
    policies: str | None = Field(default=None, description=(
        "The policies directory, beside this file [default: --policies, else the shipped ones]."))
    defaults: Context = Field(default_factory=Context, description=(
        "Context every case starts from; a case's own keys replace these."))
    cases: list[Case] = Field(min_length=1)


class InjectionTest(_Model):
    """One `InjectionTest` document."""

    api_version: Literal["sidecar.company.com/v1alpha1"]
    kind: Literal["InjectionTest"]
    metadata: SuiteMetadata
    spec: SuiteSpec


def suite_schema() -> dict[str, Any]:
    """The JSON Schema of a test document (`policies/test-schema.json`)."""
    schema = InjectionTest.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://sidecar.company.com/schemas/injectiontest-v1alpha1.json"
    schema["title"] = KIND
    return dict(sorted(schema.items()))


# ---------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True, slots=True)
class LoadedCase:
    """A case with everything resolved: its input text, context and where it is written."""

    case: Case
    suite: str
    where: str  # file:line of the case
    source: str  # how its manifest is named in warnings: the path as written, or `inline`
    text: str
    golden: Path | None
    policies: PolicySet
    config: EngineConfig
    namespace: str
    namespace_policies: tuple[str, ...] | None
    namespace_labels: dict[str, str] | None


def find_test_files(paths: Iterable[Path]) -> list[Path]:
    """Files as given; directories searched for `*.test.yaml`. SuiteError for a missing one."""
    found: list[Path] = []
    problems = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob(f"*{TEST_FILE_SUFFIX}") if p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            problems.append(f"{path}: no such file or directory")
    if problems:
        raise SuiteError(problems)
    if not found:
        raise SuiteError([f"{', '.join(map(str, paths))}: no *{TEST_FILE_SUFFIX} files found"])
    return found


def load_cases(files: Sequence[Path], *, policies_dir: Path | None) -> list[LoadedCase]:
    """Every case of `files`, resolved; SuiteError with every `file:line` problem, or with
    the policies' own problems when a policy set cannot be loaded."""
    cases: list[LoadedCase] = []
    problems: list[str] = []
    loaded: dict[Path, PolicySet] = {}
    for path in files:
        try:
            documents = read_documents(path, str(path))
        except InputError as exc:
            problems.append(str(exc))
            continue
        for document in documents:
            test, found = _parse(document, str(path))
            problems += found
            if test is None:
                continue
            directory = policies_dir or (
                path.parent / test.spec.policies if test.spec.policies else shipped_policies())
            directory = directory.resolve()
            if directory not in loaded:
                try:
                    loaded[directory] = load_policy_dir(directory)
                except PolicyError as exc:
                    where = f"{path}:{document.line_of(('spec', 'policies'))}"
                    problems += [f"{where}: spec.policies: {directory}: cannot be loaded"]
                    problems += exc.problems
                    continue
            for index, case in enumerate(test.spec.cases):
                at = ("spec", "cases", index)
                resolved, found = _resolve(case, test=test, path=path, document=document,
                                           at=at, policies=loaded[directory])
                problems += found
                if resolved is not None:
                    cases.append(resolved)
    if problems:
        raise SuiteError(list(dict.fromkeys(problems)))
    return cases


def _parse(document: Document, label: str) -> tuple[InjectionTest | None, list[str]]:
    if not isinstance(document.value, dict):
        return None, [f"{label}:{document.line}: a test must be a mapping, not "
                      f"{type(document.value).__name__}"]
    try:
        return InjectionTest.model_validate(document.value), []
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            path = tuple(p for p in error["loc"] if isinstance(p, str | int))
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown key; see `sidecar-injector policies schema --test`"
            elif error["type"] == "literal_error":
                message = f"{message}, not {error['input']!r}"
            where = format_path(path) or "(document)"
            problems.append(f"{label}:{document.line_of(path)}: {where}: {message}")
        return None, problems


def _resolve(case: Case, *, test: InjectionTest, path: Path, document: Document,
             at: tuple[str | int, ...], policies: PolicySet,
             ) -> tuple[LoadedCase | None, list[str]]:
    file = str(path)
    where = f"{file}:{document.line_of(at)}"
    problems: list[str] = []

    def problem(key: tuple[str | int, ...], message: str) -> None:
        problems.append(f"{file}:{document.line_of((*at, *key))}: "
                        f"{format_path((*at, *key))}: {message}")

    context = _merged(test.spec.defaults, case)
    if case.manifest is not None:
        manifest = path.parent / case.manifest
        try:
            text = manifest.read_text(encoding="utf-8")
        except FileNotFoundError:
            problem(("manifest",), f"{manifest}: no such file")
            text = ""
        except (OSError, UnicodeDecodeError) as exc:
            problem(("manifest",), f"{manifest}: cannot read: {exc}")
            text = ""
        source = case.manifest
    else:
        text, source = yaml.safe_dump(case.object, sort_keys=False), "inline"
    expect = case.expect
    known = set(policies.names())
    for key, names in (("applied", expect.applied or []), ("refused", expect.refused or {})):
        for name in names:
            if name not in known:
                problem(("expect", key), f"policy {name!r} is not in {policies.source}")
    for name, reason in (expect.refused or {}).items():
        if reason not in STAMPED_REASONS:
            problem(("expect", "refused", name), f"{reason!r} is not a reason "
                                                 f"({', '.join(STAMPED_REASONS)})")
    try:
        kube_version = parse_kube_version(context.kube_version)
    except ValueError as exc:
        problem(("kubeVersion",), str(exc))
        kube_version = None
    namespace = context.namespace or NamespaceContext()
    keys = Keys(context.prefix or DEFAULT_PREFIX)
    annotations = namespace.annotations
    config = EngineConfig(
        selection=Selection(keys=keys, strict=bool(context.strict),
                            default_policies=parse_policy_list(context.default_policies or "")),
        on_conflict=context.on_conflict or "deny", kube_version=kube_version)
    golden = path.parent / expect.golden if expect.golden else None
    if text:
        problems += [f"{where}: {message}" for message in _manifest_problems(
            text, source, namespace.name)]
    if problems:
        return None, problems
    return LoadedCase(
        case=case, suite=f"{path}:{test.metadata.name}", where=where, source=source, text=text,
        golden=golden, policies=policies, config=config, namespace=namespace.name or "",
        namespace_policies=(parse_policy_list(annotations.get(keys.policies, ""))
                            if annotations is not None else None),
        namespace_labels=namespace.labels), []


def _manifest_problems(text: str, source: str, namespace: str | None) -> list[str]:
    """Why a case's manifest cannot be a test input: unreadable, no pod in it, or a pod in
    another namespace than the case's."""
    try:
        documents = load_documents(text, source)
    except InputError as exc:
        return [str(exc)]
    objects = [d.value for d in documents if isinstance(d.value, dict)]
    slots = [slot for obj in objects for slot in pod_slots(obj)]
    if not slots:
        return [f"{source}: holds no Pod nor workload with a pod template"]
    return [f"{source}: {slot.label} is in namespace {slot.namespace!r}, and the case's "
            f"namespace.name is {namespace!r}; remove one of them"
            for slot in slots if namespace and slot.namespace and slot.namespace != namespace]


def _merged(defaults: Context, case: Case) -> Context:
    """`defaults` with the keys `case` sets replaced."""
    own = {key: getattr(case, key) for key in case.model_fields_set if key in Context.model_fields}
    return defaults.model_copy(update=own)


# ---------------------------------------------------------------------------------------------
# Running


@dataclass(slots=True)
class CaseResult:
    """A case's verdict: what failed (empty when it passed), and the golden text it produced."""

    case: LoadedCase
    failures: list[str] = field(default_factory=list)
    actual: str = ""
    updated: bool = False

    @property
    def passed(self) -> bool:
        return not self.failures


def run_case(loaded: LoadedCase, *, update: bool = False) -> CaseResult:
    """Inject the case's manifest as the webhook would, then check every expectation."""
    result = CaseResult(loaded)
    labels = loaded.namespace_labels
    try:
        report = inject_text(
            loaded.text, source=loaded.source, policies=loaded.policies, config=loaded.config,
            namespace=loaded.namespace or "default", namespace_policies=loaded.namespace_policies,
            namespace_labels=labels,
            pod_security=parse_level(labels.get(ENFORCE_LABEL)) if labels is not None else None)
    except InputError as exc:  # checked at load; a manifest changed since is a failure
        result.failures.append(f"the manifest cannot be read: {exc}")
        return result
    result.actual = golden_text(report)
    result.failures += list(_check(loaded, report))
    if loaded.golden is not None:
        _compare_golden(loaded.golden, result, update=update)
    return result


def golden_text(report: Report) -> str:
    """The whole result of a case as text: warnings and denials as `#` lines, then the YAML."""
    header = [f"# warning: {line}" for line in report.warnings]
    header += [f"# error: {line}" for line in report.errors]
    return "".join(f"{line}\n" for line in header) + report.output


def _compare_golden(golden: Path, result: CaseResult, *, update: bool) -> None:
    try:
        expected = golden.read_text(encoding="utf-8")
    except FileNotFoundError:
        expected = None
    if expected == result.actual:
        return
    if update:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(result.actual, encoding="utf-8")
        result.updated = True
        return
    if expected is None:
        result.failures.append(f"expect.golden: {golden} does not exist; run with --update "
                               "to write it")
        return
    diff = difflib.unified_diff(expected.splitlines(keepends=True),
                                result.actual.splitlines(keepends=True),
                                fromfile=str(golden), tofile="actual")
    result.failures.append("expect.golden: the result differs (- golden, + actual):\n"
                           + "".join(diff).rstrip("\n"))


def _check(loaded: LoadedCase, report: Report) -> Iterator[str]:
    expect = loaded.case.expect
    status_key = loaded.config.selection.keys.status
    pods = [slot.pod for obj in report.objects for slot in pod_slots(obj)]
    for (label, outcome), pod in zip(report.outcomes, pods, strict=True):
        if expect.denied is not None:
            if outcome.allowed:
                yield f"{label}: expect.denied: the pod was allowed ({outcome.result})"
            elif expect.denied not in (outcome.message or ""):
                yield (f"{label}: expect.denied: the message does not contain "
                       f"{expect.denied!r}: {outcome.message}")
        elif not outcome.allowed:
            if expect.model_fields_set - {"golden"}:  # a golden alone records the denial
                yield f"{label}: the pod was denied: {outcome.message}"
            continue
        stamp = _stamp(pod, status_key)
        if expect.applied is not None and list(outcome.policies) != expect.applied:
            yield f"{label}: expect.applied: got {list(outcome.policies)}, want {expect.applied}"
        if expect.skipped is not None:
            got = outcome.decision.reason.value if isinstance(outcome.decision, Skip) else None
            if got != expect.skipped:
                yield (f"{label}: expect.skipped: want {expect.skipped}, got "
                       f"{got or outcome.result}")
        if expect.refused is not None and stamp.get("refused", {}) != expect.refused:
            yield f"{label}: expect.refused: got {stamp.get('refused', {})}, want {expect.refused}"
        spec = pod.get("spec") or {}
        for key, names in (("containers", expect.containers),
                           ("initContainers", expect.init_containers),
                           ("volumes", expect.volumes)):
            if names is not None:
                yield from _names(label, key, spec.get(key) or [], names)
        for env in expect.env:
            yield from _env(label, spec, env)
    for text in expect.warnings:
        if not any(text in warning for warning in report.warnings):
            yield f"expect.warnings: no warning contains {text!r}; got {report.warnings or 'none'}"
    if expect.no_warnings and report.warnings:
        yield f"expect.noWarnings: got {report.warnings}"


def _stamp(pod: dict[str, Any], status_key: str) -> dict[str, Any]:
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(status_key)
    try:
        stamp = json.loads(raw) if isinstance(raw, str) else {}
    except ValueError:
        return {}
    return stamp if isinstance(stamp, dict) else {}


def _names(label: str, key: str, items: list[Any], expected: Names) -> Iterator[str]:
    names = [item.get("name") for item in items if isinstance(item, dict)]
    for name in expected.present:
        if name not in names:
            yield f"{label}: expect.{key}.present: {name!r} is not in spec.{key} {names}"
    for name in expected.absent:
        if name in names:
            yield f"{label}: expect.{key}.absent: {name!r} is in spec.{key}"


def _env(label: str, spec: dict[str, Any], expected: EnvValue) -> Iterator[str]:
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    found = [c for c in containers if isinstance(c, dict) and c.get("name") == expected.container]
    if not found:
        yield f"{label}: expect.env: there is no container {expected.container!r}"
        return
    values = {e.get("name"): e for e in found[0].get("env") or [] if isinstance(e, dict)}
    var = values.get(expected.name)
    if var is None:
        yield f"{label}: expect.env: container {expected.container!r} has no {expected.name}"
    elif expected.value is not None and var.get("value") != expected.value:
        yield (f"{label}: expect.env: {expected.container}.{expected.name} is "
               f"{var.get('value')!r}, want {expected.value!r}")


# ---------------------------------------------------------------------------------------------
# Reporting


def failure_text(result: CaseResult) -> str:
    """What a failed case prints: `FAIL file:line: case NAME`, then each failure, indented."""
    lines = [f"FAIL {result.case.where}: case {result.case.case.name!r}"]
    for failure in result.failures:
        lines += [f"    {line}" for line in failure.splitlines()]
    return "\n".join(lines)


def junit_xml(results: Sequence[CaseResult]) -> str:
    """The results as JUnit XML: a testsuite per test file, a testcase per case."""
    root = ET.Element("testsuites", name="sidecar-injector policies test",
                      tests=str(len(results)),
                      failures=str(sum(not r.passed for r in results)))
    suites: dict[str, ET.Element] = {}
    for result in results:
        suite = suites.get(result.case.suite)
        if suite is None:
            suite = suites[result.case.suite] = ET.SubElement(
                root, "testsuite", name=result.case.suite, tests="0", failures="0")
        suite.set("tests", str(int(suite.get("tests", "0")) + 1))
        case = ET.SubElement(suite, "testcase", name=result.case.case.name,
                             classname=result.case.suite, file=result.case.where)
        if not result.passed:
            suite.set("failures", str(int(suite.get("failures", "0")) + 1))
            failure = ET.SubElement(case, "failure", message=result.failures[0].splitlines()[0])
            failure.text = "\n".join(result.failures)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
