"""Injection policies: the typed model, loading with `file:line` errors, the JSON Schema, compiling.

A policy file holds one or more `InjectionPolicy` documents (SPEC section 3). Loading checks each
against the published JSON Schema (which embeds the real, strict Kubernetes definitions of
Container, Volume, VolumeMount and EnvVar), then the rules a schema cannot say (quantities, names,
fields the engine owns). Every problem of every file is reported at once. A loaded set is compiled
once, so the request path only substitutes placeholders.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

from webhook import k8s_schema
from webhook.errors import InputError, PolicyError
from webhook.labels import Requirement, Selector
from webhook.platform import OperatingSystem, for_windows
from webhook.yamlsource import Document, format_path, read_documents

API_VERSION = "sidecar.company.com/v1alpha1"
KIND = "InjectionPolicy"
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
POLICY_SUFFIXES = (".yaml", ".yml")

_DEFS = "#/$defs/"
_REF = "x-ref"  # stands for "$ref" until policy_schema() adds the definitions it names


def _ref(definition: str) -> WithJsonSchema:
    return WithJsonSchema({_REF: definition})


Container = Annotated[dict[str, Any], _ref(k8s_schema.CONTAINER)]
Volume = Annotated[dict[str, Any], _ref(k8s_schema.VOLUME)]
EnvVar = Annotated[dict[str, Any], _ref(k8s_schema.ENV_VAR)]
PodVolumeMountRef = Annotated[dict[str, Any], _ref("PodVolumeMount")]
QuantityMap = Annotated[
    dict[str, str | int | float],
    WithJsonSchema({"type": "object", "additionalProperties": {_REF: k8s_schema.QUANTITY}}),
]


class Position(StrEnum):
    """Where a policy's init containers (and native sidecars) go among the pod's own."""

    FIRST = "first"
    LAST = "last"


class SidecarMode(StrEnum):
    """How a policy's `containers` are added: native (`restartPolicy: Always`) or classic."""

    AUTO = "auto"
    NATIVE = "native"
    CLASSIC = "classic"


class PodResources(StrEnum):
    """What a policy's containers do in a pod that sets pod-level `spec.resources`: `add` their
    requests and limits to the pod's, or `share` the pod's envelope (no resources of their own)."""

    ADD = "add"
    SHARE = "share"


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


class Resources(_Model):
    """Requests and limits given to injected containers that set no `resources` of their own."""

    requests: QuantityMap = Field(default_factory=dict)
    limits: QuantityMap = Field(default_factory=dict)


class SecretReference(_Model):
    """An image pull secret, by name, in the pod's namespace."""

    name: Annotated[str, Field(pattern=DNS1123_SUBDOMAIN, max_length=253)]


class SelectorRequirement(_Model):
    """A `matchExpressions` term of a LabelSelector."""

    key: Annotated[str, Field(min_length=1, max_length=317)]
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)  # checked against the operator at load


class NamespaceSelector(_Model):
    """Which namespaces (by their labels) may use a policy: the LabelSelector form."""

    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[SelectorRequirement] = Field(default_factory=list)

    def compile(self) -> Selector:
        return Selector.of(self.match_labels, [
            Requirement(r.key, r.operator, frozenset(r.values)) for r in self.match_expressions])


class Metadata(_Model):
    """The policy's name (what annotations refer to) and optional labels and annotations."""

    name: Annotated[str, Field(pattern=DNS1123_LABEL, max_length=63)]
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class PolicySpec(_Model):
    """What a policy adds to a pod (SPEC section 3)."""

    init_containers: list[Container] = Field(default_factory=list)
    init_container_position: Position = Position.FIRST
    containers: list[Container] = Field(default_factory=list)
    sidecar_mode: SidecarMode = SidecarMode.AUTO
    volumes: list[Volume] = Field(default_factory=list)
    volume_mounts: list[PodVolumeMountRef] = Field(default_factory=list)
    env: list[EnvVar] = Field(default_factory=list)
    resources: Resources = Field(default_factory=Resources)
    pod_resources: PodResources = PodResources.ADD
    os: list[OperatingSystem] = Field(default_factory=lambda: [OperatingSystem.LINUX],
                                      min_length=1)
    image_pull_secrets: list[SecretReference] = Field(default_factory=list)
    namespace_selector: NamespaceSelector | None = None
    pod_annotations: dict[str, str] = Field(default_factory=dict)
    pod_labels: dict[str, str] = Field(default_factory=dict)


