"""Pod Security Standards checks: a pure port of k8s.io/pod-security-admission's policy package.

Each check of the upstream `policy/check_*.go` (v0.37.2, policy version "latest") is one function
from a pod (the dict as stored: `metadata`, `spec`) to its violations, listed in `CHECKS` with its
level. Baseline checks also run at restricted, except the ones a restricted check overrides
(`capabilities_baseline`, `hostPathVolumes`, `procMount`, `seccompProfile_baseline`). Init and
ephemeral containers count like regular ones. Upstream reports one aggregated result per check;
here every offender (container, pod, volume, value) is its own `Violation`, so `new_violations`
can tell what an injection added from what the pod already had. Checks never raise: a field of
the wrong shape counts as unset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"


class Level(StrEnum):
    """A Pod Security Standards level, from the least to the most restrictive."""

    PRIVILEGED = "privileged"
    BASELINE = "baseline"
    RESTRICTED = "restricted"


def parse_level(text: str | None) -> Level | None:
    """The level a namespace's `pod-security.kubernetes.io/enforce` label value enforces.

    None when there is no label (the cluster's default applies; privileged unless the apiserver's
    PodSecurity configuration says otherwise). An unknown or invalid value (the match is exact and
    case-sensitive, so "Baseline" is invalid too) is enforced as RESTRICTED, as the apiserver does:
    `api.ParseLevel` returns `LevelRestricted` with its error, and `api.PolicyToEvaluate` keeps it
    for enforce (audit and warn fail open to privileged instead); see pod-security-admission
    `api/helpers.go`. The apiserver also refuses to create a namespace with an invalid label, or
    to change one to an invalid value (`admission.ValidateNamespace`).
    """
    if text is None:
        return None
    try:
        return Level(text)
    except ValueError:
        return Level.RESTRICTED


@dataclass(frozen=True, slots=True, order=True)
class Violation:
    """One offender of one check: the check id, what offends (a container name, or "pod"), the
    apiserver's short reason (e.g. "runAsNonRoot != true") and a message like its detail."""

    check: str
    subject: str
    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.check}: {self.message}"


CheckFn = Callable[[Mapping[str, Any]], list[Violation]]


