"""The injection engine: one pod in, a decision and its RFC 6902 patch out.

Every caller (the server's `/mutate`, the `inject` CLI, the end-to-end suite) goes through
`mutate`, which reads as the whole pipeline:

    read the pod -> decide (selection) -> leave out what the cluster's rules forbid (a policy
    restricted to other namespaces, one for another operating system, one that would break
    the namespace's Pod Security level) -> render the additions -> build the patch -> outcome

`workload_warnings` runs the same selection, namespace and clash rules on a workload's pod
template, for the warnings the webhook returns when a Deployment (or another pod-template owner)
is applied: what its pods will not get, said before any pod exists.

It is pure: no I/O, no web framework, no Kubernetes client. Bad input is a `Deny` (an object that
is not a pod) or a `Skip`, never an exception.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import jsonpatch
import jsonpointer

from webhook.keys import OPT_IN, Keys
from webhook.patch import Operation, injection_patch, removal_patch, serialize, stamp_patch
from webhook.platform import OperatingSystem, pod_os
from webhook.podsecurity import Level, compliant_pod, new_violations
from webhook.policy import CompiledPolicy, PolicySet
from webhook.render import (
    InvalidPodError,
    OnConflict,
    PodView,
    RenderOptions,
    clashes,
    render,
    skipped_status,
)
from webhook.selection import (
    Decision,
    Deny,
    Inject,
    Selection,
    Skip,
    SkipReason,
    describe_pod,
    requested_policies,
    select,
)
from webhook.workloads import CHECKED_WORKLOADS, POD_PATHS


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Everything besides the pod and the policies that shapes a result."""

    selection: Selection = field(default_factory=Selection)
    on_conflict: OnConflict = "deny"
    kube_version: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """The engine's answer for one pod."""

    decision: Decision
    operations: list[Operation] = field(default_factory=list)
    warnings: tuple[str, ...] = ()

    @property
    def patch_json(self) -> bytes:
        """The RFC 6902 patch as UTF-8 JSON text (what the server sends, base64-encoded)."""
        return serialize(self.operations)

    @property
    def patch(self) -> list[Operation]:
        """The RFC 6902 patch as fresh data (what `jsonpatch` applies)."""
        ops: list[Operation] = json.loads(self.patch_json)
        return ops

    @property
    def allowed(self) -> bool:
        return not isinstance(self.decision, Deny)

    @property
    def message(self) -> str | None:
        """Why the pod is denied, for the client; None when it is allowed."""
        return self.decision.message if isinstance(self.decision, Deny) else None

    @property
    def policies(self) -> tuple[str, ...]:
        """The policies actually applied."""
        return self.decision.policies if isinstance(self.decision, Inject) else ()

    @property
    def result(self) -> str:
        """`injected`, `denied` or the skip reason: the metric label and log field."""
        if isinstance(self.decision, Skip):
            return self.decision.reason.value
        return "injected" if isinstance(self.decision, Inject) else "denied"