class InjectionPolicy(_Model):
    """One `InjectionPolicy` document."""

    api_version: Literal["sidecar.company.com/v1alpha1"]
    kind: Literal["InjectionPolicy"]
    metadata: Metadata
    spec: PolicySpec = Field(default_factory=PolicySpec)


@cache
def policy_schema() -> dict[str, Any]:
    """The self-contained JSON Schema of a policy document (`policies/schema.json`)."""
    generated = InjectionPolicy.model_json_schema(by_alias=True, ref_template=_DEFS + "{model}")
    schema: dict[str, Any] = _resolve_refs(generated)
    k8s_names = [
        k8s_schema.CONTAINER, k8s_schema.VOLUME, k8s_schema.ENV_VAR, k8s_schema.VOLUME_MOUNT
    ]
    defs: dict[str, Any] = schema.setdefault("$defs", {})
    defs.update(k8s_schema.rewrite_refs(k8s_schema.closure(k8s_names), _DEFS))
    mount = copy.deepcopy(defs[k8s_schema.VOLUME_MOUNT])
    mount["description"] = (
        "A VolumeMount added to the pod's own regular containers; `containers` picks which."
    )
    mount["properties"]["containers"] = {
        "description": 'Names of the pod\'s own containers to mount into; "*" (default) is all.',
        "type": "array",
        "items": {"type": "string"},
        "default": ["*"],
    }
    defs["PodVolumeMount"] = mount
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://sidecar.company.com/schemas/injectionpolicy-v1alpha1.json"
    schema["title"] = "InjectionPolicy"
    return dict(sorted(schema.items()))


