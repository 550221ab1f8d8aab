"""The injection half of `policies compile`: each policy as a CEL constant, and the CEL that turns
the chosen policies into the webhook's own patch.

Partial evaluation (docs/research/mutating-admission-policy.md, section 2): everything that
depends only on the policy files is worked out here, once: the containers, volumes, env vars and
mounts a policy adds, as constant CEL values; where in them the `${pod.*}` placeholders are, cut
into segments; the JSON fragments of the `P/status` stamp; the policy's revision digits. One
variable holds each policy, and `table` maps names to them, so a pod pays only for the policies
it asks for. CEL then answers what depends on the pod: which policies, in what order, which of
their env vars and mounts the pod's own containers do not have yet, where the placeholders' values
come from, and the service-account token mount (webhook.render `_token_mount`).

`variables.ops` is the patch as data (`{op, path, value}` maps), built in the same order and by
the same rules as `webhook.patch.injection_patch`: a real CEL implementation evaluates it offline
(tests/unit/test_compiled.py) exactly as the apiserver does, and only the last step, turning each
map into a `JSONPatch`, is Kubernetes' own.

What the webhook keeps (a pod the compiled policy leaves unstamped, `injectable` false): a pod
whose names clash with a policy's (or two chosen policies' names clash: `clash_denial` denies it
as the webhook does under `--on-conflict deny`), one with pod-level `spec.resources` the
int64-millis arithmetic of webhook.compiled_resources cannot do exactly (`envelopeFits`), a
Windows pod, one in a namespace whose Pod Security level a chosen policy may break
(`pod_security`), one in a namespace a chosen policy's `namespaceSelector` excludes while
another chosen policy may be used there (the webhook refuses the first and injects the others:
`refusedNs`), one too large for the CEL cost limits (`Limits`), and any pod that asks for a
policy this module cannot compile (`reason`). Decided here: with `--strict`, a pod any of whose
chosen policies is refused there is denied (`namespace_denial`); without it, one whose every
chosen policy is refused is skipped `namespace-not-allowed`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from jsonpointer import escape

from webhook import compiled_resources
from webhook.engine import (
    outside_namespace_warning,
    sample_pod_security,
    unsupported_os_warning,
)
from webhook.labels import Requirement, Selector
from webhook.platform import OS_LABEL, OperatingSystem
from webhook.podsecurity import ENFORCE_LABEL, Level
from webhook.policy import (
    JSON_PLACEHOLDER,
    PLACEHOLDER,
    REVISION_BASES,
    REVISION_MODULI,
    SERVICE_ACCOUNT_MOUNT_PATH,
    CompiledPolicy,
    Expanded,
    FieldPath,
    PolicySet,
    Position,
    Template,
    container_expansion,
    env_expansion,
)
from webhook.render import SERVICE_ACCOUNT_VOLUME_PREFIX, same_path, sidecars_native

Obj = dict[str, Any]
#: the decision of the engine policy for a pod it injects (the others are skip reasons)
INJECT = "inject"
#: a JSON patch value passes through float64 in the apiserver (structpb)
EXACT_INTEGER = 2**53
#: a CEL expression may hold 100,000 code points; one policy's constant must fit in one
MAX_POLICY_CEL = 90_000


def literal(value: object) -> str:
    """A CEL literal for a string, a list of strings or a map of string to bool (JSON's string
    syntax is CEL's, with the escapes both have)."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(literal(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{literal(k)}: {'true' if v else 'false'}"
                               for k, v in value.items()) + "}"
    raise TypeError(f"no CEL literal for {value!r}")


class CannotCompileError(Exception):
    """A policy, or a part of one, that this compiler cannot turn into CEL; the reason."""


def value(data: Any) -> str:
    """A CEL constant for JSON data, every element and map value wrapped in `dyn()`: the
    apiserver wants one element type per list and map literal."""
    if data is None:
        return "null"
    if isinstance(data, bool):
        return "true" if data else "false"
    if isinstance(data, int):
        if abs(data) > EXACT_INTEGER:
            raise CannotCompileError(f"the integer {data} is beyond 2**53, which a JSON patch "
                                     "value in the apiserver (a float64) cannot hold exactly")
        return str(data)
    if isinstance(data, float):
        if not math.isfinite(data):
            raise CannotCompileError(f"the number {data} has no JSON form")
        return repr(data) if re.search("[.en]", repr(data)) else f"{data!r}.0"
    if isinstance(data, str):
        return literal(data)
    if isinstance(data, list):
        return "[" + ", ".join(f"dyn({value(item)})" for item in data) + "]"
    if isinstance(data, dict):
        return "{" + ", ".join(f"{literal(str(k))}: dyn({value(v)})" for k, v in data.items()) + "}"
    raise CannotCompileError(f"no CEL constant for {data!r}")


def record(**fields: str) -> str:
    """A CEL map of already-written CEL expressions, each wrapped in `dyn()`."""
    return "{" + ", ".join(f"{literal(k)}: dyn({v})" for k, v in fields.items()) + "}"


def listed(items: list[str]) -> str:
    return "[" + ", ".join(f"dyn({item})" for item in items) + "]"