@dataclass(frozen=True, slots=True)
class Check:
    """A named check, the level it belongs to, and the baseline checks it replaces."""

    id: str
    level: Level
    run: CheckFn
    overrides: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# Reading a pod defensively


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _spec(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return _map(pod.get("spec"))


def _containers(pod: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(name, container) for init, regular and ephemeral containers, as upstream's visitor."""
    spec = _spec(pod)
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for container in _list(spec.get(key)):
            if isinstance(container, Mapping):
                yield str(container.get("name", "")), container


def _sc(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return _map(obj.get("securityContext"))


def _set(obj: Mapping[str, Any], key: str) -> bool:
    return obj.get(key) is not None


def _windows(pod: Mapping[str, Any]) -> bool:
    return _map(_spec(pod).get("os")).get("name") == "windows"


def _user_namespace(pod: Mapping[str, Any]) -> bool:
    return _spec(pod).get("hostUsers") is False


def _quote(items: list[str]) -> str:
    return ", ".join(f'"{item}"' for item in items)


def _container(name: str) -> str:
    return f'container "{name}"'


def _setters(pod: Mapping[str, Any]) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    """(subject, who, securityContext) for the pod, then each container."""
    yield "pod", "pod", _map(_spec(pod).get("securityContext"))
    for name, container in _containers(pod):
        yield name, _container(name), _sc(container)


# ---------------------------------------------------------------------------------------------
# Baseline checks


def check_privileged(pod: Mapping[str, Any]) -> list[Violation]:
    return [Violation("privileged", name, "privileged",
                      f"{_container(name)} must not set securityContext.privileged=true")
            for name, c in _containers(pod) if _sc(c).get("privileged") is True]


def check_host_namespaces(pod: Mapping[str, Any]) -> list[Violation]:
    spec = _spec(pod)
    return [Violation("hostNamespaces", "pod", "host namespaces", f"host namespaces ({key}=true)")
            for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key) is True]


def check_host_path_volumes(pod: Mapping[str, Any]) -> list[Violation]:
    volumes = (_map(v) for v in _list(_spec(pod).get("volumes")))
    return [Violation("hostPathVolumes", "pod", "hostPath volumes",
                      f'hostPath volumes (volume "{v.get("name", "")}")')
            for v in volumes if _set(v, "hostPath")]


def check_host_ports(pod: Mapping[str, Any]) -> list[Violation]:
    """Like the apiserver, which defaults a hostNetwork pod's hostPort to its containerPort (for
    init and regular containers) before admission sees it."""
    spec = _spec(pod)
    found = []
    defaulted = {str(_map(c).get("name", "")) for key in ("initContainers", "containers")
                 for c in _list(spec.get(key))} if spec.get("hostNetwork") is True else set()
    for name, container in _containers(pod):
        ports = set()
        for port in map(_map, _list(container.get("ports"))):
            host = port.get("hostPort") or (port.get("containerPort") if name in defaulted else 0)
            if host:
                ports.add(str(host))
        if ports:
            noun = "hostPort" if len(ports) == 1 else "hostPorts"
            found.append(Violation("hostPorts", name, "hostPort",
                                   f"{_container(name)} uses {noun} {', '.join(sorted(ports))}"))
    return found


_BASELINE_CAPABILITIES = frozenset({
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
})


def _added_capabilities(container: Mapping[str, Any]) -> list[str]:
    return [str(c) for c in _list(_map(_sc(container).get("capabilities")).get("add"))]


def check_capabilities_baseline(pod: Mapping[str, Any]) -> list[Violation]:
    found = []
    for name, container in _containers(pod):
        bad = sorted(set(_added_capabilities(container)) - _BASELINE_CAPABILITIES)
        if bad:
            found.append(Violation(
                "capabilities_baseline", name, "non-default capabilities",
                f"{_container(name)} must not include {_quote(bad)} in "
                "securityContext.capabilities.add"))
    return found


def _bad_type(context: Mapping[str, Any], key: str, allowed: frozenset[str]) -> str | None:
    """The `type` of `context[key]` when it is set to a value outside `allowed`."""
    profile = context.get(key)
    if profile is None:
        return None
    kind = str(_map(profile).get("type", ""))
    return None if kind in allowed else kind


_SECCOMP_TYPES = frozenset({"RuntimeDefault", "Localhost"})


def check_seccomp_baseline(pod: Mapping[str, Any]) -> list[Violation]:
    """The 1.19+ version: only the securityContext fields (the alpha annotations are no longer
    checked at "latest")."""
    return [Violation("seccompProfile_baseline", subject, "seccompProfile",
                      f'{who} must not set securityContext.seccompProfile.type to "{bad}"')
            for subject, who, sc in _setters(pod)
            if (bad := _bad_type(sc, "seccompProfile", _SECCOMP_TYPES)) is not None]


_SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t",
                            "container_engine_t"})


def check_selinux(pod: Mapping[str, Any]) -> list[Violation]:
    found = []
    for subject, who, sc in _setters(pod):
        options = sc.get("seLinuxOptions")
        if options is None:
            continue
        options = _map(options)
        problems = []
        if str(options.get("type") or "") not in _SELINUX_TYPES:
            problems.append(f'type "{options.get("type")}"')
        problems += [f"{key} may not be set" for key in ("user", "role") if options.get(key)]
        if problems:
            found.append(Violation(
                "seLinuxOptions", subject, "seLinuxOptions",
                f"{who} set forbidden securityContext.seLinuxOptions: {'; '.join(problems)}"))
    return found


