"""What to add to a pod for the chosen policies: pure data in, pure data out.

`render` resolves sidecar modes, checks name clashes, substitutes placeholders and works out every
addition (containers, volumes, mounts, env, annotations, labels) and the `P/status` record. It
builds no patch (that is `patch`) and never touches the pod.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from webhook.platform import OperatingSystem, pod_os
from webhook.podresources import PodLevelChange, grow, pod_level
from webhook.policy import (
    JSON_PLACEHOLDER,
    PLACEHOLDER,
    SERVICE_ACCOUNT_MOUNT_PATH,
    CompiledPolicy,
    PodMount,
    Position,
    RawJSON,
    SidecarMode,
    Template,
    revision,
)
from webhook.selection import describe_pod

NATIVE_SIDECARS_SINCE = (1, 29)
#: `json.dumps(value, separators=(",", ":"), ensure_ascii=False)` without a new encoder per call:
#: the stamp's and the token mount's text (not orjson's: the stamp's `podResources` keeps the
#: pod's own values, which may be numbers, printed as Python's json prints them, and ints past
#: 64 bits)
_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
#: `json.dumps(text, ensure_ascii=False)` for a string
_string: Callable[[str], str] = json.encoder.encode_basestring
OnConflict = Literal["deny", "skip"]


class InvalidPodError(ValueError):
    """The object is not a pod the engine can read; the message names the field."""


@dataclass(frozen=True, slots=True)
class PodView:
    """The parts of a pod the engine reads, checked for shape once."""

    metadata: Mapping[str, Any]
    spec: Mapping[str, Any]
    namespace: str
    containers: Sequence[Mapping[str, Any]]
    init_containers: Sequence[Mapping[str, Any]]
    volumes: Sequence[Mapping[str, Any]]
    has_metadata: bool = True
    has_spec: bool = True

    @classmethod
    def of(cls, pod: Any, namespace: str) -> PodView:
        if not isinstance(pod, dict):
            raise InvalidPodError("the pod is not an object")
        metadata = _or_empty(pod.get("metadata"), {})
        spec = _or_empty(pod.get("spec"), {})
        for name, value in (("metadata", metadata), ("spec", spec)):
            if not isinstance(value, dict):
                raise InvalidPodError(f"{name} must be an object")
        for key in ("annotations", "labels"):
            if not isinstance(_or_empty(metadata.get(key), {}), dict):
                raise InvalidPodError(f"metadata.{key} must be an object")
        lists = {key: _named_list(spec, key) for key in ("containers", "initContainers", "volumes")}
        return cls(
            metadata, spec, namespace or str(metadata.get("namespace") or ""),
            lists["containers"], lists["initContainers"], lists["volumes"],
            has_metadata="metadata" in pod, has_spec="spec" in pod,
        )

    @property
    def name(self) -> str:
        return describe_pod(self.metadata, self.namespace)


def _named_list(spec: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = _or_empty(spec.get(key), [])
    if not isinstance(value, list):
        raise InvalidPodError(f"spec.{key} must be a list")
    for index, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidPodError(f"spec.{key}[{index}] must be an object with a name")
        for inner in ("env", "volumeMounts"):
            if not isinstance(_or_empty(item.get(inner), []), list):
                raise InvalidPodError(f"spec.{key}[{index}].{inner} must be a list")
    return value


def _or_empty(value: Any, empty: Any) -> Any:
    """`value`, or `empty` when it is absent (None); a falsy wrong type stays wrong."""
    return empty if value is None else value


@dataclass(slots=True)
class Rendered:
    """Everything to add to one pod, in order, and the status record that describes it."""

    init_front: list[RawJSON] = field(default_factory=list)
    init_back: list[RawJSON] = field(default_factory=list)
    containers: list[RawJSON] = field(default_factory=list)
    volumes: list[RawJSON] = field(default_factory=list)
    mounts: dict[int, list[RawJSON]] = field(default_factory=dict)
    env: dict[int, list[RawJSON]] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    pod_resources: PodLevelChange | None = None
    pull_secrets: list[dict[str, str]] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    denial: str | None = None


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """Cluster facts and choices that shape rendering."""

    status_key: str
    inject_key: str
    on_conflict: OnConflict = "deny"
    kube_version: tuple[int, int] | None = None
    #: policies the engine left out before rendering, and why (recorded in the stamp)
    refused: Mapping[str, str] = field(default_factory=dict)


def sidecars_native(policy: CompiledPolicy, kube_version: tuple[int, int] | None) -> bool:
    """`auto` is native unless the cluster is known to be older than 1.29."""
    if policy.mode is SidecarMode.AUTO:
        return kube_version is None or kube_version >= NATIVE_SIDECARS_SINCE
    return policy.mode is SidecarMode.NATIVE


def render(pod: PodView, policies: Sequence[CompiledPolicy], options: RenderOptions) -> Rendered:
    """Work out every addition for `policies` (in order) on `pod`; a clash denies or skips."""
    out = Rendered()
    plan = _plan(policies, options.kube_version)
    found = [] if plan.clears(pod) else clashes(pod, policies)
    if found and options.on_conflict == "deny":
        policy, clash = found[0]
        out.denial = (f"pod {pod.name}: {clash}; rename one of them or leave "
                      f"{policy.name!r} out of the {options.inject_key} annotation")
        return out
    for policy, clash in found:
        out.warnings.append(f"pod {pod.name}: injection policy {policy.name!r} skipped: {clash}")
    if found:
        clashing = {policy.name for policy, _ in found}
        chosen = [policy for policy in policies if policy.name not in clashing]
        if not chosen:
            return out
        plan = _plan(chosen, options.kube_version)
    substitute = _Substitution(pod)
    status: dict[str, Any] = {
        "policies": list(plan.names), "initContainers": list(plan.init_container_names),
        "containers": list(plan.sidecar_names), "volumes": list(plan.volume_names), "env": {},
        "volumeMounts": {}, "podAnnotations": [], "podLabels": [],
    }
    envelope = pod_level(pod.spec) is not None
    token = _token_mount(pod)
    front, back, classics = plan.shapes[(envelope, pod_os(pod.spec) is OperatingSystem.WINDOWS)]
    out.init_front = [substitute(t, token) for t in front]
    out.init_back = [substitute(t, token) for t in back]
    out.containers = [substitute(t, token) for t in classics]
    out.volumes = [substitute(t) for t in plan.volumes]
    if envelope:
        out.pod_resources = grow(pod.spec, init_front=[t.value for t in front],
                                 init_back=[t.value for t in back],
                                 containers=[t.value for t in classics])
        if out.pod_resources is not None:
            status["podResources"] = out.pod_resources.previous
    _render_pull_secrets(pod, plan, out, status)
    _render_mounts(pod, plan, substitute, out, status)
    _render_env(pod, plan, substitute, out, status)
    _render_metadata(pod, plan, substitute, out, status, status_key=options.status_key)
    if options.refused:
        status["refused"] = dict(options.refused)
    status["revision"] = plan.revision
    out.applied = status["policies"]
    out.annotations[options.status_key] = _compact(status)
    return out


@dataclass(frozen=True, slots=True)
class _Plan:
    """What `render` adds for one list of policies, whatever the pod: the parts of each policy
    in the order they go, the names they take, their revision. Worked out once per list (and
    cluster version), not per pod: the pods of a namespace ask for few distinct lists."""

    policies: tuple[CompiledPolicy, ...]
    names: tuple[str, ...]
    init_container_names: tuple[str, ...]
    sidecar_names: tuple[str, ...]
    volume_names: tuple[str, ...]
    #: no two of the policies add the same container or volume name
    apart: bool
    #: (init containers at the front, at the back, classic sidecars) by (the pod has a
    #: pod-level envelope, the pod runs Windows): see CompiledPolicy.variants
    shapes: Mapping[tuple[bool, bool], tuple[tuple[Template, ...], ...]]
    volumes: tuple[Template, ...]
    pull_secrets: tuple[str, ...]
    #: each with its `same_path`; when they are for every container, only the first of a path
    mounts: tuple[tuple[PodMount, object], ...]
    #: the `same_path`s of `mounts` when they are for every container (None: some choose)
    mount_paths: tuple[object, ...] | None
    #: the first of each name: a later policy's variable of the same name is never added
    env: tuple[Template, ...]
    env_names: tuple[str, ...]
    annotations: tuple[tuple[str, Template], ...]
    labels: tuple[tuple[str, Template], ...]
    revision: str

    @classmethod
    def of(cls, policies: Sequence[CompiledPolicy], kube_version: tuple[int, int] | None,
           ) -> _Plan:
        shapes = {}
        for variant in ((False, False), (False, True), (True, False), (True, True)):
            front: list[Template] = []
            back: list[Template] = []
            classics: list[Template] = []
            for policy in policies:
                runs, natives, classic = policy.variants[variant]
                native = sidecars_native(policy, kube_version)
                (front if policy.position is Position.FIRST else back).extend(
                    (*runs, *natives) if native else runs)
                classics.extend(() if native else classic)
            shapes[variant] = (tuple(front), tuple(back), tuple(classics))
        inits = tuple(n for p in policies for n in p.init_container_names)
        sidecars = tuple(n for p in policies for n in p.sidecar_names)
        volumes = tuple(n for p in policies for n in p.volume_names)
        mounts = [(m, same_path(m.mount_path)) for p in policies for m in p.mounts]
        every = all(m.containers is None for m, _ in mounts)
        if every:  # the first of each path
            first: dict[object, tuple[PodMount, object]] = {}
            for mount, path in mounts:
                first.setdefault(path, (mount, path))
            mounts = list(first.values())
        env: dict[str, Template] = {}
        for template in (t for p in policies for t in p.env):
            env.setdefault(template.value["name"], template)
        return cls(
            policies=tuple(policies), names=tuple(p.name for p in policies),
            init_container_names=inits, sidecar_names=sidecars, volume_names=volumes,
            apart=len({*inits, *sidecars}) == len(inits) + len(sidecars)
            and len(set(volumes)) == len(volumes),
            shapes=shapes, volumes=tuple(t for p in policies for t in p.volumes),
            pull_secrets=tuple(dict.fromkeys(n for p in policies for n in p.pull_secrets)),
            mounts=tuple(mounts),
            mount_paths=tuple(path for _, path in mounts) if every else None,
            env=tuple(env.values()), env_names=tuple(env),
            annotations=tuple(item for p in policies for item in p.pod_annotations.items()),
            labels=tuple(item for p in policies for item in p.pod_labels.items()),
            revision=revision(policies))

    def clears(self, pod: PodView) -> bool:
        """No name the policies add is taken by `pod` or by another of them: `clashes` would
        find nothing (and need not be asked)."""
        if not self.apart:
            return False
        taken = {c["name"] for c in pod.init_containers}
        taken.update(c["name"] for c in pod.containers)
        if not taken.isdisjoint(self.init_container_names) or not taken.isdisjoint(
                self.sidecar_names):
            return False
        return not self.volume_names or {v["name"] for v in pod.volumes}.isdisjoint(
            self.volume_names)


#: plans by (policy names, cluster version); a policy set reloaded makes new CompiledPolicy
#: objects, so a plan serves only when its policies are the very objects asked for
_PLANS: dict[tuple[tuple[str, ...], tuple[int, int] | None], _Plan] = {}
_MAX_PLANS = 256


def _plan(policies: Sequence[CompiledPolicy], kube_version: tuple[int, int] | None) -> _Plan:
    key = (tuple(p.name for p in policies), kube_version)
    plan = _PLANS.get(key)
    if plan is None or not all(map(operator.is_, plan.policies, policies)):
        plan = _Plan.of(policies, kube_version)
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        _PLANS[key] = plan
    return plan


def clashes(pod: PodView, policies: Sequence[CompiledPolicy]) -> list[tuple[CompiledPolicy, str]]:
    """The policies (in order) whose container or volume names clash with the pod's or with an
    earlier policy's that does not clash itself, each with the clash described."""
    taken = _Names(pod)
    found = []
    for policy in policies:
        clash = taken.clash(policy)
        if clash is None:
            taken.claim(policy)
        else:
            found.append((policy, clash))
    return found