def _json(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# Placeholders, as segments: ["lit", text, ""], or [source, key, X] where source is a pod field
# (key "") or `labels` or `annotations`, and X is "X" where the kubelet expands `$(VAR)` (the
# value's `$` is then doubled, as the webhook does), else "".


def _placeholder(match: re.Match[str], expanded: bool) -> list[str]:
    flag = "X" if expanded else ""
    if match["field"]:
        return [match["field"], "", flag]
    key = match["sq"] if match["sq"] is not None else match["dq"]
    return [match["map"], key, flag]


def json_segments(text: str, expanded: bool) -> list[list[str]] | None:
    """The segments of a string of a JSON template, None without placeholders. The webhook
    substitutes in the JSON text (JSON_PLACEHOLDER), so this cuts the same text."""
    encoded = _json(text)[1:-1]
    segments: list[list[str]] = []
    at = 0
    for match in JSON_PLACEHOLDER.finditer(encoded):
        if match.start() > at:  # a `$` never ends an escape sequence, so the cut is clean
            segments.append(["lit", json.loads(f'"{encoded[at:match.start()]}"'), ""])
        segments.append(_placeholder(match, expanded))
        at = match.end()
    if not segments:
        return None
    if at < len(encoded):
        segments.append(["lit", json.loads(f'"{encoded[at:]}"'), ""])
    return segments


def text_segments(text: str) -> list[list[str]]:
    """The segments of an annotation or label value (substituted as plain text)."""
    segments: list[list[str]] = []
    at = 0
    for match in PLACEHOLDER.finditer(text):
        if match.start() > at:
            segments.append(["lit", text[at:match.start()], ""])
        segments.append(_placeholder(match, False))
        at = match.end()
    if at < len(text) or not segments:
        segments.append(["lit", text[at:], ""])
    return segments


def _substitutions(data: Any, path: FieldPath, expansion: Expanded) -> Iterator[str]:
    """`{path, segs}` records (CEL) for every string with placeholders below `data`."""
    if isinstance(data, dict):
        for key, item in data.items():
            if JSON_PLACEHOLDER.search(_json(str(key))):
                raise CannotCompileError(f"a placeholder in the key {key!r} is not compiled")
            yield from _substitutions(item, (*path, key), expansion)
    elif isinstance(data, list):
        for index, item in enumerate(data):
            yield from _substitutions(item, (*path, index), expansion)
    elif isinstance(data, str):
        segments = json_segments(data, expansion(path))
        if segments is not None:
            pointer = "".join(f"/{escape(str(part))}" for part in path)
            yield record(path=literal(pointer), segs=value(segments))


def _never(_: FieldPath) -> bool:
    return False


def _entry(template: Template, expansion: Expanded = _never, **fields: str) -> str:
    """An object a policy adds: its value, its placeholders, and `fields`."""
    return record(value=value(template.value),
                  subst=listed(list(_substitutions(template.value, (), expansion))), **fields)


def _container(template: Template) -> str:
    slot = template.mount_slot
    place = "none" if slot is None else "create" if slot.before.endswith("[") else "append"
    return _entry(template, container_expansion, slot=literal(place),
                  **compiled_resources.amounts_fields(template))


# ---------------------------------------------------------------------------------------------
# A policy as a constant


def reason(policy: CompiledPolicy) -> str | None:
    """Why `policy` cannot be compiled (yet), None when it can."""
    if OperatingSystem.LINUX not in policy.systems:
        return "a policy for Windows pods only is not compiled yet"
    if (problem := compiled_resources.problem(policy)) is not None:
        return problem
    try:
        table_entry(policy, None, "", [], literal({}))
    except CannotCompileError as exc:
        return str(exc)
    return None


def table_entry(policy: CompiledPolicy, kube_version: tuple[int, int] | None, status_key: str,
                clashing: list[str], security: str) -> str:
    """`policy` as one CEL constant; `clashing`: the other compiled policies that add a
    container or volume of the same name; `security`: `pod_security(policy)`. Its containers
    are in `front`, `back` and `classic`, and once more without resources in `frontS`, `backS`
    and `classicS` when it shares a pod-level envelope (`podResources: share`)."""
    native = sidecars_native(policy, kube_version)

    def containers(envelope: bool, suffix: str = "") -> dict[str, str]:
        inits, natives, classics = policy.variants[(envelope, False)]
        ahead = [*inits, *natives] if native else list(inits)
        return {f"front{suffix}": listed([_container(t) for t in ahead]
                                         if policy.position is Position.FIRST else []),
                f"back{suffix}": listed([_container(t) for t in ahead]
                                        if policy.position is Position.LAST else []),
                f"classic{suffix}": listed([] if native else [_container(t) for t in classics])}

    shared = policy.variants[(True, False)] != policy.variants[(False, False)]
    mounts = []
    for mount in policy.mounts:
        normal = str(same_path(mount.mount_path))
        mounts.append(_entry(
            mount.mount, all="true" if mount.containers is None else "false",
            only=literal(sorted(mount.containers or ())), norm=literal(normal),
            pre=literal("" if normal == "/" else normal), pathJ=literal(_json(mount.mount_path))))

    def metadata(templates: dict[str, Template], root: str, skip: str | None = None) -> str:
        return listed([record(key=literal(key), keyJ=literal(_json(key)),
                              path=literal(f"{root}/{escape(key)}"),
                              segs=value(text_segments(template.value)))
                       for key, template in templates.items() if key != skip])

    d1, d2 = policy.revision_digits
    entry = record(
        nameJ=literal(_json(policy.name)),
        **containers(False), **(containers(True, "S") if shared else {}),
        initJ=literal(",".join(map(_json, policy.init_container_names))),
        sideJ=literal(",".join(map(_json, policy.sidecar_names))),
        volJ=literal(",".join(map(_json, policy.volume_names))),
        adds=literal(policy.init_container_names + policy.sidecar_names),
        vols=literal(policy.volume_names),
        clashWith=literal(clashing),
        volumes=listed([_entry(t) for t in policy.volumes]),
        env=listed([_entry(t, env_expansion, name=literal(t.value["name"]),
                           nameJ=literal(_json(t.value["name"]))) for t in policy.env]),
        mounts=listed(mounts),
        ann=metadata(policy.pod_annotations, "/metadata/annotations", skip=status_key),
        lbl=metadata(policy.pod_labels, "/metadata/labels"),
        pull=listed([record(name=literal(n), nameJ=literal(_json(n)))
                     for n in policy.pull_secrets]),
        d1=str(d1), d2=str(d2), security=security,
    )
    if len(entry) > MAX_POLICY_CEL:
        raise CannotCompileError(f"it is {len(entry):,} characters of CEL, more than one "
                                 f"expression may hold ({MAX_POLICY_CEL:,} here)")
    return entry


def pod_security(policies: PolicySet, name: str) -> str:
    """A CEL map: for each enforced Pod Security level, whether the webhook always lets the
    policy in (it breaks nothing in a sample pod with no pod-level settings, whose container is
    hardened on its own: so the policy's additions are hardened on their own too, and add no
    violation to any pod). False: the webhook decides such pods (it refuses the policy where
    it would break what the pod meets)."""
    return literal({level.value: not sample_pod_security(policies, name, level)
                    for level in (Level.BASELINE, Level.RESTRICTED)})


def _clashes(policies: list[CompiledPolicy]) -> dict[str, list[str]]:
    """For each policy, the others that add a container or a volume of the same name."""
    found: dict[str, list[str]] = {p.name: [] for p in policies}
    for p in policies:
        for q in policies:
            if p is not q and (
                    set(p.init_container_names + p.sidecar_names)
                    & set(q.init_container_names + q.sidecar_names)
                    or set(p.volume_names) & set(q.volume_names)):
                found[p.name].append(q.name)
    return found


# ---------------------------------------------------------------------------------------------
# The CEL that injects


@dataclass(frozen=True, slots=True)
class Limits:
    """The largest pod the engine policy injects itself; a larger one is the webhook's. The
    costliest variables grow with (the pod's env vars) x (the env vars the policies add) and
    (the pod's mounts) x (the mounts the policies add); the apiserver stops each at 1,000,000.
    The divisors were measured through a 1.37 apiserver (tests/e2e/test_compiled.py runs a pod
    at these limits), with room to spare."""

    containers: int
    env: int
    mounts: int

    @classmethod
    def of(cls, policies: list[CompiledPolicy]) -> Limits:
        env = sum(len(p.env) for p in policies)
        mounts = sum(len(p.mounts) for p in policies)
        return cls(containers=MAX_CONTAINERS, env=min(MAX_OWN, COST_SHARE // (20 + 2 * env)),
                   mounts=min(MAX_OWN, COST_SHARE // (20 + 12 * mounts)))


#: the containers (init and app) of the largest pod the engine policy injects
MAX_CONTAINERS = 500
#: the env vars, or the mounts, of the largest pod it injects (all containers together)
MAX_OWN = 20_000
#: the share of a variable's cost limit (1,000,000) the limits are made for
COST_SHARE = 500_000


def _op(op: str, path: str, data: str) -> str:
    return record(op=literal(op), path=path, value=data)


def _joined(segments: str) -> str:
    """The string a segments list stands for, evaluated for the pod (variables.fields holds
    the pod fields a placeholder may name)."""
    source = ("g[0] == 'lit' ? g[1] : g[0] == 'labels' ? (has(object.metadata.labels) && "
              "g[1] in object.metadata.labels ? object.metadata.labels[g[1]] : '') : "
              "g[0] == 'annotations' ? (has(object.metadata.annotations) && g[1] in "
              "object.metadata.annotations ? object.metadata.annotations[g[1]] : '') : "
              "variables.fields[g[0]]")
    return (f"{segments}.map(g, [{source}, g[2]]).map(v, v[1] == 'X' ? "
            "v[0].replace('$', '$$') : v[0]).join('')")


def _first(items: str, key: str) -> str:
    """The items of the list `items` whose `key` no earlier item has."""
    return (f"lists.range(size({items})).filter(i, !{items}.slice(0, i).exists(a, "
            f"a.{key} == {items}[i].{key})).map(i, {items}[i])")


_GENERATE_NAME = "object.metadata.generateName"
_BASE = f"(size({_GENERATE_NAME}) > 58 ? {_GENERATE_NAME}.substring(0, 58) : {_GENERATE_NAME})"
#: the pod as the webhook's messages name it (webhook.selection.describe_pod), in a validating
#: policy: by then the apiserver has named a pod that had only a generateName (its first 58
#: characters and 5 of k8s.io/apimachinery rand's), which the webhook calls `generateName*`
SHOWN_POD = (
    f"namespaceObject.metadata.name + '/' + (has({_GENERATE_NAME}) && "
    f"size(object.metadata.name) == size({_BASE}) + 5 && "
    f"object.metadata.name.startsWith({_BASE}) && object.metadata.name.substring("
    f"size({_BASE})).matches('^[bcdfghjklmnpqrstvwxz2456789]{{5}}$') ? "
    f"{_GENERATE_NAME} + '*' : object.metadata.name)")
SPEC = "object.spec"
POD_HOLE = "<<pod>>"  # where a message's pod name goes
NAME_HOLE = "<<name>>"  # where a message's policy name goes
SELECTOR_HOLE = "<<selector>>"  # where a message's label selector goes
NAMESPACE_HOLE = "<<namespace>>"  # where a message's namespace goes
INITS = f"(has({SPEC}.initContainers) ? {SPEC}.initContainers : [])"
APPS = f"(has({SPEC}.containers) ? {SPEC}.containers : [])"
VOLUMES = f"(has({SPEC}.volumes) ? {SPEC}.volumes : [])"


#: the policies the pod asks for, each once, in its order
_CHOSEN: Obj = {"name": "chosen", "expression": "variables.requested.distinct()"}
_OS_SELECTOR = f"{SPEC}.nodeSelector"
_WINDOWS = literal(OperatingSystem.WINDOWS.value)
#: whether the pod runs on Windows (webhook.platform.pod_os)
WINDOWS_POD: Obj = {"name": "windowsPod", "expression": (
    f"(has({SPEC}.os) && {SPEC}.os.name == {_WINDOWS}) || "
    f"(has({_OS_SELECTOR}) && {literal(OS_LABEL)} in {_OS_SELECTOR} && "
    f"{_OS_SELECTOR}[{literal(OS_LABEL)}] == {_WINDOWS})")}


def pod_variables(limits: Limits) -> list[Obj]:
    """The pod's own names, whether the pod is the webhook's to decide (`keptByWebhook`: too
    large for the CEL cost limits (`tooLarge`), pod-level resources the compiled policy cannot
    add up (`envelopeFits`), or a Windows pod (`windowsPod`)), and the Pod Security level its
    namespace enforces."""
    labels = "namespaceObject.metadata.labels"
    return [
        {"name": "ownNames", "expression": f"{INITS}.map(c, c.name) + {APPS}.map(c, c.name)"},
        {"name": "ownVolumes", "expression": f"{VOLUMES}.map(v, v.name)"},
        {"name": "tooLarge", "expression": " || ".join([
            # too large for the CEL cost limits (1,000,000 per variable), see `Limits`
            f"size({INITS}) + size({APPS}) > {limits.containers}",
            f"{APPS}.map(c, has(c.env) ? size(c.env) : 0).sum() > {limits.env}",
            f"({INITS} + {APPS}).map(c, has(c.volumeMounts) ? size(c.volumeMounts) : 0).sum() "
            f"> {limits.mounts}",
        ])},
        WINDOWS_POD,
        *compiled_resources.pod_variables(),
        {"name": "keptByWebhook", "expression": (
            "variables.tooLarge || variables.windowsPod || "
            "(variables.envelope && !variables.envelopeFits)")},
        # the Pod Security level the namespace enforces ('': none); an invalid value is
        # enforced as restricted (webhook.podsecurity.parse_level)
        {"name": "securityLevel", "expression": (
            f"!(has({labels}) && {literal(ENFORCE_LABEL)} in {labels}) || "
            f"{labels}[{literal(ENFORCE_LABEL)}] == {literal(Level.PRIVILEGED.value)} ? '' : "
            f"{labels}[{literal(ENFORCE_LABEL)}] == {literal(Level.BASELINE.value)} ? "
            f"{literal(Level.BASELINE.value)} : {literal(Level.RESTRICTED.value)}")},
    ]


def selector_holds(selector: Selector, labels: str) -> str:
    """`selector` (webhook.labels `Selector.matches`) on the label map `labels` (a CEL field
    that may be absent), in CEL."""
    def term(requirement: Requirement) -> str:
        key = literal(requirement.key)
        present = f"(has({labels}) && {key} in {labels})"
        values = literal(sorted(requirement.values))
        return {"Exists": present, "DoesNotExist": f"!{present}",
                "In": f"({present} && {labels}[{key}] in {values})",
                "NotIn": f"(!{present} || !({labels}[{key}] in {values}))"}[requirement.operator]
    return " && ".join(map(term, selector.requirements)) or "true"


def namespace_variables(policies: list[CompiledPolicy]) -> list[Obj]:
    """`chosen` (the policies the pod asks for, each once, in its order) and `refusedNs`, those
    of them the namespace rule refuses (webhook.engine `_namespace_problems`, the first rule):
    compiled policies whose `namespaceSelector` the pod's namespace does not match, in the pod's
    order. Every compiled object defines these after `requested`."""
    labels = "namespaceObject.metadata.labels"
    outside = "{" + ", ".join(
        f"{literal(p.name)}: !({selector_holds(p.namespaces, labels)})"
        for p in policies if p.namespaces is not None) + "}"
    return [_CHOSEN,
            {"name": "outsideNs", "expression": outside},
            {"name": "refusedNs", "expression": (
                "variables.chosen.filter(p, p in variables.outsideNs && "
                "variables.outsideNs[p])")}]


def only_compiled(policies: list[CompiledPolicy]) -> str:
    """Whether the pod asks for some policies, all of them compiled (and so known)."""
    names = literal(dict.fromkeys(sorted(p.name for p in policies), True))
    return f"size(variables.chosen) > 0 && variables.chosen.all(p, p in {names})"


def refused_for_namespace(policies: list[CompiledPolicy], *, every: bool) -> str:
    """Whether the namespace rule refuses `every` policy the pod asks for (the webhook then
    skips it as `namespace-not-allowed`, before any other rule or rendering), or some of them
    (`--strict` then denies the pod), all of them compiled."""
    refused = ("size(variables.refusedNs) == size(variables.chosen)" if every
               else "size(variables.refusedNs) > 0")
    return f"{only_compiled(policies)} && {refused}"


def outside_namespace_message(policies: list[CompiledPolicy], pod: str, name: str) -> str:
    """The CEL of the webhook's refusal of the policy `name` (a CEL string) for `pod` (the CEL
    of the pod's `namespace/name`) in its namespace (webhook.engine
    `outside_namespace_warning`)."""
    selectors = "{" + ", ".join(f"{literal(p.name)}: {literal(p.namespaces.describe())}"
                                for p in policies if p.namespaces is not None) + "}"
    holes = (POD_HOLE, NAME_HOLE, SELECTOR_HOLE, NAMESPACE_HOLE)
    pieces = around(outside_namespace_warning(f"pod {POD_HOLE}", *holes[1:]), *holes)
    values = [pod, name, f"{selectors}[{name}]", "namespaceObject.metadata.name"]
    return " + ".join(part for piece, value in zip(pieces, [*values, None], strict=True)
                      for part in (literal(piece), value) if part is not None)


def namespace_warnings(policies: list[CompiledPolicy], pod: str) -> list[Obj]:
    """The warnings of a `namespace-not-allowed` skip in the webhook's words and order:
    validation i names the i-th refused policy when the variable `nsSkipped` holds, as many as
    there are restricted policies."""
    fallback = outside_namespace_warning("pod (a pod)", "(see its annotation)", "(its selector)",
                                         "(the pod's)")
    return [{"expression": f"!(variables.nsSkipped && size(variables.refusedNs) > {i})",
             "messageExpression": outside_namespace_message(policies, pod,
                                                            f"variables.refusedNs[{i}]"),
             "message": fallback}
            for i in range(sum(p.namespaces is not None for p in policies))]


def namespace_denial(policies: list[CompiledPolicy], pod: str) -> Obj:
    """`--strict`: the denial of a pod asking for a policy restricted away from its namespace,
    when the variable `nsDenied` holds, with the webhook's message (each refusal, `; `)."""
    return {"expression": "!variables.nsDenied",
            "messageExpression": (
                "variables.refusedNs.map(p, "
                + outside_namespace_message(policies, pod, "p") + ").join('; ')"),
            "message": ("an injection policy the pod asks for is restricted to other "
                        "namespaces; see the policy's namespaceSelector"),
            "reason": "Forbidden"}


def kept_for_security(table: str) -> str:
    """Whether a chosen policy may break the namespace's Pod Security level (`pod_security`):
    the webhook then decides the pod."""
    return (f"variables.securityLevel != '' && variables.chosen.exists(p, "
            f"!{table}[p].security[variables.securityLevel])")


def skipped_for_os(policies: list[CompiledPolicy]) -> str:
    """Whether the webhook skips the pod as `unsupported-os` (webhook.engine `_rules`, before it
    renders anything: whatever the pod's size or pod-level resources): a Windows pod that asks
    only for compiled policies none of which supports Windows (and none restricted away from
    its namespace, whose refusal comes first). A pod that also asks for a policy supporting
    Windows is the webhook's (`keptByWebhook`)."""
    linux_only = literal(dict.fromkeys(
        sorted(p.name for p in policies if OperatingSystem.WINDOWS not in p.systems), True))
    return (f"variables.windowsPod && size(variables.chosen) > 0 && "
            f"variables.chosen.all(p, p in {linux_only}) && size(variables.refusedNs) == 0")


def os_warnings(policies: list[CompiledPolicy], pod: str) -> list[Obj]:
    """The warnings of an `unsupported-os` skip in the webhook's words and order: validation i
    names the i-th chosen policy (all of them Linux-only when the variable `osSkipped` holds),
    as many as there are such policies; `pod` is the CEL of the pod's `namespace/name`."""
    linux_only = [p for p in policies if OperatingSystem.WINDOWS not in p.systems]
    head, middle, tail = around(unsupported_os_warning(
        POD_HOLE, NAME_HOLE, [OperatingSystem.LINUX], OperatingSystem.WINDOWS),
        POD_HOLE, NAME_HOLE)
    return [{"expression": f"!(variables.osSkipped && size(variables.chosen) > {i})",
             "messageExpression": (f"{literal(head)} + {pod} + {literal(middle)} + "
                                   f"variables.chosen[{i}] + {literal(tail)}"),
             "message": f"{head}(a Windows pod){middle}(a Linux policy){tail}"}
            for i in range(len(linux_only))]


def around(text: str, *markers: str) -> list[str]:
    """`text` cut at each marker, in order: the constant pieces between the values."""
    pieces = []
    for marker in markers:
        head, found, text = text.partition(marker)
        assert found, f"{marker!r} missing from {text!r}"
        pieces.append(head)
    return [*pieces, text]


@dataclass(frozen=True, slots=True)
class Compilable:
    """The policies that compile, in name order, with their `pod_security` maps; why each
    other one does not."""

    policies: list[CompiledPolicy]
    security: dict[str, str]
    uncompiled: dict[str, str]

    @classmethod
    def of(cls, policies: PolicySet) -> Compilable:
        uncompiled = {name: why for name in policies.names()
                      if (why := reason(policies[name])) is not None}
        names = [name for name in policies.names() if name not in uncompiled]
        return cls([policies[name] for name in names],
                   {name: pod_security(policies, name) for name in names}, uncompiled)


def injection(compilable: Compilable, *, kube_version: tuple[int, int] | None,
              status_key: str) -> list[Obj]:
    """The variables that decide whether the engine policy injects a pod (`injectable`) and
    build its patch as data (`injection`)."""
    compiled = compilable.policies
    clashing = _clashes(compiled)
    limits = Limits.of(compiled)
    variables: list[Obj] = [
        {"name": f"policy{index}",
         "expression": table_entry(policy, kube_version, status_key, clashing[policy.name],
                                   compilable.security[policy.name])}
        for index, policy in enumerate(compiled)]
    table = "{" + ", ".join(f"{literal(p.name)}: variables.policy{i}"
                            for i, p in enumerate(compiled)) + "}"
    spec, inits, apps, volumes = SPEC, INITS, APPS, VOLUMES
    token_path = literal(SERVICE_ACCOUNT_MOUNT_PATH)
    moduli, bases = REVISION_MODULI, REVISION_BASES
    powers = [[pow(base, i, modulus) for i in range(max(len(compiled), 1))]
              for base, modulus in zip(bases, moduli, strict=True)]

    def chosen(part: str) -> str:
        return f"variables.chosen.map(p, variables.table[p].{part}).flatten()"

    def chosen_containers(part: str) -> str:
        """The containers the chosen policies add at `part`, without resources where a
        policy shares the pod's envelope."""
        entry = "variables.table[p]"
        return (f"variables.chosen.map(p, variables.envelope && has({entry}.{part}S) ? "
                f"{entry}.{part}S : {entry}.{part}).flatten()")

    def extend(path: str, has_items: str, items: str) -> str:
        """webhook.patch `_extend`: the whole list when the pod has none, else one by one."""
        return (f"size({items}) == 0 ? [] : {has_items} ? {items}.map(e, "
                f"{_op('add', literal(path + '/-'), 'e.value')}) : "
                f"[{_op('add', literal(path), f'{items}.map(e, e.value)')}]")

    def stamp_list(items: str, field: str) -> str:
        return f"{items}.map(e, e.{field}).filter(s, s != '').join(',')"

    def revision(k: int) -> Obj:
        """One of the two sums of webhook.policy.revision."""
        return {"name": f"revision{k}", "expression": (
            f"lists.range(size(variables.chosen)).map(i, (variables.table[variables.chosen[i]]"
            f".d{k + 1} * {powers[k]}[i]) % {moduli[k]}).sum() % {moduli[k]}")}

    def hex8(number: str) -> str:
        return f"'00000000'.substring(size('%x'.format([{number}]))) + '%x'.format([{number}])"

    def own_names(kind: str) -> str:
        return f"has(c.{kind}) ? c.{kind}.map(o, o.name) : []"

    variables += [
        {"name": "table", "expression": table},
        *pod_variables(limits),
        {"name": "injectable", "expression": (
            "size(variables.requested) > 0 && variables.requested.all(n, n in variables.table) "
            "&& !variables.keptByWebhook && !(" + kept_for_security("variables.table") + ") "
            "&& size(variables.refusedNs) == 0 "
            "&& !variables.chosen.exists(p, "
            "variables.table[p].adds.exists(n, n in variables.ownNames) || "
            "variables.table[p].vols.exists(n, n in variables.ownVolumes) || "
            "variables.table[p].clashWith.exists(q, q in variables.chosen))")},
        {"name": "osSkipped", "expression": skipped_for_os(compiled)},
        # the pod's fields the placeholders read (webhook.render._Substitution)
        {"name": "generateName", "expression": (
            "has(object.metadata.generateName) ? object.metadata.generateName : ''")},
        {"name": "podName", "expression": (
            "has(object.metadata.name) && object.metadata.name != '' ? object.metadata.name : "
            "variables.generateName")},
        {"name": "serviceAccount", "expression": (
            f"has({spec}.serviceAccountName) ? {spec}.serviceAccountName : ''")},
        {"name": "fields", "expression": record(
            name="variables.podName", generateName="variables.generateName",
            namespace="namespaceObject.metadata.name",
            serviceAccountName="variables.serviceAccount")},
        # the service-account token the pod's own containers mount (webhook.render._token_mount)
        {"name": "tokenVolumes", "expression": (
            f"{volumes}.filter(v, v.name.startsWith({literal(SERVICE_ACCOUNT_VOLUME_PREFIX)}))"
            ".map(v, v.name)")},
        {"name": "token", "expression": (
            f"(has({spec}.automountServiceAccountToken) && "
            f"!{spec}.automountServiceAccountToken) || size(variables.tokenVolumes) == 0 || "
            f"!({inits} + {apps}).exists(c, has(c.volumeMounts) && c.volumeMounts.exists(m, "
            f"m.name == variables.tokenVolumes[0] && m.mountPath == {token_path})) ? '' : "
            "variables.tokenVolumes[0]")},
        {"name": "front", "expression": chosen_containers("front")},
        {"name": "back", "expression": chosen_containers("back")},
        {"name": "classic", "expression": chosen_containers("classic")},
        *compiled_resources.variables("variables.front", "variables.back", "variables.classic"),
        {"name": "volumes", "expression": chosen("volumes")},
        # each injected container with the path it ends up at (ops apply in sequence)
        {"name": "placed", "expression": (
            "lists.range(size(variables.front)).map(i, "
            + record(at="'/spec/initContainers/' + string(i)", e="variables.front[i]")
            + ") + lists.range(size(variables.back)).map(i, "
            + record(at=f"'/spec/initContainers/' + string(size(variables.front) + "
                        f"size({inits}) + i)", e="variables.back[i]")
            + ") + lists.range(size(variables.classic)).map(i, "
            + record(at=f"'/spec/containers/' + string(size({apps}) + i)",
                     e="variables.classic[i]") + ")")},
        {"name": "allEnv", "expression": chosen("env")},
        {"name": "env", "expression": _first("variables.allEnv", "name")},
        {"name": "mounts", "expression": chosen("mounts")},
        # per app container: the env vars and mounts it gets (webhook.render _render_env,
        # _render_mounts: the pod's own names and mount paths win, the first policy wins)
        {"name": "ownEnv", "expression": f"{apps}.map(c, {own_names('env')})"},
        {"name": "envAdded", "expression": (
            f"lists.range(size({apps})).map(i, variables.env.filter(e, "
            "!(e.name in variables.ownEnv[i])))")},
        {"name": "mountsAdded", "expression": (
            f"{apps}.map(c, lists.range(size(variables.mounts)).filter(i, "
            "(variables.mounts[i].all || c.name in variables.mounts[i].only) && "
            "!variables.mounts.slice(0, i).exists(m, (m.all || c.name in m.only) && "
            "m.norm == variables.mounts[i].norm) && !(has(c.volumeMounts) && "
            "c.volumeMounts.exists(o, o.mountPath.startsWith(variables.mounts[i].pre) && "
            "o.mountPath.substring(size(variables.mounts[i].pre)).matches('^/*$')))).map(i, "
            "variables.mounts[i]))")},
        {"name": "allAnnotations", "expression": chosen("ann")},
        {"name": "annotations", "expression": _first("variables.allAnnotations", "key")
         + ".filter(e, !(has(object.metadata.annotations) && "
           "e.key in object.metadata.annotations))"},
        {"name": "allLabels", "expression": chosen("lbl")},
        {"name": "labels", "expression": _first("variables.allLabels", "key")
         + ".filter(e, !(has(object.metadata.labels) && e.key in object.metadata.labels))"},
        {"name": "allPullSecrets", "expression": chosen("pull")},
        {"name": "pullSecrets", "expression": _first("variables.allPullSecrets", "name")
         + f".filter(e, !(has({spec}.imagePullSecrets) && {spec}.imagePullSecrets.exists(r, "
           "has(r.name) && r.name == e.name)))"},
        {"name": "statusResources", "expression": compiled_resources.stamp()},
        revision(0), revision(1),
        # the stamp, in the key order of webhook.render (in three parts: cel-cpp, the offline
        # evaluator, parses at most 32 levels deep, and a chain of `+` is one level each)
        {"name": "chosenPolicies", "expression": "variables.chosen.map(p, variables.table[p])"},
        {"name": "statusHead", "expression": " + ".join([
            "'{\"policies\":[' + " + stamp_list("variables.chosenPolicies", "nameJ"),
            "'],\"initContainers\":[' + " + stamp_list("variables.chosenPolicies", "initJ"),
            "'],\"containers\":[' + " + stamp_list("variables.chosenPolicies", "sideJ"),
            "'],\"volumes\":[' + " + stamp_list("variables.chosenPolicies", "volJ"), "'],'"])},
        {"name": "statusApps", "expression": " + ".join([
            f"'\"env\":{{' + lists.range(size({apps})).filter(i, "
            f"size(variables.envAdded[i]) > 0).map(i, '\"' + {apps}[i].name + '\":[' + "
            "variables.envAdded[i].map(e, e.nameJ).join(',') + ']').join(',')",
            f"'}},\"volumeMounts\":{{' + lists.range(size({apps})).filter(i, "
            f"size(variables.mountsAdded[i]) > 0).map(i, '\"' + {apps}[i].name + '\":[' + "
            "variables.mountsAdded[i].map(e, e.pathJ).join(',') + ']').join(',') + '},'"])},
        {"name": "status", "expression": " + ".join([
            "variables.statusHead + variables.statusApps",
            "'\"podAnnotations\":[' + variables.annotations.map(e, e.keyJ).join(',')",
            "'],\"podLabels\":[' + variables.labels.map(e, e.keyJ).join(',') + ']'",
            "variables.statusResources",
            "(size(variables.pullSecrets) == 0 ? '' : ',\"imagePullSecrets\":[' + "
            "variables.pullSecrets.map(e, e.nameJ).join(',') + ']')",
            f"',\"revision\":\"' + {hex8('variables.revision0')} + "
            f"{hex8('variables.revision1')} + '\"}}'",
        ])},
    ]
    app_path = "'/spec/containers/' + string(i) + "

    def per_app(added: str, kind: str) -> str:
        """Ops adding `added[i]` to app container i's `kind` list, then its placeholders."""
        has_items = f"has({apps}[i].{kind}) && size({apps}[i].{kind}) > 0"
        start = f"(has({apps}[i].{kind}) ? size({apps}[i].{kind}) : 0)"
        adds = (f"lists.range(size({apps})).map(i, size({added}[i]) == 0 ? [] : {has_items} ? "
                f"{added}[i].map(e, {_op('add', app_path + literal(f'/{kind}/-'), 'e.value')}) "
                f": [{_op('add', app_path + literal(f'/{kind}'), f'{added}[i].map(e, e.value)')}"
                "]).flatten()")
        fills = (f"lists.range(size({apps})).map(i, lists.range(size({added}[i])).map(k, "
                 f"{added}[i][k].subst.map(s, " + _op(
                     "replace", app_path + literal(f"/{kind}/") + f" + string({start} + k) + "
                     "s.path", _joined("s.segs")) + ")).flatten()).flatten()")
        return f"({adds}) + ({fills})"

    token_mount = record(name="variables.token", readOnly="true", mountPath=token_path)
    pull_value = record(name="e.name")
    has_init = f"size({inits}) > 0"
    parts = {
        # metadata: the annotations map first when the pod has none, the stamp last
        "opsAnnotations": " + ".join([
            "(has(object.metadata.annotations) ? [] : ["
            + _op("add", literal("/metadata/annotations"), "{}") + "])",
            "variables.annotations.map(e, " + _op("add", "e.path", _joined("e.segs")) + ")",
            "[" + _op("add", literal(f"/metadata/annotations/{escape(status_key)}"),
                      "variables.status") + "]"]),
        "opsLabels": (
            f"(size(variables.labels) == 0 || has(object.metadata.labels) ? [] : "
            f"[{_op('add', literal('/metadata/labels'), '{}')}]) + "
            "variables.labels.map(e, " + _op("add", "e.path", _joined("e.segs")) + ")"),
        # init containers: the front ones by index when the pod has some, the back ones after
        "opsInitFront": f"{has_init} ? lists.range(size(variables.front)).map(i, " + _op(
            "add", "'/spec/initContainers/' + string(i)", "variables.front[i].value") + ") : []",
        "opsInitBack": f"{has_init} ? variables.back.map(e, " + _op(
            "add", literal("/spec/initContainers/-"), "e.value") + ") : "
        "size(variables.front) + size(variables.back) == 0 ? [] : [" + _op(
            "add", literal("/spec/initContainers"),
            "(variables.front + variables.back).map(e, e.value)") + "]",
        "opsClassic": extend("/spec/containers", f"size({apps}) > 0", "variables.classic"),
        "opsMounts": per_app("variables.mountsAdded", "volumeMounts"),
        "opsEnv": per_app("variables.envAdded", "env"),
        "opsVolumes": extend("/spec/volumes", f"size({volumes}) > 0", "variables.volumes"),
        "opsPullSecrets": (
            f"size(variables.pullSecrets) == 0 ? [] : has({spec}.imagePullSecrets) && "
            f"size({spec}.imagePullSecrets) > 0 ? variables.pullSecrets.map(e, " + _op(
                "add", literal("/spec/imagePullSecrets/-"), pull_value) + ") : [" + _op(
                "add", literal("/spec/imagePullSecrets"),
                f"variables.pullSecrets.map(e, {pull_value})") + "]"),
        "opsResources": compiled_resources.operations(_op),
        # the injected containers' token mounts and placeholders, at the paths they ended at
        "opsToken": (
            "variables.token == '' ? [] : variables.placed.filter(x, x.e.slot != 'none')"
            ".map(x, x.e.slot == 'append' ? " + _op("add", "x.at + '/volumeMounts/-'",
                                                    token_mount)
            + " : " + _op("add", "x.at + '/volumeMounts'", f"[{token_mount}]") + ")"),
        "opsPlaceholders": (
            "variables.placed.map(x, x.e.subst.map(s, " + _op(
                "replace", "x.at + s.path", _joined("s.segs")) + ")).flatten() + "
            "lists.range(size(variables.volumes)).map(k, variables.volumes[k].subst.map(s, "
            + _op("replace", f"'/spec/volumes/' + string(size({volumes}) + k) + s.path",
                  _joined("s.segs")) + ")).flatten()"),
    }
    variables += [{"name": name, "expression": expression} for name, expression in parts.items()]
    variables.append({"name": "injection",
                      "expression": " + ".join(f"variables.{name}" for name in parts)})
    return variables


@dataclass(frozen=True, slots=True)
class Check:
    """Variables and a validation for the deny ValidatingAdmissionPolicy."""

    variables: list[Obj]
    validation: Obj


def clash_denial(compilable: Compilable, *, inject_key: str) -> Check:
    """`--on-conflict deny`: the denial of a pod whose container or volume names clash with a
    chosen policy's, or two chosen policies' names clash, with the webhook's message
    (webhook.render `clashes`, `_Names`). It judges what the engine policy left unstamped: the
    pod as its author wrote it, as the webhook saw it. Pods the engine policy leaves to the
    webhook are not judged: the webhook decides them (and, in hybrid mode, denied them first)."""
    compiled = compilable.policies
    names = "{" + ", ".join(
        f"{literal(p.name)}: " + record(adds=literal(p.init_container_names + p.sidecar_names),
                                        vols=literal(p.volume_names),
                                        security=compilable.security[p.name])
        for p in compiled) + "}"
    at = "variables.chosen[variables.clashAt[0]]"
    earlier = "variables.chosen.slice(0, variables.clashAt[0])"
    found = ("size(variables.clashes) > 0 ? variables.clashes[0] : "
             "variables.volumeClashes[0]")

    def theirs(kind: str, part: str) -> str:
        return (f"\"{kind} '\" + variables.clashName + \"' of injection policy '\" + {earlier}"
                f".filter(q, variables.clashName in variables.clashNames[q].{part})[0] + \"'\"")

    def ours(kind: str) -> str:
        return f"\"the pod's {kind} '\" + variables.clashName + \"'\""

    pod = SHOWN_POD
    variables = [
        {"name": "clashNames", "expression": names},
        *pod_variables(Limits.of(compiled)),
        {"name": "judged", "expression": (
            "!variables.leftToWebhook && variables.skip == '' && size(variables.unknown) == 0 "
            "&& size(variables.requested) > 0 && variables.requested.all(n, n in "
            "variables.clashNames) && !variables.keptByWebhook && !("
            + kept_for_security("variables.clashNames") + ") && "
            "size(variables.refusedNs) == 0")},
        {"name": "clashAt", "expression": (
            "lists.range(size(variables.chosen)).filter(j, variables.clashNames["
            "variables.chosen[j]].adds.exists(n, n in variables.ownNames || "
            "variables.chosen.slice(0, j).exists(q, n in variables.clashNames[q].adds)) || "
            "variables.clashNames[variables.chosen[j]].vols.exists(n, n in variables.ownVolumes "
            "|| variables.chosen.slice(0, j).exists(q, n in variables.clashNames[q].vols)))")},
        {"name": "clashes", "expression": (
            f"variables.clashNames[{at}].adds.filter(n, n in variables.ownNames || "
            f"{earlier}.exists(q, n in variables.clashNames[q].adds))")},
        {"name": "volumeClashes", "expression": (
            f"variables.clashNames[{at}].vols.filter(n, n in variables.ownVolumes || "
            f"{earlier}.exists(q, n in variables.clashNames[q].vols))")},
        {"name": "clashName", "expression": found},
        # as webhook.render._Names words it: the pod's containers, then its init containers
        {"name": "clashWith", "expression": (
            f"size(variables.clashes) > 0 ? ({APPS}.exists(c, c.name == variables.clashName) ? "
            f"{ours('container')} : {INITS}.exists(c, c.name == variables.clashName) ? "
            f"{ours('init container')} : {theirs('container', 'adds')}) : ("
            f"variables.clashName in variables.ownVolumes ? {ours('volume')} : "
            f"{theirs('volume', 'vols')})")},
    ]
    message = (
        f"'pod ' + {pod} + ': injection policy \\'' + {at} + '\\' adds ' + "
        "(size(variables.clashes) > 0 ? 'container' : 'volume') + ' \\'' + "
        "variables.clashName + '\\', which clashes with ' + variables.clashWith + "
        f"'; rename one of them or leave \\'' + {at} + '\\' out of the ' + "
        f"{literal(inject_key)} + ' annotation'")
    return Check(variables, {
        "expression": "!variables.judged || size(variables.clashAt) == 0",
        "messageExpression": message,
        "message": ("an injection policy's container or volume names clash with the pod's; see "
                    f"the {inject_key} annotation"),
        "reason": "Forbidden"})