def _proc_mount(check_id: str, pod: Mapping[str, Any]) -> list[Violation]:
    found = []
    for name, container in _containers(pod):
        mount = _sc(container).get("procMount")
        if mount is not None and mount != "Default":
            found.append(Violation(check_id, name, "procMount",
                                   f'{_container(name)} must not set securityContext.procMount '
                                   f'to "{mount}"'))
    return found


def check_proc_mount_baseline(pod: Mapping[str, Any]) -> list[Violation]:
    """Any procMount is allowed in a user namespace (`hostUsers: false`), since 1.35."""
    return [] if _user_namespace(pod) else _proc_mount("procMount", pod)


_SAFE_SYSCTLS = frozenset({
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports", "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem", "net.ipv4.tcp_slow_start_after_idle",
    "net.ipv4.tcp_notsent_lowat",
})


def check_sysctls(pod: Mapping[str, Any]) -> list[Violation]:
    sysctls = _list(_map(_spec(pod).get("securityContext")).get("sysctls"))
    names = (str(_map(s).get("name", "")) for s in sysctls)
    return [Violation("sysctls", "pod", "forbidden sysctls", f"forbidden sysctls ({name})")
            for name in names if name not in _SAFE_SYSCTLS]


def check_windows_host_process(pod: Mapping[str, Any]) -> list[Violation]:
    return [Violation("windowsHostProcess", subject, "hostProcess",
                      f"{who} must not set securityContext.windowsOptions.hostProcess=true")
            for subject, who, sc in _setters(pod)
            if _map(sc.get("windowsOptions")).get("hostProcess") is True]


_APPARMOR_TYPES = frozenset({"RuntimeDefault", "Localhost"})
_APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"


def check_apparmor(pod: Mapping[str, Any]) -> list[Violation]:
    found = [Violation("appArmorProfile", subject, "forbidden AppArmor profile",
                       f'{who} must not set AppArmor profile type to "{bad}"')
             for subject, who, sc in _setters(pod)
             if (bad := _bad_type(sc, "appArmorProfile", _APPARMOR_TYPES)) is not None]
    for key, value in sorted(_map(_map(pod.get("metadata")).get("annotations")).items()):
        text = str(value)
        if str(key).startswith(_APPARMOR_ANNOTATION) and not (
                text in ("", "runtime/default") or text.startswith("localhost/")):
            found.append(Violation("appArmorProfile", "pod", "forbidden AppArmor profile",
                                   f'annotation must not set AppArmor profile {key}="{text}"'))
    return found


_HANDLERS = ("httpGet", "tcpSocket")


def check_host_probes(pod: Mapping[str, Any]) -> list[Violation]:
    """Probes and lifecycle handlers must not name a `host` (since 1.34)."""
    found = []
    for name, container in _containers(pod):
        lifecycle = _map(container.get("lifecycle"))
        handlers = [*(container.get(k) for k in ("livenessProbe", "readinessProbe",
                                                 "startupProbe")),
                    lifecycle.get("postStart"), lifecycle.get("preStop")]
        hosts = {str(host) for handler in map(_map, handlers) for kind in _HANDLERS
                 if (host := _map(handler.get(kind)).get("host"))}
        if hosts:
            noun = "probe or lifecycle host" + ("s" if len(hosts) > 1 else "")
            found.append(Violation("hostProbesAndHostLifecycle", name, "probe or lifecycle host",
                                   f"{_container(name)} uses {noun} {_quote(sorted(hosts))}"))
    return found


# ---------------------------------------------------------------------------------------------
# Restricted checks


def check_allow_privilege_escalation(pod: Mapping[str, Any]) -> list[Violation]:
    """Windows pods are exempt (the field cannot be set on them)."""
    if _windows(pod):
        return []
    return [Violation("allowPrivilegeEscalation", name, "allowPrivilegeEscalation != false",
                      f"{_container(name)} must set securityContext.allowPrivilegeEscalation=false")
            for name, c in _containers(pod) if _sc(c).get("allowPrivilegeEscalation") is not False]