#: how the ServiceAccount admission plugin names the token volume: this, then 5 random characters
SERVICE_ACCOUNT_VOLUME_PREFIX = "kube-api-access-"


def token_volume(volumes: Iterable[Any]) -> str | None:
    """The name of the service-account token volume among a pod's `volumes`, if any."""
    names = (v.get("name") for v in volumes if isinstance(v, dict))
    return next((name for name in names if isinstance(name, str)
                 and name.startswith(SERVICE_ACCOUNT_VOLUME_PREFIX)), None)


def _token_mount(pod: PodView) -> str | None:
    """The service-account token mount the ServiceAccount admission plugin gave the pod's own
    containers, as JSON, to give the injected ones too: the plugin then has nothing to add after
    the webhook, so the apiserver does not call the webhook a second time. None when the pod has
    no such mount (automountServiceAccountToken false, or no token volume)."""
    if pod.spec.get("automountServiceAccountToken") is False:
        return None
    volume = token_volume(pod.volumes)
    mounted = volume is not None and any(
        isinstance(m, dict) and m.get("name") == volume
        and m.get("mountPath") == SERVICE_ACCOUNT_MOUNT_PATH
        for c in (*pod.init_containers, *pod.containers) for m in c.get("volumeMounts") or [])
    if not mounted:
        return None
    return _compact({"name": volume, "readOnly": True, "mountPath": SERVICE_ACCOUNT_MOUNT_PATH})


