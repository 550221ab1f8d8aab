"""Drift: which running pods no longer carry what the webhook would give them today, and why.

For each pod in scope, the stored pod is un-injected with `engine.unmutate` (exactly what its
`P/status` records) and injected again with `engine.mutate` in its namespace's context (default
policies, Pod Security level, labels); the stamp the engine would write now is compared with the
recorded one. The engine decides; nothing here re-derives its rules. Drifted pods are grouped by
the workload that owns them, which `--restart` rolls the way `kubectl rollout restart` does.

Everything here works on plain dicts and does no I/O; `survey` is the part that talks to a
cluster, and the report it builds is rendered here (a table, JSON or YAML).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

import jsonpatch
import jsonpointer
import yaml

from webhook.engine import EngineConfig, mutate, unmutate
from webhook.keys import OPT_IN, OPT_OUT, Keys
from webhook.podsecurity import ENFORCE_LABEL, Level, parse_level
from webhook.policy import PolicySet, legacy_revision
from webhook.selection import Selection, SkipReason, parse_policy_list

#: what `kubectl rollout restart` sets on the pod template
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
#: the kinds a template patch rolls
RESTARTABLE = ("Deployment", "StatefulSet", "DaemonSet")
Output = Literal["table", "json", "yaml"]


class Reason(StrEnum):
    """Why a pod drifted: a short code for scripts, with a message for people."""

    STALE_REVISION = "stale-revision"      # the same policies, whose content changed since
    POLICY_REMOVED = "policy-removed"      # injected with a policy the set no longer has
    POLICIES_CHANGED = "policies-changed"  # the webhook would now inject others, or none
    UNSTAMPED = "unstamped"                # never seen by the webhook
    SKIP_OUTDATED = "skip-outdated"        # stamped skipped, and would be injected now
    WOULD_DENY = "would-deny"              # a new pod like it would be denied now
    INVALID_STAMP = "invalid-stamp"        # `P/status` is not a record the engine wrote


@dataclass(frozen=True, slots=True)
class Stamp:
    """The parts of a `P/status` record drift compares."""

    policies: tuple[str, ...]
    revision: str | None = None
    skipped: str | None = None

    @classmethod
    def parse(cls, text: str) -> Stamp:
        """ValueError (naming what is wrong) unless `text` is a status record."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        policies = data.get("policies", [])
        if not isinstance(policies, list) or not all(isinstance(p, str) for p in policies):
            raise ValueError("'policies' is not a list of names")
        revision, skipped = data.get("revision"), data.get("skipped")
        return cls(tuple(policies), revision if isinstance(revision, str) else None,
                   skipped if isinstance(skipped, str) else None)

    def describe(self) -> str:
        if self.policies:
            return f"injected with {', '.join(self.policies)}"
        return f"stamped skipped ({self.skipped or 'no reason given'})"

    def as_dict(self) -> dict[str, Any]:
        return {"policies": list(self.policies), "revision": self.revision,
                "skipped": self.skipped}


@dataclass(frozen=True, slots=True)
class Expected:
    """What the webhook would do with the pod now: the stamp it would write, or its denial."""

    stamp: Stamp | None
    denial: str | None = None

    def describe(self) -> str:
        if self.denial is not None:
            return f"deny it: {self.denial}"
        if self.stamp is None:
            return "leave it alone"
        if self.stamp.policies:
            return f"inject {', '.join(self.stamp.policies)}"
        return f"skip it ({self.stamp.skipped})"

    def as_dict(self) -> dict[str, Any]:
        if self.denial is not None:
            return {"denied": self.denial}
        return self.stamp.as_dict() if self.stamp is not None else {}