def check_capabilities_restricted(pod: Mapping[str, Any]) -> list[Violation]:
    """Drop ALL, add nothing but NET_BIND_SERVICE; Windows pods are exempt."""
    if _windows(pod):
        return []
    found = []
    for name, container in _containers(pod):
        dropped = _list(_map(_sc(container).get("capabilities")).get("drop"))
        if "ALL" not in dropped:
            found.append(Violation("capabilities_restricted", name, "unrestricted capabilities",
                                   f'{_container(name)} must set '
                                   'securityContext.capabilities.drop=["ALL"]'))
        added = sorted(set(_added_capabilities(container)) - {"NET_BIND_SERVICE"})
        if added:
            found.append(Violation("capabilities_restricted", name, "unrestricted capabilities",
                                   f"{_container(name)} must not include {_quote(added)} in "
                                   "securityContext.capabilities.add"))
    return found


def check_proc_mount_restricted(pod: Mapping[str, Any]) -> list[Violation]:
    """Only the default procMount, even in a user namespace."""
    return _proc_mount("procMount_restricted", pod)


_ALLOWED_VOLUMES = ("configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "image",
                    "persistentVolumeClaim", "projected", "secret")
_RESTRICTED_VOLUMES = (
    "hostPath", "gcePersistentDisk", "awsElasticBlockStore", "gitRepo", "nfs", "iscsi",
    "glusterfs", "rbd", "flexVolume", "cinder", "cephfs", "flocker", "fc", "azureFile",
    "vsphereVolume", "quobyte", "azureDisk", "photonPersistentDisk", "portworxVolume", "scaleIO",
    "storageos",
)


def check_restricted_volumes(pod: Mapping[str, Any]) -> list[Violation]:
    found = []
    for volume in map(_map, _list(_spec(pod).get("volumes"))):
        if any(_set(volume, key) for key in _ALLOWED_VOLUMES):
            continue
        kind = next((key for key in _RESTRICTED_VOLUMES if _set(volume, key)), "unknown")
        found.append(Violation("restrictedVolumes", "pod", "restricted volume types",
                               f'volume "{volume.get("name", "")}" uses restricted volume type '
                               f'"{kind}"'))
    return found


def check_run_as_non_root(pod: Mapping[str, Any]) -> list[Violation]:
    """runAsNonRoot=true on the pod or every container; waived in a user namespace (1.35+)."""
    if _user_namespace(pod):
        return []
    pod_value = _map(_spec(pod).get("securityContext")).get("runAsNonRoot")
    found = []
    for subject, who, sc in _setters(pod):
        value = sc.get("runAsNonRoot")
        if value is not None and value is not True:
            found.append(Violation("runAsNonRoot", subject, "runAsNonRoot != true",
                                   f"{who} must not set securityContext.runAsNonRoot=false"))
        elif value is None and subject != "pod" and pod_value is not True:
            found.append(Violation("runAsNonRoot", subject, "runAsNonRoot != true",
                                   f"pod or {who} must set securityContext.runAsNonRoot=true"))
    return found


def check_run_as_user(pod: Mapping[str, Any]) -> list[Violation]:
    """runAsUser must not be 0; waived in a user namespace (1.35+)."""
    if _user_namespace(pod):
        return []
    return [Violation("runAsUser", subject, "runAsUser=0", f"{who} must not set runAsUser=0")
            for subject, who, sc in _setters(pod)
            if type(sc.get("runAsUser")) is int and sc.get("runAsUser") == 0]


