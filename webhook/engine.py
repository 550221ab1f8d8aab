"""The injection engine: one pod in, a decision and its RFC 6902 patch out.

Every caller (the server's `/mutate`, the `inject` CLI, the end-to-end suite) goes through
`mutate`, which reads as the whole pipeline:

    read the pod -> decide (selection) -> leave out what the cluster's rules forbid (a policy
    restricted to other namespaces, one for another operating system, one that would break
    the namespace's Pod Security level) -> render the additions -> build the patch -> outcome

It is pure: no I/O, no web framework, no Kubernetes client. Bad input is a `Deny` (an object that
is not a pod) or a `Skip`, never an exception.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import jsonpatch
import jsonpointer

from webhook.patch import Operation, injection_patch, removal_patch, serialize, stamp_patch
from webhook.platform import pod_os
from webhook.podsecurity import Level, new_violations
from webhook.policy import CompiledPolicy, PolicySet
from webhook.render import (
    InvalidPodError,
    OnConflict,
    PodView,
    RenderOptions,
    render,
    skipped_status,
)
from webhook.selection import Decision, Deny, Inject, Selection, Skip, SkipReason, select


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
    def patch_json(self) -> str:
        """The RFC 6902 patch as JSON text (what the server sends, base64-encoded)."""
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
        (SkipReason.NAMESPACE_NOT_ALLOWED,
         lambda chosen: _namespace_problems(view, chosen, namespace_labels)),
        (SkipReason.UNSUPPORTED_OS, lambda chosen: [
            (policy, f"pod {view.name}: injection policy {policy.name!r} skipped: it supports "
                     f"{', '.join(sorted(policy.systems))}, and the pod runs on {system.value}")
            for policy in chosen if system not in policy.systems])]
    if pod_security in (Level.BASELINE, Level.RESTRICTED):
        rules.append((SkipReason.POD_SECURITY, lambda chosen: _pod_security_problems(
            pod, view, chosen, options, pod_security)))
    return rules


def _namespace_problems(view: PodView, chosen: Sequence[CompiledPolicy],
                        labels: Mapping[str, str] | None) -> Problems:
    """The restricted policies the pod's namespace may not use; all of them when its labels are
    not known (fail closed)."""
    problems = []
    for policy in chosen:
        if policy.namespaces is None:
            continue
        if labels is None:
            problems.append((policy, (
                f"pod {view.name}: injection policy {policy.name!r} skipped: it is restricted to "
                f"namespaces matching {policy.namespaces.describe()}, and the labels of namespace "
                f"{view.namespace} are not known (no cluster access): not applied")))
        elif not policy.namespaces.matches(labels):
            problems.append((policy, (
                f"pod {view.name}: injection policy {policy.name!r} skipped: it is restricted to "
                f"namespaces matching {policy.namespaces.describe()}, and namespace "
                f"{view.namespace} is not one of them")))
    return problems


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


def unmutate(pod: Any, *, namespace: str, config: EngineConfig) -> list[Operation]:
    """The patch that undoes the injection recorded in `P/status`; ValueError if there is none."""
    try:
        view = PodView.of(pod, namespace)
    except InvalidPodError as exc:
        raise ValueError(str(exc)) from None
    return removal_patch(view, config.selection.keys.status)


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