def _resolve_refs(node: Any) -> Any:
    if isinstance(node, dict):
        if set(node) == {_REF}:
            return {"$ref": _DEFS + node[_REF]}
        return {key: _resolve_refs(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve_refs(item) for item in node]
    return node


@cache
def _schema_validator() -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(policy_schema())


# ---------------------------------------------------------------------------------------------
# Compiled form


#: `${pod.*}` placeholders in a plain string. Map keys are label or annotation keys, which never
#: hold quotes or backslashes.
PLACEHOLDER = re.compile(
    r"\$\{pod\.(?:(?P<field>name|generateName|namespace|serviceAccountName)"
    r"|(?P<map>labels|annotations)\[(?:'(?P<sq>[^'\"\\]*)'|\"(?P<dq>[^'\"\\]*)\")\])\}"
)
#: The same placeholders inside JSON text, where a double quote is escaped as `\"`.
JSON_PLACEHOLDER = re.compile(
    r"\$\{pod\.(?:(?P<field>name|generateName|namespace|serviceAccountName)"
    r"|(?P<map>labels|annotations)\[(?:'(?P<sq>[^'\"\\]*)'|\\\"(?P<dq>[^'\"\\]*)\\\")\])\}"
)


class RawJSON(str):
    """JSON text embedded as it is: an object a policy adds, rendered once at load time."""

    __slots__ = ()


FieldPath = tuple[str | int, ...]
Expanded = Callable[[FieldPath], bool]


def _never(_: FieldPath) -> bool:
    return False


def container_expansion(path: FieldPath) -> bool:
    """Where the kubelet expands `$(VAR)` in a container: `command`, `args`, `env[].value` and
    `volumeMounts[].subPathExpr`."""
    return (len(path) == 2 and path[0] in ("command", "args")) or (
        len(path) == 3 and (path[0], path[2]) in (("env", "value"),
                                                  ("volumeMounts", "subPathExpr")))


def env_expansion(path: FieldPath) -> bool:
    """Where the kubelet expands `$(VAR)` in an EnvVar: its `value`."""
    return path == ("value",)


@dataclass(frozen=True, slots=True)
class Template:
    """An object a policy adds: its value, its JSON text, whether placeholders are in it, and
    the spans of that text the kubelet will `$(VAR)`-expand (where substituted pod metadata must
    be escaped, so that a pod's author cannot make it read the container's environment)."""

    value: Any
    text: RawJSON
    has_placeholders: bool
    expanded: tuple[tuple[int, int], ...] = ()
    #: for a container: where one more volumeMount goes in `text` (the service-account token's),
    #: None when it mounts something at that path already
    mount_slot: MountSlot | None = None

    @classmethod
    def of(cls, value: Any, expansion: Expanded = _never) -> Template:
        spans: list[tuple[int, int]] = []
        text = _dumps(value, (), expansion, spans, 0)
        has = JSON_PLACEHOLDER.search(text) is not None
        return cls(value, RawJSON(text), has, tuple(spans) if has else ())

    @classmethod
    def container(cls, value: dict[str, Any]) -> Template:
        """A container a policy adds: kubelet-expanded spans and its mount slot known."""
        template = cls.of(value, container_expansion)
        return replace(template, mount_slot=MountSlot.of(value, template.text))


#: where the ServiceAccount admission plugin mounts a pod's token into every container
SERVICE_ACCOUNT_MOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"


@dataclass(frozen=True, slots=True)
class MountSlot:
    """Where one more volumeMount goes in a container's JSON text: at `offset`, between
    `before` and `after` (`,` after existing mounts; a whole `volumeMounts` key if none)."""

    offset: int
    before: str
    after: str

    @classmethod
    def of(cls, container: dict[str, Any], text: str) -> MountSlot | None:
        mounts = container.get("volumeMounts")
        if not isinstance(mounts, list):
            return cls(len(text) - 1, ',"volumeMounts":[' if container else '"volumeMounts":[',
                       "]")
        if any(isinstance(m, dict) and m.get("mountPath") == SERVICE_ACCOUNT_MOUNT_PATH
               for m in mounts):
            return None
        keys = list(container)
        upto = {key: container[key] for key in keys[:keys.index("volumeMounts") + 1]}
        closing = len(json.dumps(upto, separators=(",", ":"), ensure_ascii=False)) - 2
        return cls(closing, "," if mounts else "", "")

    def insert(self, text: str, mount: str) -> str:
        return text[:self.offset] + self.before + mount + self.after + text[self.offset:]

    @property
    def width(self) -> int:
        return len(self.before) + len(self.after)


def _dumps(value: Any, path: FieldPath, expansion: Expanded, spans: list[tuple[int, int]],
           start: int) -> str:
    """`json.dumps(value, separators=(",", ":"), ensure_ascii=False)`, recording where the
    strings at the paths `expansion` accepts lie in it, for a text that begins at `start`."""
    if isinstance(value, dict):
        text = "{"
        for index, (key, item) in enumerate(value.items()):
            text += ("," if index else "") + _plain(key) + ":"
            text += _dumps(item, (*path, key), expansion, spans, start + len(text))
        return text + "}"
    if isinstance(value, list):
        text = "["
        for index, item in enumerate(value):
            text += "," if index else ""
            text += _dumps(item, (*path, index), expansion, spans, start + len(text))
        return text + "]"
    text = _plain(value)
    if isinstance(value, str) and expansion(path):
        spans.append((start, start + len(text)))
    return text


def _plain(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


Shapes = tuple[tuple[Template, ...], tuple[Template, ...], tuple[Template, ...]]


@dataclass(frozen=True, slots=True)
class PodMount:
    """A volumeMount for the pod's own containers; `containers` None means all of them."""

    mount: Template
    containers: frozenset[str] | None

    @property
    def mount_path(self) -> str:
        path: str = self.mount.value["mountPath"]
        return path


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """A policy ready for the request path: defaults applied, both sidecar shapes pre-built."""

    name: str
    source: str
    position: Position
    mode: SidecarMode
    pod_resources: PodResources
    #: (init containers, native sidecars, classic sidecars) by (shares the pod's envelope,
    #: for a Windows pod): without `resources` in a pod-level envelope it shares, without the
    #: Linux-only securityContext fields in a Windows pod
    variants: Mapping[tuple[bool, bool], Shapes]
    systems: frozenset[OperatingSystem]
    pull_secrets: tuple[str, ...]
    #: the namespaces that may use it; None: every namespace
    namespaces: Selector | None
    volumes: tuple[Template, ...]
    mounts: tuple[PodMount, ...]
    env: tuple[Template, ...]
    pod_annotations: dict[str, Template]
    pod_labels: dict[str, Template]
    digest: str
    #: this policy's digits in `revision`: its name and content, hashed
    revision_digits: tuple[int, int]

    @property
    def init_containers(self) -> tuple[Template, ...]:
        return self.variants[(False, False)][0]

    @property
    def native_sidecars(self) -> tuple[Template, ...]:
        return self.variants[(False, False)][1]

    @property
    def classic_sidecars(self) -> tuple[Template, ...]:
        return self.variants[(False, False)][2]

    @property
    def sidecar_names(self) -> list[str]:
        return [t.value["name"] for t in self.classic_sidecars]

    @property
    def init_container_names(self) -> list[str]:
        return [t.value["name"] for t in self.init_containers]

    @property
    def volume_names(self) -> list[str]:
        return [t.value["name"] for t in self.volumes]


def compile_policy(policy: InjectionPolicy, source: str) -> CompiledPolicy:
    """Apply resource defaults and pre-build everything the request path needs."""
    spec = policy.spec
    defaults = {
        key: dict(value)
        for key, value in (("requests", spec.resources.requests), ("limits", spec.resources.limits))
        if value
    }

    def with_defaults(container: dict[str, Any]) -> dict[str, Any]:
        result = copy.deepcopy(container)
        if defaults and not result.get("resources"):
            result["resources"] = copy.deepcopy(defaults)
        return result

    sidecars = [with_defaults(c) for c in spec.containers]
    inits = [with_defaults(c) for c in spec.init_containers]
    variants = {(shared, windows): _shapes(
        inits, sidecars, shared=shared and spec.pod_resources is PodResources.SHARE,
        windows=windows and OperatingSystem.WINDOWS in spec.os)
        for shared in (False, True) for windows in (False, True)}
    mounts = []
    for raw in spec.volume_mounts:
        mount = {k: v for k, v in raw.items() if k != "containers"}
        selector = raw.get("containers", ["*"])
        mounts.append(
            PodMount(Template.of(mount), None if "*" in selector else frozenset(selector))
        )
    dumped = policy.model_dump(mode="json", by_alias=True)
    for key, default in _NEW_DEFAULTS.items():  # fields added later leave old revisions alone
        if dumped["spec"].get(key) == default:
            del dumped["spec"][key]
    canonical = json.dumps(dumped, sort_keys=True)
    return CompiledPolicy(
        name=policy.metadata.name,
        source=source,
        position=spec.init_container_position,
        mode=spec.sidecar_mode,
        pod_resources=spec.pod_resources,
        variants=variants,
        systems=frozenset(spec.os),
        pull_secrets=tuple(dict.fromkeys(ref.name for ref in spec.image_pull_secrets)),
        namespaces=spec.namespace_selector.compile() if spec.namespace_selector else None,
        volumes=tuple(Template.of(copy.deepcopy(v)) for v in spec.volumes),
        mounts=tuple(mounts),
        env=tuple(Template.of(copy.deepcopy(e), env_expansion) for e in spec.env),
        pod_annotations={k: Template.of(v) for k, v in spec.pod_annotations.items()},
        pod_labels={k: Template.of(v) for k, v in spec.pod_labels.items()},
        digest=(digest := hashlib.sha256(canonical.encode()).hexdigest()),
        revision_digits=_revision_digits(policy.metadata.name, digest),
    )


#: spec fields newer than the first release, with their defaults: left out of `revision` when
#: at their default, so that upgrading the injector does not make every injected pod look stale
_NEW_DEFAULTS: dict[str, Any] = {"podResources": PodResources.ADD.value,
                                 "os": [OperatingSystem.LINUX.value], "imagePullSecrets": [],
                                 "namespaceSelector": None}


def _shapes(inits: list[dict[str, Any]], sidecars: list[dict[str, Any]], *, shared: bool,
            windows: bool) -> Shapes:
    def shape(container: dict[str, Any]) -> dict[str, Any]:
        if shared:
            container = {key: value for key, value in container.items() if key != "resources"}
        return for_windows(container) if windows else container

    return (tuple(Template.container(shape(c)) for c in inits),
            tuple(Template.container({**shape(c), "restartPolicy": "Always"}) for c in sidecars),
            tuple(Template.container(shape(c)) for c in sidecars))


@dataclass(frozen=True, slots=True)
class PolicySet:
    """Every loaded policy by name, and where they came from."""

    policies: dict[str, CompiledPolicy] = field(default_factory=dict)
    source: str = ""

    def __contains__(self, name: object) -> bool:
        return name in self.policies

    def __getitem__(self, name: str) -> CompiledPolicy:
        return self.policies[name]

    def __len__(self) -> int:
        return len(self.policies)

    def names(self) -> list[str]:
        return sorted(self.policies)


#: `revision` is two positional hashes, sum(d_i * B**i) mod M over the applied policies in
#: order (d_i: the policy's digits), printed as 8 hex digits each: arithmetic CEL can do too, so
#: that a compiled admission policy writes the very same stamp (webhook.compiled). Every product
#: of a digit and a power stays below 2**63 (CEL's integers are 64-bit, overflow an error).
REVISION_MODULI = (1_000_000_007, 998_244_353)
REVISION_BASES = (1_000_003, 999_983)


def revision(policies: Iterable[CompiledPolicy]) -> str:
    """A short hash of the applied policies' content; a stale one in `P/status` shows drift."""
    sums = [0, 0]
    for index, policy in enumerate(policies):
        for k, (digit, base, modulus) in enumerate(
                zip(policy.revision_digits, REVISION_BASES, REVISION_MODULI, strict=True)):
            sums[k] = (sums[k] + digit * pow(base, index, modulus)) % modulus
    return f"{sums[0]:08x}{sums[1]:08x}"


def legacy_revision(policies: Iterable[CompiledPolicy]) -> str:
    """The revision 0.1.0 stamped (a SHA-256 prefix, which CEL cannot compute): a pod
    stamped with it is not stale for that alone."""
    digest = hashlib.sha256()
    for policy in policies:
        digest.update(f"{policy.name}:{policy.digest};".encode())
    return digest.hexdigest()[:16]


def _revision_digits(name: str, digest: str) -> tuple[int, int]:
    hashed = hashlib.sha256(f"{name}:{digest}".encode()).digest()
    return (int.from_bytes(hashed[:8]) % REVISION_MODULI[0],
            int.from_bytes(hashed[8:16]) % REVISION_MODULI[1])


# ---------------------------------------------------------------------------------------------
# Loading


def load_policy_dir(directory: str | Path) -> PolicySet:
    """Load and compile every `*.yaml`/`*.yml` in `directory`; PolicyError lists all problems."""
    root = Path(directory)
    if not root.is_dir():
        raise PolicyError([f"{root}: policies directory does not exist (pass --policies DIR)"])
    # Every *.yaml/*.yml entry is a policy file: one that cannot be read (a directory, a broken
    # symlink, no permission) is a problem, never silently skipped. Dot entries (a ConfigMap's
    # `..data`) are not policies, and a link into `..data/` that points nowhere is a key the
    # kubelet is removing (it swaps `..data`, then deletes the old links).
    files = sorted(
        p for p in root.iterdir() if p.suffix in POLICY_SUFFIXES and not p.name.startswith(".")
    )
    loaded: dict[str, CompiledPolicy] = {}
    where: dict[str, str] = {}
    problems: list[str] = []
    for path in files:
        label = str(path)
        if path.is_dir():
            problems.append(f"{label}: is a directory, not a policy file; remove or rename it")
            continue
        if path.is_symlink() and not path.exists():
            if str(path.readlink()).startswith("..data/"):
                continue  # a ConfigMap key being removed: the kubelet swapped ..data first
            problems.append(f"{label}: cannot read: a broken symbolic link to "
                            f"{path.readlink()}; fix or remove it")
            continue
        if path.exists() and not path.is_file():  # a FIFO or socket would block or fail
            problems.append(f"{label}: not a regular file; remove or rename it")
            continue
        try:
            documents = read_documents(path, label)
        except InputError as exc:
            problems.append(str(exc))
            continue
        for document in documents:
            policy, found = parse_policy(document, label)
            problems.extend(found)
            if policy is None:
                continue
            name = policy.metadata.name
            here = f"{label}:{document.line_of(('metadata', 'name'))}"
            if name in where:
                problems.append(f"{here}: metadata.name: policy {name!r} is already defined at "
                                f"{where[name]}; rename one of them")
                continue
            where[name] = here
            loaded[name] = compile_policy(policy, here)
    if problems:
        raise PolicyError(problems)
    return PolicySet(dict(sorted(loaded.items())), str(root))


def parse_policy(document: Document, label: str) -> tuple[InjectionPolicy | None, list[str]]:
    """Validate one document; the policy if it is valid, and every problem as `file:line: msg`."""
    problems = [
        f"{label}:{document.line_of(path)}: {format_path(path) or '(document)'}: {message}"
        for path, message in _problems(document.value)
    ]
    if problems:
        return None, problems
    return InjectionPolicy.model_validate(document.value), []


def _problems(value: Any) -> Iterator[tuple[tuple[str | int, ...], str]]:
    if not isinstance(value, dict):
        yield (), f"a policy must be a mapping, not {type(value).__name__}"
        return
    schema_errors = sorted(_schema_validator().iter_errors(value), key=lambda e: list(e.path))
    for error in schema_errors:
        best = jsonschema.exceptions.best_match(error.context) if error.context else error
        yield tuple(best.absolute_path), best.message
    if schema_errors:
        return
    yield from _rule_problems(value.get("spec") or {})


def _rule_problems(spec: dict[str, Any]) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """What the schema cannot say: quantities, unique names, fields the engine owns."""
    base = ("spec",)
    for key in ("requests", "limits"):
        for resource, amount in (spec.get("resources") or {}).get(key, {}).items():
            if k8s_schema.quantity(amount) is None:
                yield (*base, "resources", key, resource), f"{amount!r} is not a quantity"
    selector = spec.get("namespaceSelector") or {}
    for index, term in enumerate(selector.get("matchExpressions") or []):
        at = (*base, "namespaceSelector", "matchExpressions", index, "values")
        if term["operator"] in ("In", "NotIn") and not term.get("values"):
            yield at, f"operator {term['operator']} needs values"
        if term["operator"] in ("Exists", "DoesNotExist") and term.get("values"):
            yield at, f"operator {term['operator']} takes no values; remove them"
    seen: dict[str, str] = {}
    for section in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(section) or []):
            path = (*base, section, index)
            init = section == "initContainers"
            yield from _container_problems(container, path, run_to_completion=init)
            name = container["name"]
            if not _DNS1123.match(name):
                yield (*path, "name"), (f"{name!r} is not a valid container name (lowercase "
                                        "letters, digits and '-'; placeholders are not allowed)")
            if name in seen:
                yield (*path, "name"), f"container name {name!r} is already used by {seen[name]}"
            seen[name] = f"spec.{section}[{index}]"
    volumes: set[str] = set()
    for index, volume in enumerate(spec.get("volumes") or []):
        if not _DNS1123.match(volume["name"]):
            yield (*base, "volumes", index, "name"), (
                f"{volume['name']!r} is not a valid volume name (lowercase letters, digits and "
                "'-'; placeholders are not allowed)")
        if volume["name"] in volumes:
            yield (*base, "volumes", index, "name"), f"volume name {volume['name']!r} is repeated"
        volumes.add(volume["name"])
    paths: set[str] = set()
    for index, mount in enumerate(spec.get("volumeMounts") or []):
        path = (*base, "volumeMounts", index)
        if mount["name"] not in volumes:
            yield (*path, "name"), (f"volume {mount['name']!r} is not in spec.volumes; "
                                    "add it there so the pod has it")
        if mount["mountPath"] in paths:
            yield (*path, "mountPath"), f"mountPath {mount['mountPath']!r} is repeated"
        paths.add(mount["mountPath"])
    for index, mount in enumerate(spec.get("volumeMounts") or []):
        if "${pod." in mount["mountPath"]:
            yield (*base, "volumeMounts", index, "mountPath"), "placeholders are not allowed here"
    env_names: set[str] = set()
    for index, env in enumerate(spec.get("env") or []):
        if "${pod." in env["name"]:
            yield (*base, "env", index, "name"), "placeholders are not allowed in env names"
        if env["name"] in env_names:
            yield (*base, "env", index, "name"), f"env name {env['name']!r} is repeated"
        env_names.add(env["name"])


_DNS1123 = re.compile(DNS1123_LABEL)
_ENGINE_OWNED = {"restartPolicy": "the engine sets it from spec.sidecarMode"}
_NOT_FOR_INIT = ("livenessProbe", "readinessProbe", "startupProbe", "lifecycle")


def _container_problems(
    container: dict[str, Any], path: tuple[str | int, ...], *, run_to_completion: bool
) -> Iterator[tuple[tuple[str | int, ...], str]]:
    if not container.get("image"):
        yield path, "set image: an injected container needs an image"
    for key, why in _ENGINE_OWNED.items():
        if key in container:
            yield (*path, key), f"remove it: {why}"
    if run_to_completion:
        for key in _NOT_FOR_INIT:
            if key in container:
                yield (*path, key), ("not allowed on a run-to-completion init container; "
                                     "move this container to spec.containers")
    resources = container.get("resources") or {}
    for key in ("requests", "limits", "claims"):
        if key == "claims":
            continue
        for resource, amount in (resources.get(key) or {}).items():
            if k8s_schema.quantity(amount) is None:
                yield (*path, "resources", key, resource), f"{amount!r} is not a quantity"