def mutate(
    pod: Any,
    *,
    namespace: str,
    policies: PolicySet,
    config: EngineConfig,
    namespace_policies: Sequence[str] | None = None,
    pod_security: Level | None = None,
    namespace_labels: Mapping[str, str] | None = None,
) -> Outcome:
    """Decide for `pod` in `namespace` and build the patch; `namespace_policies` None = unknown;
    `pod_security` is the level the namespace enforces (None: none, or not known);
    `namespace_labels` None = unknown (a policy restricted to some namespaces is then refused)."""
    if config.selection.untouched(namespace):  # decided before the pod is even read
        return Outcome(Skip(SkipReason.SYSTEM_NAMESPACE))
    try:
        view = PodView.of(pod, namespace)
    except InvalidPodError as exc:
        return Outcome(Deny(f"pod {_best_name(pod, namespace)}: {exc}"))
    keys = config.selection.keys
    decision = select(view.metadata, namespace=view.namespace, settings=config.selection,
                      known=policies.policies, namespace_policies=namespace_policies)
    if isinstance(decision, Skip):
        return _skip(view, decision, keys.status)
    if isinstance(decision, Deny):
        return Outcome(decision, warnings=decision.warnings)
    options = RenderOptions(status_key=keys.status, inject_key=keys.inject,
                            on_conflict=config.on_conflict, kube_version=config.kube_version)
    chosen = [policies[name] for name in decision.policies]
    refused: dict[str, str] = {}
    refusals: list[str] = []
    for reason, rule in _rules(pod, view, options, pod_security=pod_security,
                               namespace_labels=namespace_labels):
        problems = rule(chosen)  # each rule sees only what the earlier ones left in
        if reason in _STRICT and problems and config.selection.strict:
            message = "; ".join(problem for _, problem in problems)
            return Outcome(Deny(message, decision.warnings), warnings=decision.warnings)
        for policy, problem in problems:
            refused[policy.name] = reason.value
            refusals.append(problem)
        chosen = [policy for policy in chosen if policy.name not in refused]
        if not chosen:
            warnings = (*decision.warnings, *refusals)
            return _skip(view, Skip(reason, warnings), keys.status)
    rendered = render(view, chosen, replace(options, refused=refused) if refused else options)
    warnings = (*decision.warnings, *refusals, *rendered.warnings)
    if rendered.denial is not None:
        return Outcome(Deny(rendered.denial, warnings), warnings=warnings)
    if not rendered.applied:
        return _skip(view, Skip(SkipReason.CONFLICT, warnings), keys.status)
    applied = Inject(tuple(rendered.applied), warnings)
    return Outcome(applied, injection_patch(view, rendered), warnings)


Problems = list[tuple[CompiledPolicy, str]]
Rule = Callable[[Sequence[CompiledPolicy]], Problems]


#: the rules whose refusal `--strict` turns into a denial
_STRICT = (SkipReason.NAMESPACE_NOT_ALLOWED, SkipReason.POD_SECURITY)


def _rules(pod: dict[str, Any], view: PodView, options: RenderOptions, *,
           pod_security: Level | None, namespace_labels: Mapping[str, str] | None,
           ) -> list[tuple[SkipReason, Rule]]:
    """The rules that leave a requested policy out, in the order they run: each takes the
    policies still chosen and names those it leaves out, and why."""
    system = pod_os(view.spec)
    rules: list[tuple[SkipReason, Rule]] = [
        (SkipReason.NAMESPACE_NOT_ALLOWED, lambda chosen: _namespace_problems(
            f"pod {view.name}", view.namespace, chosen, namespace_labels)),
        (SkipReason.UNSUPPORTED_OS, lambda chosen: [
            (policy, unsupported_os_warning(view.name, policy.name, policy.systems, system))
            for policy in chosen if system not in policy.systems])]
    if pod_security in (Level.BASELINE, Level.RESTRICTED):
        rules.append((SkipReason.POD_SECURITY, lambda chosen: _pod_security_problems(
            pod, view, chosen, options, pod_security)))
    return rules


def unsupported_os_warning(pod: str, policy: str, systems: Iterable[OperatingSystem],
                           system: OperatingSystem) -> str:
    """The warning for `policy` (which supports `systems`) left out of `pod` (`namespace/name`),
    which runs on `system`."""
    return (f"pod {pod}: injection policy {policy!r} skipped: it supports "
            f"{', '.join(sorted(systems))}, and the pod runs on {system.value}")


def _namespace_problems(subject: str, namespace: str, chosen: Sequence[CompiledPolicy],
                        labels: Mapping[str, str] | None) -> Problems:
    """The restricted policies `namespace` may not use, each with a warning that starts with
    `subject` (the pod); all of them when its labels are not known (fail closed)."""
    problems = []
    for policy in chosen:
        if policy.namespaces is None:
            continue
        if labels is None:
            problems.append((policy, (
                f"{subject}: injection policy {policy.name!r} skipped: it is restricted to "
                f"namespaces matching {policy.namespaces.describe()}, and the labels of namespace "
                f"{namespace} are not known (no cluster access): not applied")))
        elif not policy.namespaces.matches(labels):
            problems.append((policy, outside_namespace_warning(
                subject, policy.name, policy.namespaces.describe(), namespace)))
    return problems