def skipped_status(reason: str) -> str:
    """The `P/status` value for a pod the webhook decided not to inject."""
    return json.dumps({"policies": [], "skipped": reason}, separators=(",", ":"))


def _render_pull_secrets(pod: PodView, plan: _Plan, out: Rendered,
                         status: dict[str, Any]) -> None:
    """Image pull secrets the pod does not list yet, once each, in policy order."""
    if not plan.pull_secrets:
        return
    listed = pod.spec.get("imagePullSecrets")
    have = {ref.get("name") for ref in listed if isinstance(ref, dict)} if isinstance(
        listed, list) else set()
    added = [name for name in plan.pull_secrets if name not in have]
    if added:
        out.pull_secrets = [{"name": name} for name in added]
        status["imagePullSecrets"] = added


def _render_mounts(pod: PodView, plan: _Plan, substitute: _Substitution, out: Rendered,
                   status: dict[str, Any]) -> None:
    if not plan.mounts:
        return
    every: tuple[list[RawJSON], list[str]] | None = None  # all of them, for most containers
    for index, container in enumerate(pod.containers):
        name = container["name"]
        used = {same_path(m.get("mountPath")) for m in container.get("volumeMounts") or []
                if isinstance(m, dict)}
        if plan.mount_paths is not None and used.isdisjoint(plan.mount_paths):
            if every is None:
                every = ([substitute(m.mount) for m, _ in plan.mounts],
                         [m.mount_path for m, _ in plan.mounts])
            out.mounts[index], status["volumeMounts"][name] = every[0], list(every[1])
            continue
        added = []
        for mount, path in plan.mounts:
            if mount.containers is not None and name not in mount.containers:
                continue
            if path in used:
                continue
            used.add(path)
            added.append(mount)
        if added:
            out.mounts[index] = [substitute(m.mount) for m in added]
            status["volumeMounts"][name] = [m.mount_path for m in added]