def check_seccomp_restricted(pod: Mapping[str, Any]) -> list[Violation]:
    """RuntimeDefault or Localhost on the pod or every container; Windows pods are exempt."""
    if _windows(pod):
        return []
    pod_sc = _map(_spec(pod).get("securityContext"))
    pod_set = _set(pod_sc, "seccompProfile") and _bad_type(
        pod_sc, "seccompProfile", _SECCOMP_TYPES) is None
    found = []
    for subject, who, sc in _setters(pod):
        bad = _bad_type(sc, "seccompProfile", _SECCOMP_TYPES)
        if bad is not None:
            found.append(Violation(
                "seccompProfile_restricted", subject, "seccompProfile",
                f'{who} must not set securityContext.seccompProfile.type to "{bad}"'))
        elif not _set(sc, "seccompProfile") and subject != "pod" and not pod_set:
            found.append(Violation(
                "seccompProfile_restricted", subject, "seccompProfile",
                f'pod or {who} must set securityContext.seccompProfile.type to "RuntimeDefault" '
                'or "Localhost"'))
    return found


# ---------------------------------------------------------------------------------------------
# The table and its use

_B, _R = Level.BASELINE, Level.RESTRICTED

#: Every check of policy version "latest", baseline first, each level's in upstream's (id) order.
CHECKS: tuple[Check, ...] = (
    Check("appArmorProfile", _B, check_apparmor),
    Check("capabilities_baseline", _B, check_capabilities_baseline),
    Check("hostNamespaces", _B, check_host_namespaces),
    Check("hostPathVolumes", _B, check_host_path_volumes),
    Check("hostPorts", _B, check_host_ports),
    Check("hostProbesAndHostLifecycle", _B, check_host_probes),
    Check("privileged", _B, check_privileged),
    Check("procMount", _B, check_proc_mount_baseline),
    Check("seLinuxOptions", _B, check_selinux),
    Check("seccompProfile_baseline", _B, check_seccomp_baseline),
    Check("sysctls", _B, check_sysctls),
    Check("windowsHostProcess", _B, check_windows_host_process),
    Check("allowPrivilegeEscalation", _R, check_allow_privilege_escalation),
    Check("capabilities_restricted", _R, check_capabilities_restricted,
          ("capabilities_baseline",)),
    Check("procMount_restricted", _R, check_proc_mount_restricted, ("procMount",)),
    Check("restrictedVolumes", _R, check_restricted_volumes, ("hostPathVolumes",)),
    Check("runAsNonRoot", _R, check_run_as_non_root),
    Check("runAsUser", _R, check_run_as_user),
    Check("seccompProfile_restricted", _R, check_seccomp_restricted,
          ("seccompProfile_baseline",)),
)


def checks_for(level: Level) -> list[Check]:
    """The checks `level` runs: none for privileged; restricted adds its own to baseline's and
    drops the baseline checks they override."""
    if level is Level.PRIVILEGED:
        return []
    chosen = [c for c in CHECKS if c.level is Level.BASELINE or level is Level.RESTRICTED]
    overridden = {o for c in chosen for o in c.overrides}
    return [c for c in chosen if c.id not in overridden]


def violations(pod: Mapping[str, Any], level: Level) -> list[Violation]:
    """Everything in `pod` (metadata and spec, as stored) that `level` forbids."""
    if not isinstance(pod, Mapping):
        return []
    return [v for check in checks_for(level) for v in check.run(pod)]


def new_violations(before: Mapping[str, Any], after: Mapping[str, Any],
                   level: Level) -> list[Violation]:
    """The violations of `after` that `before` did not have: what a mutation added."""
    old = set(violations(before, level))
    return [v for v in violations(after, level) if v not in old]


def compliant_pod(level: Level, *, name: str = "app",
                  annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A minimal pod that meets `level`; at restricted, every setting is on its one container
    (none at pod level), so whatever is added must be hardened on its own."""
    container: dict[str, Any] = {"name": "app", "image": "nginx:1.27"}
    if level is Level.RESTRICTED:
        container["securityContext"] = {
            "runAsNonRoot": True, "runAsUser": 65532, "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    metadata: dict[str, Any] = {"name": name, "labels": {"app": name},
                                "annotations": dict(annotations or {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
            "spec": {"containers": [container]}}