def outside_namespace_warning(subject: str, policy: str, selector: str, namespace: str) -> str:
    """The refusal of `policy` (restricted to namespaces matching `selector`, in kubectl's
    syntax) for `subject` (the pod) in `namespace`, which it does not match."""
    return (f"{subject}: injection policy {policy!r} skipped: it is restricted to namespaces "
            f"matching {selector}, and namespace {namespace} is not one of them")


def _pod_security_problems(pod: dict[str, Any], view: PodView, chosen: Sequence[CompiledPolicy],
                           options: RenderOptions, level: Level,
                           ) -> Problems:
    """The policies that, each applied alone, would make `pod` break `level` (what it already
    breaks is the apiserver's business, not ours), with the warning that says so."""
    problems = []
    for policy in chosen:
        rendered = render(view, [policy], options)
        if rendered.denial is not None or not rendered.applied:
            continue  # a clash: rendering them together reports it
        ops = json.loads(serialize(injection_patch(view, rendered)))
        try:
            after = jsonpatch.apply_patch(pod, ops)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException):
            continue  # a pod the patch cannot apply to is refused by the apiserver anyway
        found = new_violations(pod, after, level)
        if found:
            problems.append((policy, (
                f"pod {view.name}: injection policy {policy.name!r} skipped: it would break "
                f"the namespace's Pod Security level {level.value!r}: "
                + "; ".join(map(str, found)))))
    return problems


def sample_pod_security(policies: PolicySet, name: str, level: Level) -> list[str]:
    """What injecting policy `name` alone into a pod that meets `level` breaks (a pod with no
    pod-level settings, podsecurity.compliant_pod, so that what is added must be hardened on its
    own), one line each; a line saying why when it cannot be injected there at all."""
    config = EngineConfig()
    pod = compliant_pod(level, annotations={config.selection.keys.inject: name})
    outcome = mutate(pod, namespace="pod-security-check", policies=policies, config=config)
    if outcome.policies != (name,):
        return [f"policy {name} could not be injected into a sample pod: "
                f"{outcome.message or outcome.result}"]
    injected = jsonpatch.apply_patch(pod, outcome.patch)
    return [f"policy {name} breaks Pod Security level {level}: {violation}"
            for violation in new_violations(pod, injected, level)]


def unmutate(pod: Any, *, namespace: str, config: EngineConfig) -> list[Operation]:
    """The patch that undoes the injection recorded in `P/status`; ValueError if there is none."""
    try:
        view = PodView.of(pod, namespace)
    except InvalidPodError as exc:
        raise ValueError(str(exc)) from None
    return removal_patch(view, config.selection.keys.status)