def same_path(path: object) -> object:
    """`/var/log/app/` and `/var/log/app` are one mount point."""
    return path.rstrip("/") or "/" if isinstance(path, str) else path


def _render_env(pod: PodView, plan: _Plan, substitute: _Substitution, out: Rendered,
                status: dict[str, Any]) -> None:
    if not plan.env:
        return
    every: list[RawJSON] | None = None  # all of them, for most containers
    for index, container in enumerate(pod.containers):
        names = {e.get("name") for e in container.get("env") or [] if isinstance(e, dict)}
        if names.isdisjoint(plan.env_names):
            if every is None:
                every = [substitute(t) for t in plan.env]
            out.env[index], status["env"][container["name"]] = every, list(plan.env_names)
            continue
        added = [t for t, name in zip(plan.env, plan.env_names, strict=True)
                 if name not in names]
        if added:
            out.env[index] = [substitute(t) for t in added]
            status["env"][container["name"]] = [t.value["name"] for t in added]


def _render_metadata(pod: PodView, plan: _Plan, substitute: _Substitution, out: Rendered,
                     status: dict[str, Any], *, status_key: str) -> None:
    annotations = pod.metadata.get("annotations") or {}
    labels = pod.metadata.get("labels") or {}
    for key, template in plan.annotations:
        if key not in annotations and key not in out.annotations and key != status_key:
            out.annotations[key] = substitute.text(template)
            status["podAnnotations"].append(key)
    for key, template in plan.labels:
        if key not in labels and key not in out.labels:
            out.labels[key] = substitute.text(template)
            status["podLabels"].append(key)


