"""`policies compile`: the policy set as admission policies the apiserver runs itself (Kubernetes
1.36+, admissionregistration.k8s.io/v1), with nothing on the pod path.

The design (docs/research/mutating-admission-policy.md): one engine MutatingAdmissionPolicy for the
whole set, because the apiserver runs policies in no fixed order, with one JSONPatch mutation; two
bindings that mirror the chart's two webhook entries (namespace opt-in, pod-label opt-in); and a
ValidatingAdmissionPolicy with the `Warn` action for the warnings the webhook returns; and, with
`--strict` or `--on-conflict deny` (the default), one with the `Deny` action for the pods the
webhook denies.

What is compiled: selection (the pod's annotation, the namespace's default policies, the global
defaults, opt-out) and every decision that skips the pod (`opted-out`, `no-policies`,
`unknown-policy`, `namespace-not-allowed` when every policy asked for is restricted away from
the namespace, `unsupported-os`), with the webhook's exact stamp and warnings; `--strict`'s
denial of a pod that names an unknown policy or one restricted away from its namespace and
`--on-conflict deny`'s of a name clash, with their exact messages and status code (403); and
injection (webhook.compiled_injection). A pod whose annotations the two could read differently
(see MAX_TEXT, PYTHON_ONLY_SPACE, PLAIN_NAME) is left to the webhook, as are the pods
webhook.compiled_injection does not inject itself, and those that ask for a policy it cannot
compile: such a policy is reported, with its file and the reason, and `--hybrid` leaves its pods
to the webhook. That split is safe: the compiled policy runs before any webhook, and a pod it
stamps is a no-op for the webhook (its stamp makes a repeat call a no-op), so one pod never gets
both engines.

Everything that depends only on the policy files is decided here (names, texts); CEL answers only
the questions that depend on the pod and its namespace. Texts the webhook also writes (the stamp,
the warning) come from the engine's own functions, cut at markers, so they cannot drift apart.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import yaml
from jsonpointer import escape

from webhook.compiled_injection import (
    INJECT,
    SHOWN_POD,
    WINDOWS_POD,
    Compilable,
    around,
    clash_denial,
    injection,
    literal,
    namespace_denial,
    namespace_variables,
    namespace_warnings,
    os_warnings,
    record,
    refused_for_namespace,
    skipped_for_os,
)
from webhook.engine import EngineConfig
from webhook.keys import OPT_IN, OPT_OUT, SYSTEM_NAMESPACES, USE_DEFAULTS
from webhook.platform import OperatingSystem
from webhook.policy import DNS1123_SUBDOMAIN, PolicySet, revision
from webhook.render import skipped_status
from webhook.selection import SkipReason, unknown_policy_denial, unknown_policy_warning

API_VERSION = "admissionregistration.k8s.io/v1"
#: the first Kubernetes minor that serves MutatingAdmissionPolicy in admissionregistration/v1
MINIMUM_MINOR = 36

Obj = dict[str, Any]
#: the ValidatingAdmissionPolicies beside the engine policy, by the suffix of their name
CHECKS = ("warn", "deny")
#: the bindings of each policy, by the suffix of their name: the chart's two webhook entries
ENTRIES = ("namespace", "pod")
#: markers where values go in a text the engine writes (plain ASCII: JSON leaves them alone)
HOLE = ("<<hole-0>>", "<<hole-1>>")
#: Pods the compiled policy leaves to the webhook (so that it never decides one differently):
#: an annotation longer than this (the CEL cost of a list of names grows with it) ...
MAX_TEXT = 512
#: ... or holding U+001C-U+001F, which Python's str.strip() removes and CEL's trim() keeps ...
PYTHON_ONLY_SPACE = "[\\x1c-\\x1f]"
#: ... or naming an unknown policy the webhook's warning would quote differently (repr())
PLAIN_NAME = "^[ -&(-\\[\\]-~]*$"


@dataclass(frozen=True, slots=True)
class Uncompiled:
    """A policy left to the webhook, and why."""

    policy: str
    source: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: policy {self.policy!r}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Compiled:
    """The objects to apply, and what was left to the webhook."""

    objects: list[Obj]
    uncompiled: list[Uncompiled]
    #: the pods the compiled policies leave to the webhook whatever policies they ask for
    left_pods: list[str]

    def yaml(self) -> str:
        return yaml.safe_dump_all(self.objects, sort_keys=False, width=100)


@dataclass(frozen=True, slots=True)
class Target:
    """Where the objects go: their name (the chart's fullname), the webhook's own namespace
    (never touched), whether pods may opt in by label from a plain namespace, and the failure
    policy of the engine policy."""

    name: str = "sidecar-injector"
    own_namespace: str | None = None
    pod_opt_in: bool = True
    failure_policy: str = "Fail"


def compile_policies(policies: PolicySet, config: EngineConfig, target: Target) -> Compiled:
    """The engine MutatingAdmissionPolicy, the warning ValidatingAdmissionPolicy (and with
    `--strict` or `--on-conflict deny` the denying one) and their bindings for `policies` under
    `config`, and the policies that could not be compiled."""
    cel = _Cel(policies, config)
    uncompiled = [Uncompiled(name, policies[name].source, why)
                  for name, why in cel.uncompiled.items()]
    labels = {"app.kubernetes.io/name": "sidecar-injector",
              "app.kubernetes.io/managed-by": "sidecar-injector-compile"}
    constraints = {
        "resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"],
                           "operations": ["CREATE"]}],
        "namespaceSelector": {"matchExpressions": [_excluded(target)]},
        "matchPolicy": "Equivalent",
    }
    engine = {
        "apiVersion": API_VERSION, "kind": "MutatingAdmissionPolicy",
        "metadata": {"name": target.name, "labels": labels,
                     "annotations": {f"{config.selection.keys.prefix}/compiled-from":
                                     _settings(policies, config)}},
        "spec": {
            "failurePolicy": target.failure_policy,
            "matchConstraints": constraints,
            "matchConditions": [{"name": "not-stamped", "expression": cel.not_stamped}],
            "variables": cel.engine_variables,
            "mutations": [{"patchType": "JSONPatch", "jsonPatch": {"expression": cel.patch}}],
            # a repeat is a no-op (the stamp's matchCondition), as a repeat webhook call is
            "reinvocationPolicy": "IfNeeded",
        },
    }

    def validating(name: str, failure_policy: str, validations: list[Obj],
                   variables: list[Obj], **spec: Any) -> Obj:
        return {"apiVersion": API_VERSION, "kind": "ValidatingAdmissionPolicy",
                "metadata": {"name": name, "labels": labels},
                "spec": {"failurePolicy": failure_policy, "matchConstraints": constraints,
                         **spec, "variables": variables, "validations": validations}}

    warn = validating(f"{target.name}-{CHECKS[0]}", "Ignore",  # a warning never blocks a pod
                      [{"expression": cel.not_skipped_unknown,
                        "messageExpression": cel.unknown_warning,
                        "message": cel.unknown_fallback}, *cel.skip_warnings],
                      [*cel.variables, *cel.skip_variables])
    objects: list[Obj] = [engine]
    for suffix, selectors in _entries(target, config):
        objects.append(_binding("MutatingAdmissionPolicyBinding", target.name, suffix, labels,
                                selectors))
    checks: list[tuple[Obj, str]] = [(warn, "Warn")]
    denials: list[Obj] = []
    variables = list(cel.variables)
    if config.selection.strict:
        denials.append({"expression": cel.not_denied_unknown,
                        "messageExpression": cel.unknown_denial,
                        "message": cel.unknown_denial_fallback, "reason": "Forbidden"})
        variable, validation = cel.namespace_denial
        denials.append(validation)
        variables.append(variable)
    if config.on_conflict == "deny":
        clash = clash_denial(cel.compilable, inject_key=config.selection.keys.inject)
        denials.append(clash.validation)
        variables += clash.variables
    if denials:
        deny = validating(
            f"{target.name}-{CHECKS[1]}", target.failure_policy, denials, variables,
            # after every mutation: a pod stamped by then (skipped, or injected by the webhook
            # in hybrid mode) is not the engine's to deny
            matchConditions=[{"name": "not-stamped", "expression": cel.not_stamped}])
        checks.append((deny, "Deny"))
    for policy, action in checks:
        objects.append(policy)
        for suffix, selectors in _entries(target, config):
            objects.append(_binding("ValidatingAdmissionPolicyBinding",
                                    policy["metadata"]["name"], suffix, labels,
                                    {**selectors, "validationActions": [action]}))
    risky = [name for name, levels in cel.compilable.security.items() if "false" in levels]
    restricted = [p.name for p in cel.compilable.policies if p.namespaces is not None]
    windows = [p.name for p in cel.compilable.policies
               if OperatingSystem.WINDOWS in p.systems]
    left_pods = ["pods with pod-level spec.resources over 8Ti, over 32 init containers or 8 "
                 "resources",
                 *([f"Windows pods asking for {', '.join(map(repr, windows))}"]
                   if windows else []),
                 "pods too large for the CEL cost limits",
                 *(["name clashes under --on-conflict skip"]
                   if config.on_conflict == "skip" else []),
                 *([f"pods in a namespace enforcing a Pod Security level that "
                    f"{', '.join(map(repr, risky))} may break"] if risky else []),
                 *([f"pods asking for {', '.join(map(repr, restricted))} in a namespace its "
                    "namespaceSelector excludes, along with a policy the namespace may use"]
                   if restricted and not config.selection.strict else [])]
    return Compiled(objects, uncompiled, left_pods)


#: the longest target name: an object name (a DNS subdomain, 253) with room for every suffix
MAX_NAME = 200


def name_problem(name: str) -> str | None:
    """Why `name` cannot name the compiled objects (the apiserver would refuse one of
    `object_names`), or None when it can."""
    if len(name) <= MAX_NAME and re.match(DNS1123_SUBDOMAIN, name):
        return None
    return (f"{name!r} cannot name the admission policies: use up to {MAX_NAME} lowercase "
            "letters, digits, '-' and '.', starting and ending with a letter or digit")


def object_names(name: str) -> dict[str, list[str]]:
    """Every object `compile_policies` may write for a target named `name`, by kind, whatever
    the settings: what `serve --engine` owns (and deletes when a setting no longer needs it),
    and the names the chart's RBAC grants it."""
    policies = {"MutatingAdmissionPolicy": [name],
                "ValidatingAdmissionPolicy": [f"{name}-{check}" for check in CHECKS]}
    names = dict(policies)
    for kind, owned in policies.items():
        names[f"{kind}Binding"] = [f"{policy}-{entry}" for policy in owned for entry in ENTRIES]
    return names


def _settings(policies: PolicySet, config: EngineConfig) -> str:
    """What the objects were compiled from, for whoever compares them with the server's
    settings: they must be the same, or the two engines decide pods differently."""
    selection = config.selection
    return json.dumps({
        "policies": revision(policies[name] for name in policies.names()),
        "defaultPolicies": list(selection.default_policies), "strict": selection.strict,
        "onConflict": config.on_conflict, "ownNamespace": selection.own_namespace,
    }, separators=(",", ":"))


def _excluded(target: Target) -> Obj:
    """Namespaces never touched nor stamped: the system ones and the webhook's own."""
    names = sorted(SYSTEM_NAMESPACES) + ([target.own_namespace] if target.own_namespace else [])
    return {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": names}


def _entries(target: Target, config: EngineConfig) -> list[tuple[str, Obj]]:
    """The chart's two webhook entries as binding selectors: pods in an opted-in namespace
    (unless labelled out), and pods labelled in from a plain one (with `pod_opt_in`)."""
    inject = config.selection.keys.inject
    entries = [(ENTRIES[0], "In", {"key": inject, "operator": "NotIn", "values": [OPT_OUT]}),
               (ENTRIES[1], "NotIn", {"key": inject, "operator": "In", "values": [OPT_IN]})]
    return [(name, {"matchResources": {
        "namespaceSelector": {"matchExpressions": [
            {"key": inject, "operator": operator, "values": [OPT_IN]}, _excluded(target)]},
        "objectSelector": {"matchExpressions": [pod]},
        "matchPolicy": "Equivalent",
    }}) for name, operator, pod in entries[:2 if target.pod_opt_in else 1]]


def _binding(kind: str, policy: str, suffix: str, labels: dict[str, str], spec: Obj) -> Obj:
    return {"apiVersion": API_VERSION, "kind": kind,
            "metadata": {"name": f"{policy}-{suffix}", "labels": labels},
            "spec": {"policyName": policy, **spec}}


class _Cel:
    """The CEL expressions of the engine policy and the warning policy."""

    def __init__(self, policies: PolicySet, config: EngineConfig) -> None:
        selection = config.selection
        keys = selection.keys
        known = literal(dict.fromkeys(policies.names(), True))

        def annotation(obj: str, key: str) -> str:
            return (f"has({obj}.metadata.annotations) && {literal(key)} in "
                    f"{obj}.metadata.annotations")

        def names(text: str) -> str:  # selection.parse_policy_list, without its dedup
            return f"{text}.split(',').map(n, n.trim()).filter(n, n != '')"

        self.compilable = Compilable.of(policies)
        self.uncompiled = self.compilable.uncompiled
        compiled = self.compilable.policies
        skips = {
            "opted-out": "variables.word == " + literal(OPT_OUT),
            "no-policies": "size(variables.requested) == 0",
        }
        if not selection.strict:
            skips["unknown-policy"] = "size(variables.unknown) > 0"
        decision = "''"
        for reason, condition in reversed(skips.items()):
            decision = f"{condition} ? {literal(SkipReason(reason).value)} : {decision}"
        self.variables = [
            {"name": "hasInject", "expression": annotation("object", keys.inject)},
            {"name": "inject", "expression": "variables.hasInject ? object.metadata.annotations"
                                             f"[{literal(keys.inject)}] : ''"},
            {"name": "word", "expression": "variables.inject.trim().lowerAscii()"},
            {"name": "useDefaults", "expression": "!variables.hasInject || variables.word in "
                                                  + literal(sorted(USE_DEFAULTS))},
            {"name": "namespaceText", "expression": (
                f"{annotation('namespaceObject', keys.policies)} ? namespaceObject.metadata"
                f".annotations[{literal(keys.policies)}] : ''")},
            {"name": "namespaceDefaults", "expression": names("variables.namespaceText")},
            {"name": "requested", "expression": (
                "!variables.useDefaults ? " + names("variables.inject")
                + " : size(variables.namespaceDefaults) > 0 ? variables.namespaceDefaults : "
                + literal(list(selection.default_policies)))},
            # deduplicated for the warning only: distinct() costs quadratically
            {"name": "unknown",
             "expression": f"variables.requested.filter(n, !(n in {known})).distinct()"},
            # (no list literal of the two: the apiserver wants one element type per literal)
            {"name": "leftToWebhook", "expression": " || ".join([
                *(f"size({text}) > {MAX_TEXT} || {text}.matches({literal(PYTHON_ONLY_SPACE)})"
                  for text in ("variables.inject", "variables.namespaceText")),
                f"variables.unknown.exists(n, !n.matches({literal(PLAIN_NAME)}))"])},
            # the skip the selection decides ('': none, or left to the webhook)
            {"name": "skip", "expression": f"variables.leftToWebhook ? '' : {decision}"},
            *namespace_variables(compiled),
        ]
        head, tail = around(skipped_status(HOLE[0]), HOLE[0])
        stamp = f"{literal(head)} + variables.decision + {literal(tail)}"
        status = literal(f"/metadata/annotations/{escape(keys.status)}")
        self.engine_variables = [
            *self.variables,
            *injection(self.compilable, kube_version=config.kube_version,
                       status_key=keys.status),
            # every policy asked for is refused in this namespace: skipped before anything
            # else (with --strict, the deny policy denies the pod instead)
            {"name": "nsSkipped", "expression": (
                "false" if selection.strict else refused_for_namespace(compiled, every=True))},
            {"name": "decision", "expression": (
                f"variables.skip != '' || variables.leftToWebhook ? variables.skip : "
                f"variables.injectable ? {literal(INJECT)} : variables.nsSkipped ? "
                f"{literal(SkipReason.NAMESPACE_NOT_ALLOWED.value)} : variables.osSkipped ? "
                f"{literal(SkipReason.UNSUPPORTED_OS.value)} : ''")},
            # the patch as data: what to inject, the stamp of a skip, or nothing
            {"name": "ops", "expression": (
                f"variables.decision == {literal(INJECT)} ? variables.injection : "
                "variables.decision == '' ? [] : [has(object.metadata.annotations) ? "
                + record(op="'add'", path=status, value=stamp) + " : "
                + record(op="'add'", path="'/metadata/annotations'",
                         value=f"{{{literal(keys.status)}: {stamp}}}") + "]")},
        ]
        self.not_stamped = f"!({annotation('object', keys.status)})"
        self.patch = "variables.ops.map(o, JSONPatch{op: o.op, path: o.path, value: o.value})"
        unknown_stamp = skipped_status(SkipReason.UNKNOWN_POLICY.value)
        self.not_skipped_unknown = (
            f"variables.skip != {literal(SkipReason.UNKNOWN_POLICY.value)} || "
            f"!({annotation('object', keys.status)}) || object.metadata.annotations"
            f"[{literal(keys.status)}] != {literal(unknown_stamp)}")
        self.unknown_fallback = unknown_policy_warning("(a pod)", "(see its annotation)", keys)
        pod = SHOWN_POD
        # a pod skipped for asking only for Linux policies on Windows, or only for policies
        # restricted away from its namespace, by the engine policy: the webhook's warning for
        # each, unless the webhook decided (and warned) itself

        def stamped(reason: SkipReason, condition: str) -> str:
            return (f"!variables.leftToWebhook && variables.skip == '' && "
                    f"{annotation('object', keys.status)} && object.metadata.annotations"
                    f"[{literal(keys.status)}] == {literal(skipped_status(reason.value))} && "
                    f"{condition}")
        self.skip_variables = [
            WINDOWS_POD,
            {"name": "osSkipped",
             "expression": stamped(SkipReason.UNSUPPORTED_OS, skipped_for_os(compiled))},
            {"name": "nsSkipped", "expression": "false" if selection.strict else stamped(
                SkipReason.NAMESPACE_NOT_ALLOWED, refused_for_namespace(compiled, every=True))},
        ]
        self.skip_warnings = [*namespace_warnings(compiled, pod), *os_warnings(compiled, pod)]
        # --strict: the engine denies a pod asking for a policy restricted away from its
        # namespace (unless the webhook decided, and denied, it)
        self.namespace_denial = (
            {"name": "nsDenied", "expression": (
                "!variables.leftToWebhook && variables.skip == '' && "
                + refused_for_namespace(compiled, every=False))},
            namespace_denial(compiled, pod))
        listed = "variables.unknown.map(n, \"'\" + n + \"'\").join(', ')"
        start, middle, end = around(unknown_policy_warning(*HOLE, keys), *HOLE)
        self.unknown_warning = (
            f"{literal(start)} + {pod} + {literal(middle)} + {listed} + {literal(end)}")
        # --strict: the engine denies a pod that is not skipped and names an unknown policy
        self.not_denied_unknown = ("variables.leftToWebhook || variables.skip != '' || "
                                   "size(variables.unknown) == 0")
        known_names = policies.names()
        start, middle, end = around(unknown_policy_denial(*HOLE, known_names), *HOLE)
        self.unknown_denial = (
            f"{literal(start)} + {pod} + {literal(middle)} + {listed} + {literal(end)}")
        self.unknown_denial_fallback = unknown_policy_denial("(a pod)", "(see its annotation)",
                                                             known_names)