def workload_warnings(
    obj: Any,
    *,
    namespace: str,
    policies: PolicySet,
    config: EngineConfig,
    namespace_policies: Sequence[str] | None = None,
    namespace_labels: Mapping[str, str] | None = None,
    template_checks: bool = True,
) -> tuple[str, ...]:
    """What to warn about when the workload `obj` (a Deployment, StatefulSet, DaemonSet,
    ReplicaSet, Job or CronJob) is created or updated in `namespace`: the opt-in annotation or
    label on the workload instead of its pod template, and the template's policies that its pods
    will not get (unknown, restricted away from the namespace, clashing names). Never a denial,
    never a patch; nothing for another kind, or for a workload a controller owns (its owner was
    checked). `template_checks` False leaves out what `mutate` on the template reports anyway
    (the offline `inject` runs both). Arguments as for `mutate`."""
    kind = obj.get("kind") if isinstance(obj, dict) else None
    if not isinstance(kind, str) or kind not in CHECKED_WORKLOADS:
        return ()
    metadata = _mapping(obj.get("metadata"))
    template = _dig(obj, POD_PATHS[kind])
    if config.selection.untouched(namespace) or _controlled(metadata) or template is None:
        return ()
    path = ".".join(POD_PATHS[kind])
    subject = f"{kind} {describe_pod(metadata, namespace)}"
    keys = config.selection.keys
    warnings = _misplaced_opt_in(subject, path, metadata, _mapping(template.get("metadata")),
                                 keys=keys, namespace_labels=namespace_labels)
    if not template_checks:
        return tuple(warnings)
    try:
        view = PodView.of(template, namespace)
    except InvalidPodError:
        return tuple(warnings)  # the apiserver refuses such a template itself
    names = requested_policies(view.metadata, namespace=namespace, settings=config.selection,
                               namespace_policies=namespace_policies)
    if isinstance(names, Skip):
        return tuple(warnings)
    strict = config.selection.strict
    unknown = [name for name in names if name not in policies.policies]
    if unknown:
        warnings.append(
            f"{subject}: its pod template asks for unknown injection policy "
            f"{', '.join(repr(name) for name in unknown)} (known policies: "
            f"{', '.join(policies.names()) or 'none'}): its pods will be "
            f"{'denied' if strict else 'admitted without injection'}; check the {keys.inject} "
            f"annotation in {path}.metadata.annotations")
    known = [policies[name] for name in names if name not in unknown]
    refused = _namespace_problems(f"{subject}: pod template", namespace, known, namespace_labels)
    warnings += [problem + ("; its pods will be denied" if strict else "")
                 for _, problem in refused]
    left_out = {policy.name for policy, _ in refused}
    allowed = [policy for policy in known if policy.name not in left_out]
    for policy, clash in clashes(view, allowed):
        fate = ("its pods will be denied" if config.on_conflict == "deny"
                else f"its pods will be admitted without {policy.name!r}")
        warnings.append(f"{subject}: pod template: {clash}: {fate}; rename one of them or leave "
                        f"{policy.name!r} out of the {keys.inject} annotation")
    return tuple(warnings)


def _misplaced_opt_in(subject: str, path: str, metadata: Mapping[str, Any],
                      template: Mapping[str, Any], *, keys: Keys,
                      namespace_labels: Mapping[str, str] | None) -> list[str]:
    """The `P/inject` annotation (or opt-in label) put on the workload's own metadata, where
    the webhook never reads it, and missing from its pod template, where it would."""
    warnings = []
    own, theirs = _mapping(metadata.get("annotations")), _mapping(template.get("annotations"))
    if keys.inject in own and keys.inject not in theirs:
        warnings.append(
            f"{subject}: annotation {keys.inject}={own[keys.inject]!r} is on the workload's own "
            f"metadata, where the webhook does not read it; its pods are made from the pod "
            f"template: move the annotation to {path}.metadata.annotations")
    own, theirs = _mapping(metadata.get("labels")), _mapping(template.get("labels"))
    opted_in = namespace_labels is not None and namespace_labels.get(keys.inject) == OPT_IN
    if (namespace_labels is not None and not opted_in and own.get(keys.inject) == OPT_IN
            and keys.inject not in theirs):
        warnings.append(
            f"{subject}: label {keys.inject}={OPT_IN} is on the workload's own metadata, which "
            f"opts none of its pods in (the namespace is not opted in): move the label to "
            f"{path}.metadata.labels")
    return warnings


def _controlled(metadata: Mapping[str, Any]) -> bool:
    """Whether a controller owns the object (a Deployment's ReplicaSet, a CronJob's Job)."""
    owners = metadata.get("ownerReferences")
    return isinstance(owners, list) and any(
        isinstance(owner, dict) and owner.get("controller") is True for owner in owners)


def _dig(obj: Any, path: Sequence[str]) -> dict[str, Any] | None:
    for key in path:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj if isinstance(obj, dict) else None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _skip(view: PodView, decision: Skip, status_key: str) -> Outcome:
    if not decision.reason.stamped:
        return Outcome(decision, warnings=decision.warnings)
    patch = stamp_patch(view, status_key, skipped_status(decision.reason.value))
    return Outcome(decision, patch, decision.warnings)


def _best_name(pod: Any, namespace: str) -> str:
    metadata = pod.get("metadata") if isinstance(pod, dict) else None
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return f"{namespace}/{name}" if namespace and isinstance(name, str) else (
        str(name) if isinstance(name, str) else "<unnamed>")