@dataclass(frozen=True, slots=True)
class Namespace:
    """What the engine takes from a pod's namespace."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> Namespace:
        metadata = obj.get("metadata") or {}
        return cls(str(metadata.get("name") or ""), dict(metadata.get("labels") or {}),
                   dict(metadata.get("annotations") or {}))

    def opted_in(self, keys: Keys) -> bool:
        return self.labels.get(keys.inject) == OPT_IN

    def default_policies(self, keys: Keys) -> tuple[str, ...]:
        return parse_policy_list(self.annotations.get(keys.policies, ""))

    @property
    def pod_security(self) -> Level | None:
        return parse_level(self.labels.get(ENFORCE_LABEL))


@dataclass(frozen=True, slots=True, order=True)
class Workload:
    """What owns a pod: a Deployment, StatefulSet, DaemonSet, CronJob, Job, ... or the Pod."""

    namespace: str
    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class PodDrift:
    """One drifted pod."""

    namespace: str
    name: str
    reason: Reason
    message: str
    recorded: Stamp | None
    expected: Expected
    #: the pod's controller (kind, name), None for a bare pod
    controller: tuple[str, str] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "reason": self.reason.value, "message": self.message,
                "recorded": self.recorded.as_dict() if self.recorded else None,
                "expected": self.expected.as_dict()}


@dataclass(frozen=True, slots=True)
class Restart:
    """What `--restart` did for a workload."""

    action: Literal["restarted", "would-restart", "not-restarted", "failed"]
    message: str = ""

    def describe(self) -> str:
        text = {"restarted": "restarted", "would-restart": "would restart (dry run)",
                "not-restarted": "not restarted", "failed": "restart failed"}[self.action]
        return f"{text}: {self.message}" if self.message else text


@dataclass(slots=True)
class Group:
    """A workload and its drifted pods."""

    workload: Workload
    pods: list[PodDrift]
    restart: Restart | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.workload.kind, "namespace": self.workload.namespace,
                "name": self.workload.name,
                "restart": {"action": self.restart.action, "message": self.restart.message}
                if self.restart else None,
                "pods": [pod.as_dict() for pod in self.pods]}


@dataclass(slots=True)
class Report:
    """How many pods were checked, and the drifted ones by workload."""

    checked: int
    groups: list[Group] = field(default_factory=list)

    @property
    def drifted(self) -> int:
        return sum(len(group.pods) for group in self.groups)

    def as_dict(self) -> dict[str, Any]:
        return {"checked": self.checked, "drifted": self.drifted,
                "workloads": [group.as_dict() for group in self.groups]}


# ---------------------------------------------------------------------------------------------
# Which pods, and what drifted


def in_scope(pod: Mapping[str, Any], namespace: Namespace, selection: Selection, *,
             pod_opt_in: bool = True) -> bool:
    """Whether the apiserver would send a pod like this one to the webhook (an opted-in
    namespace, or the pod label elsewhere when the webhook has that entry, `pod_opt_in`; not
    opted out by label; not a system namespace nor the webhook's own), and it still runs or will
    (a finished or terminating pod is going away)."""
    if selection.untouched(namespace.name):
        return False
    metadata = pod.get("metadata") or {}
    if metadata.get("deletionTimestamp") or (pod.get("status") or {}).get("phase") in (
            "Succeeded", "Failed"):
        return False
    label = (metadata.get("labels") or {}).get(selection.keys.inject)
    if label == OPT_OUT:
        return False
    return namespace.opted_in(selection.keys) or (pod_opt_in and label == OPT_IN)


def expect(pod: dict[str, Any], *, namespace: Namespace, policies: PolicySet,
           config: EngineConfig) -> Expected:
    """Run the engine on `pod` (one without a stamp) as the webhook would for its CREATE now."""
    keys = config.selection.keys
    outcome = mutate(pod, namespace=namespace.name, policies=policies, config=config,
                     namespace_policies=namespace.default_policies(keys),
                     pod_security=namespace.pod_security, namespace_labels=namespace.labels)
    if not outcome.allowed:
        return Expected(None, outcome.message)
    try:
        after = jsonpatch.apply_patch(pod, outcome.patch)
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        return Expected(None, f"the apiserver would refuse the webhook's patch: {exc}")
    written = ((after.get("metadata") or {}).get("annotations") or {}).get(keys.status)
    return Expected(Stamp.parse(written) if written else None)


def classify(pod: dict[str, Any], *, namespace: Namespace, policies: PolicySet,
             config: EngineConfig) -> PodDrift | None:
    """How `pod` drifted from what the policies give it now; None when it did not."""
    keys = config.selection.keys
    metadata = pod.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    raw = annotations.get(keys.status)

    def drifted(reason: Reason, message: str, recorded: Stamp | None,
                expected: Expected) -> PodDrift:
        return PodDrift(namespace.name, str(metadata.get("name") or ""), reason, message,
                        recorded, expected, controller(pod))

    if raw is None:
        expected = expect(pod, namespace=namespace, policies=policies, config=config)
        if expected.stamp is not None and expected.stamp.skipped == SkipReason.OPTED_OUT:
            return None
        return drifted(Reason.UNSTAMPED, (
            f"no {keys.status} annotation: the webhook never saw this pod (created while it "
            f"was down, under failurePolicy Ignore?); it would now {expected.describe()}"),
            None, expected)
    try:
        recorded = Stamp.parse(raw)
        original = jsonpatch.apply_patch(pod, unmutate(pod, namespace=namespace.name,
                                                       config=config))
    except (ValueError, jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        unstamped = copy.deepcopy(pod)
        del unstamped["metadata"]["annotations"][keys.status]
        expected = expect(unstamped, namespace=namespace, policies=policies, config=config)
        return drifted(Reason.INVALID_STAMP, (
            f"{keys.status} cannot be read ({exc}); the webhook would now "
            f"{expected.describe()}"), None, expected)
    expected = expect(original, namespace=namespace, policies=policies, config=config)
    reason, message = _compare(recorded, expected, policies)
    return None if reason is None else drifted(reason, message, recorded, expected)


def _compare(recorded: Stamp, expected: Expected,
             policies: PolicySet) -> tuple[Reason | None, str]:
    """The drift between what a pod's stamp says and what the engine would write now."""
    now = expected.stamp
    if expected.denial is not None:
        return Reason.WOULD_DENY, (f"{recorded.describe()}; the webhook would now deny a pod "
                                   f"like it: {expected.denial}")
    if now is None:
        return None, ""
    if recorded.policies:
        missing = [name for name in recorded.policies if name not in policies]
        if missing:
            gone = (f"policy {missing[0]!r} no longer exists" if len(missing) == 1 else
                    f"policies {', '.join(map(repr, missing))} no longer exist")
            return Reason.POLICY_REMOVED, (f"{recorded.describe()}; {gone}; the webhook would "
                                           f"now {expected.describe()}")
        if now.policies != recorded.policies:
            return Reason.POLICIES_CHANGED, (f"{recorded.describe()}; the webhook would now "
                                             f"{expected.describe()}")
        applied = [policies[name] for name in recorded.policies]
        if recorded.revision not in (now.revision, legacy_revision(applied)):
            return Reason.STALE_REVISION, (
                f"{recorded.describe()} at revision {recorded.revision or '(none recorded)'}; "
                f"the policies give revision {now.revision} now")
        return None, ""
    if now.policies:
        return Reason.SKIP_OUTDATED, (f"{recorded.describe()}; the webhook would now "
                                      f"{expected.describe()}")
    return None, ""  # skipped then, skipped now (perhaps for another reason): nothing to gain


# ---------------------------------------------------------------------------------------------
# Owners


#: the kinds whose own controller (a Deployment, a CronJob, ...) is the workload people manage
_PARENTS = ("ReplicaSet", "Job")


def controller(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """The (kind, name) of `obj`'s controlling owner, None when it has none."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("controller") and ref.get("kind"):
            return str(ref["kind"]), str(ref.get("name") or "")
    return None


def parents_to_read(drifts: Iterable[PodDrift]) -> set[tuple[str, str, str]]:
    """The (namespace, kind, name) of the ReplicaSets and Jobs whose owner `group` needs."""
    return {(d.namespace, d.controller[0], d.controller[1]) for d in drifts
            if d.controller is not None and d.controller[0] in _PARENTS}


def workload_of(drift: PodDrift,
                parents: Mapping[tuple[str, str, str], Mapping[str, Any] | None]) -> Workload:
    """The workload that owns the pod: its ReplicaSet's controller (a Deployment) or its Job's (a
    CronJob), else its controller itself, else the pod."""
    if drift.controller is None:
        return Workload(drift.namespace, "Pod", drift.name)
    kind, name = drift.controller
    parent = parents.get((drift.namespace, kind, name))
    up = controller(parent) if parent is not None else None
    if up is not None:
        return Workload(drift.namespace, *up)
    return Workload(drift.namespace, kind, name)


def group(drifts: Iterable[PodDrift],
          parents: Mapping[tuple[str, str, str], Mapping[str, Any] | None]) -> list[Group]:
    """Drifted pods by owning workload, both sorted by namespace, kind and name."""
    grouped: dict[Workload, list[PodDrift]] = {}
    for drift in drifts:
        grouped.setdefault(workload_of(drift, parents), []).append(drift)
    return [Group(workload, sorted(pods, key=lambda p: p.name))
            for workload, pods in sorted(grouped.items())]


# ---------------------------------------------------------------------------------------------
# Restarts


def restart_patch(now: datetime) -> dict[str, Any]:
    """The strategic merge patch `kubectl rollout restart` sends: an RFC 3339 time on the pod
    template, so the controller rolls every pod."""
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}}


def not_restartable(group: Group) -> str | None:
    """Why `--restart` leaves this workload alone; None when it restarts it."""
    kind = group.workload.kind
    if kind == "CronJob":
        return "the next CronJob run picks up the change"
    if kind == "Job":
        return "a Job's pods cannot be rolled; re-create the Job to re-inject them"
    if kind == "Pod":
        return "a bare pod is never deleted by drift; delete and re-create it yourself"
    if kind == "ReplicaSet":
        return ("a ReplicaSet without a Deployment does not roll its pods; delete them and "
                "it makes new ones")
    if kind not in RESTARTABLE:
        return f"drift restarts Deployments, StatefulSets and DaemonSets; restart this {kind} " \
               "yourself"
    denial = next((pod.expected.denial for pod in group.pods if pod.expected.denial), None)
    if denial is not None:
        return f"its new pods would be denied, fix that first: {denial}"
    return None


def rollout_note(kind: str, patched: Mapping[str, Any]) -> str:
    """What keeps the restarted workload from rolling on its own, if anything."""
    spec = patched.get("spec") or {}
    if kind == "Deployment" and spec.get("paused"):
        return "the Deployment is paused: its pods roll when it is resumed"
    if kind in ("StatefulSet", "DaemonSet") and (
            (spec.get("updateStrategy") or {}).get("type") == "OnDelete"):
        return "its updateStrategy is OnDelete: delete its pods to roll them"
    return ""


# ---------------------------------------------------------------------------------------------
# Output


def render(report: Report, output: Output) -> str:
    """The report as a table for people, or as JSON or YAML for scripts."""
    if output == "json":
        return json.dumps(report.as_dict(), indent=2) + "\n"
    if output == "yaml":
        return yaml.safe_dump(report.as_dict(), sort_keys=False)
    return table(report)


def table(report: Report) -> str:
    """One row per drifted pod; then what `--restart` did per workload; then a summary."""
    if not report.groups:
        return (f"no drift: {report.checked} pods checked, each carries what the policies give "
                "it now\n")
    rows = [("NAMESPACE", "WORKLOAD", "POD", "REASON", "MESSAGE")]
    rows += [(pod.namespace, f"{item.workload.kind}/{item.workload.name}", pod.name,
              pod.reason.value, pod.message) for item in report.groups for pod in item.pods]
    lines = [_row(row, rows) for row in rows]
    restarts = [f"{item.workload}: {item.restart.describe()}"
                for item in report.groups if item.restart is not None]
    if restarts:
        lines += ["", *restarts]
    workloads = len(report.groups)
    lines += ["", f"{report.drifted} of {report.checked} pods drifted, in {workloads} "
                  f"workload{'s' if workloads != 1 else ''}"]
    return "\n".join(lines) + "\n"


def _row(row: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(row) - 1)]
    return "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)),
                      row[-1]])