class _Names:
    """Container and volume names already taken, by the pod or by an earlier policy."""

    def __init__(self, pod: PodView) -> None:
        self.containers: dict[str, str] = {}
        for c in pod.init_containers:
            self.containers[c["name"]] = f"the pod's init container {c['name']!r}"
        for c in pod.containers:
            self.containers[c["name"]] = f"the pod's container {c['name']!r}"
        self.volumes = {v["name"]: f"the pod's volume {v['name']!r}" for v in pod.volumes}

    def clash(self, policy: CompiledPolicy) -> str | None:
        adds = policy.init_container_names + policy.sidecar_names
        for name in adds:
            if name in self.containers:
                return (f"injection policy {policy.name!r} adds container {name!r}, "
                        f"which clashes with {self.containers[name]}")
        for name in policy.volume_names:
            if name in self.volumes:
                return (f"injection policy {policy.name!r} adds volume {name!r}, "
                        f"which clashes with {self.volumes[name]}")
        return None

    def claim(self, policy: CompiledPolicy) -> None:
        for name in policy.init_container_names + policy.sidecar_names:
            self.containers[name] = f"container {name!r} of injection policy {policy.name!r}"
        for name in policy.volume_names:
            self.volumes[name] = f"volume {name!r} of injection policy {policy.name!r}"


class _Substitution:
    """Evaluates `${pod.*}` placeholders in what a policy adds, and nowhere else: in the
    pre-rendered JSON text of containers, volumes and env, and in annotation and label values."""

    def __init__(self, pod: PodView) -> None:
        meta = pod.metadata
        generate_name = str(meta.get("generateName") or "")
        self.fields = {
            "name": str(meta.get("name") or generate_name),
            "generateName": generate_name,
            "namespace": pod.namespace,
            "serviceAccountName": str(pod.spec.get("serviceAccountName") or ""),
        }
        self.maps: dict[str, Mapping[str, Any]] = {
            "labels": meta.get("labels") or {},
            "annotations": meta.get("annotations") or {},
        }

    def __call__(self, template: Template, mount: str | None = None) -> RawJSON:
        """The template's JSON text with placeholders evaluated (JSON-escaped; in a string the
        kubelet `$(VAR)`-expands, `$` doubled, so that pod metadata stays literal there), and
        for a container, `mount` (JSON) added to its volumeMounts where it has a slot."""
        text, spans = template.text, template.expanded
        slot = template.mount_slot
        if mount is not None and slot is not None:
            text = RawJSON(slot.insert(text, mount))
            width = len(mount) + slot.width
            spans = tuple((a + width, b + width) if a >= slot.offset else (a, b)
                          for a, b in spans)
        if not template.has_placeholders:
            return text
        if not spans:
            return RawJSON(JSON_PLACEHOLDER.sub(self._replace_in_json, text))

        def replace(match: re.Match[str]) -> str:
            value = self._replace(match)
            if "$" in value and any(start <= match.start() < end for start, end in spans):
                value = value.replace("$", "$$")
            return _string(value)[1:-1]

        return RawJSON(JSON_PLACEHOLDER.sub(replace, text))

    def text(self, template: Template) -> str:
        """A plain string value (an annotation or label) with placeholders evaluated."""
        value: str = template.value
        return PLACEHOLDER.sub(self._replace, value) if template.has_placeholders else value

    def _replace(self, match: re.Match[str]) -> str:
        if match["field"]:
            return self.fields[match["field"]]
        key = match["sq"] if match["sq"] is not None else match["dq"]
        found = self.maps[match["map"]].get(key, "")
        return found if isinstance(found, str) else ""

    def _replace_in_json(self, match: re.Match[str]) -> str:
        return _string(self._replace(match))[1:-1]
