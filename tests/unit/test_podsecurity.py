"""The Pod Security Standards checks, one passing and one failing pod per check.

`CASES` is also the table the end-to-end suite replays against the real apiserver
(tests/e2e/test_pod_security.py), so what is asserted here is what PodSecurity admission does.
"""

from __future__ import annotations

import copy
from typing import Any, cast

import pytest

from webhook.podsecurity import (
    CHECKS,
    Level,
    Violation,
    checks_for,
    compliant_pod,
    new_violations,
    parse_level,
    violations,
)

B, R = Level.BASELINE, Level.RESTRICTED
Pod = dict[str, Any]


def pod(level: Level, *, sc: dict[str, Any] | None = None, spec: dict[str, Any] | None = None,
        container: dict[str, Any] | None = None, pod_sc: dict[str, Any] | None = None,
        annotations: dict[str, str] | None = None, drop: tuple[str, ...] = ()) -> Pod:
    """The compliant pod for `level` with its container's securityContext updated by `sc` (keys
    in `drop` removed), the container by `container`, the spec by `spec`."""
    result = compliant_pod(level, name="demo", annotations=annotations)
    app = result["spec"]["containers"][0]
    context = {**app.get("securityContext", {}), **(sc or {})}
    for key in drop:
        context.pop(key, None)
    app.pop("securityContext", None)
    if context:
        app["securityContext"] = context
    app.update(container or {})
    result["spec"].update(copy.deepcopy(spec or {}))
    if pod_sc:
        result["spec"]["securityContext"] = pod_sc
    return result


def init(pod_: Pod, container: dict[str, Any]) -> Pod:
    pod_["spec"]["initContainers"] = [{"name": "setup", "image": "busybox:1.37", **container}]
    return pod_


HARDENED = compliant_pod(R)["spec"]["containers"][0]["securityContext"]
WINDOWS = {"os": {"name": "windows"}}
PROBE_HOST = {"livenessProbe": {"httpGet": {"host": "10.0.0.1", "port": 80}}}
LIFECYCLE_HOST = {"lifecycle": {"preStop": {"tcpSocket": {"host": "example.com", "port": 80}}}}
HOST_PATH = {"volumes": [{"name": "proc", "hostPath": {"path": "/proc"}}]}
USERNS = {"hostUsers": False}

#: (level, pod, the ids of the checks it fails), for pods the apiserver accepts as valid.
CASES = [
    pytest.param(B, pod(B), set(), id="baseline-compliant"),
    pytest.param(R, pod(R), set(), id="restricted-compliant"),
    # baseline
    pytest.param(B, pod(B, sc={"privileged": True}), {"privileged"}, id="privileged"),
    pytest.param(B, pod(B, sc={"privileged": False}), set(), id="privileged-false"),
    pytest.param(B, init(pod(B), {"securityContext": {"privileged": True}}), {"privileged"},
                 id="privileged-init-container"),
    pytest.param(B, pod(B, spec={"hostNetwork": True}), {"hostNamespaces"}, id="hostNetwork"),
    pytest.param(B, pod(B, spec={"hostPID": True}), {"hostNamespaces"}, id="hostPID"),
    pytest.param(B, pod(B, spec={"hostIPC": False}), set(), id="hostIPC-false"),
    pytest.param(B, pod(B, spec={"hostNetwork": True},
                        container={"ports": [{"containerPort": 8080}]}),
                 {"hostNamespaces", "hostPorts"}, id="hostNetwork-defaults-hostPort"),
    pytest.param(B, pod(B, spec=HOST_PATH), {"hostPathVolumes"}, id="hostPath"),
    pytest.param(B, pod(B, spec={"volumes": [{"name": "tmp", "emptyDir": {}}]}), set(),
                 id="emptyDir-baseline"),
    pytest.param(B, pod(B, container={"ports": [{"containerPort": 80, "hostPort": 8080}]}),
                 {"hostPorts"}, id="hostPort"),
    pytest.param(B, pod(B, container={"ports": [{"containerPort": 80}]}), set(),
                 id="containerPort"),
    pytest.param(B, pod(B, sc={"capabilities": {"add": ["NET_ADMIN", "CHOWN"]}}),
                 {"capabilities_baseline"}, id="capabilities-baseline"),
    pytest.param(B, pod(B, sc={"capabilities": {"add": ["CHOWN", "NET_BIND_SERVICE"]}}), set(),
                 id="capabilities-default"),
    pytest.param(B, pod(B, sc={"seccompProfile": {"type": "Unconfined"}}),
                 {"seccompProfile_baseline"}, id="seccomp-unconfined"),
    pytest.param(B, pod(B, pod_sc={"seccompProfile": {"type": "Unconfined"}}),
                 {"seccompProfile_baseline"}, id="seccomp-unconfined-pod"),
    pytest.param(B, pod(B, sc={"seccompProfile": {"type": "RuntimeDefault"}}), set(),
                 id="seccomp-runtime-default-baseline"),
    pytest.param(B, pod(B, sc={"seLinuxOptions": {"type": "spc_t"}}), {"seLinuxOptions"},
                 id="selinux-type"),
    pytest.param(B, pod(B, pod_sc={"seLinuxOptions": {"user": "root"}}), {"seLinuxOptions"},
                 id="selinux-user"),
    pytest.param(B, pod(B, sc={"seLinuxOptions": {"type": "container_engine_t"}}), set(),
                 id="selinux-container-engine"),
    pytest.param(B, pod(B, sc={"procMount": "Unmasked"}, spec=USERNS), set(),
                 id="procMount-unmasked-user-namespace-baseline"),
    pytest.param(B, pod(B, sc={"procMount": "Unmasked"}), {"procMount"}, id="procMount-unmasked"),
    pytest.param(B, pod(B, sc={"procMount": "Default"}), set(), id="procMount-default"),
    pytest.param(B, pod(B, pod_sc={"sysctls": [{"name": "kernel.msgmax", "value": "65536"}]}),
                 {"sysctls"}, id="sysctl-unsafe"),
    pytest.param(B, pod(B, pod_sc={"sysctls": [{"name": "net.ipv4.tcp_notsent_lowat",
                                                 "value": "16384"}]}),
                 set(), id="sysctl-safe-since-1.37"),
    pytest.param(B, pod(B, sc={"windowsOptions": {"hostProcess": True}},
                        spec={**WINDOWS, "hostNetwork": True}),
                 {"windowsHostProcess", "hostNamespaces"}, id="windows-hostProcess"),
    pytest.param(B, pod(B, sc={"appArmorProfile": {"type": "Unconfined"}}), {"appArmorProfile"},
                 id="apparmor-unconfined"),
    pytest.param(B, pod(B, annotations={
        "container.apparmor.security.beta.kubernetes.io/app": "unconfined"}),
                 {"appArmorProfile"}, id="apparmor-annotation-unconfined"),
    pytest.param(B, pod(B, sc={"appArmorProfile": {"type": "RuntimeDefault"}}), set(),
                 id="apparmor-runtime-default"),
    pytest.param(B, pod(B, container=PROBE_HOST), {"hostProbesAndHostLifecycle"},
                 id="probe-host"),
    pytest.param(B, pod(B, container=LIFECYCLE_HOST), {"hostProbesAndHostLifecycle"},
                 id="lifecycle-host"),
    pytest.param(B, pod(B, container={"livenessProbe": {"httpGet": {"port": 80}}}), set(),
                 id="probe-no-host"),
    pytest.param(B, pod(B, sc={"runAsUser": 0, "allowPrivilegeEscalation": True}), set(),
                 id="restricted-only-fields-at-baseline"),
    # restricted
    pytest.param(R, pod(R, drop=("allowPrivilegeEscalation",)), {"allowPrivilegeEscalation"},
                 id="allowPrivilegeEscalation-unset"),
    pytest.param(R, pod(R, sc={"allowPrivilegeEscalation": True}), {"allowPrivilegeEscalation"},
                 id="allowPrivilegeEscalation-true"),
    pytest.param(R, pod(R, drop=("capabilities",)), {"capabilities_restricted"},
                 id="capabilities-not-dropped"),
    pytest.param(R, pod(R, sc={"capabilities": {"drop": ["ALL"], "add": ["CHOWN"]}}),
                 {"capabilities_restricted"}, id="capabilities-add-default-at-restricted"),
    pytest.param(R, pod(R, sc={"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}),
                 set(), id="capabilities-net-bind-service"),
    pytest.param(R, pod(R, drop=("runAsNonRoot",)), {"runAsNonRoot"}, id="runAsNonRoot-unset"),
    pytest.param(R, pod(R, sc={"runAsNonRoot": False}), {"runAsNonRoot"},
                 id="runAsNonRoot-false"),
    pytest.param(R, pod(R, drop=("runAsNonRoot",), pod_sc={"runAsNonRoot": True}), set(),
                 id="runAsNonRoot-on-pod"),
    pytest.param(R, pod(R, sc={"runAsUser": 0}), {"runAsUser"}, id="runAsUser-0"),
    pytest.param(R, pod(R, sc={"runAsUser": 0}, drop=("runAsNonRoot",), spec=USERNS), set(),
                 id="user-namespace-waives-runAsNonRoot-and-runAsUser"),
    pytest.param(R, pod(R, drop=("seccompProfile",)), {"seccompProfile_restricted"},
                 id="seccomp-unset"),
    pytest.param(R, pod(R, drop=("seccompProfile",),
                        pod_sc={"seccompProfile": {"type": "RuntimeDefault"}}),
                 set(), id="seccomp-on-pod"),
    pytest.param(R, pod(R, sc={"seccompProfile": {"type": "Unconfined"}}),
                 {"seccompProfile_restricted"}, id="seccomp-unconfined-at-restricted"),
    pytest.param(R, pod(R, spec=HOST_PATH), {"restrictedVolumes"}, id="hostPath-at-restricted"),
    pytest.param(R, pod(R, spec={"volumes": [{"name": "nfs", "nfs": {"server": "nfs.example",
                                                                      "path": "/"}}]}),
                 {"restrictedVolumes"}, id="nfs-volume"),
    pytest.param(R, pod(R, spec={"volumes": [{"name": "c", "configMap": {"name": "c"}}]}),
                 set(), id="configMap-volume"),
    pytest.param(R, pod(R, sc={"procMount": "Unmasked"}, spec=USERNS), {"procMount_restricted"},
                 id="procMount-unmasked-user-namespace-restricted"),
    pytest.param(R, init(pod(R), {}), {"allowPrivilegeEscalation", "capabilities_restricted",
                                       "runAsNonRoot", "seccompProfile_restricted"},
                 id="restricted-init-container"),
    pytest.param(R, pod(R, sc={}, drop=tuple(HARDENED), spec=WINDOWS,
                        pod_sc={"runAsNonRoot": True}),
                 set(), id="windows-exempt-from-linux-only-checks"),
    pytest.param(R, pod(R, sc={}, drop=tuple(HARDENED), spec=WINDOWS), {"runAsNonRoot"},
                 id="windows-still-needs-runAsNonRoot"),
    pytest.param(R, pod(R, sc={}, drop=tuple(HARDENED), pod_sc={"runAsNonRoot": True}),
                 {"allowPrivilegeEscalation", "capabilities_restricted",
                  "seccompProfile_restricted"}, id="the-same-pod-on-linux"),
]


@pytest.mark.parametrize(("level", "pod_", "expected"), CASES)
def test_each_check_flags_exactly_the_pods_that_break_it(level: Level, pod_: Pod,
                                                         expected: set[str]) -> None:
    assert {v.check for v in violations(pod_, level)} == expected


def test_every_check_has_a_failing_case() -> None:
    failing = {check for case in CASES for check in cast(set[str], case.values[2])}
    assert failing == {check.id for check in CHECKS}


@pytest.mark.parametrize(("pod_", "expected"), [
    pytest.param(pod(R, drop=("allowPrivilegeEscalation",)),
                 'container "app" must set securityContext.allowPrivilegeEscalation=false',
                 id="allowPrivilegeEscalation"),
    pytest.param(pod(R, drop=("runAsNonRoot",)),
                 'pod or container "app" must set securityContext.runAsNonRoot=true',
                 id="runAsNonRoot"),
    pytest.param(pod(R, spec=HOST_PATH), 'volume "proc" uses restricted volume type "hostPath"',
                 id="restrictedVolumes"),
    pytest.param(pod(R, sc={"capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN", "CHOWN"]}}),
                 'container "app" must not include "CHOWN", "SYS_ADMIN" in '
                 "securityContext.capabilities.add", id="capabilities"),
])
def test_messages_read_like_the_apiservers(pod_: Pod, expected: str) -> None:
    assert [v.message for v in violations(pod_, R)] == [expected]


def test_ephemeral_containers_count_too() -> None:
    pod_ = pod(R)
    pod_["spec"]["ephemeralContainers"] = [{"name": "debug", "image": "busybox",
                                            "securityContext": {**HARDENED, "privileged": True}}]
    assert [(v.check, v.subject) for v in violations(pod_, R)] == [("privileged", "debug")]


def test_the_privileged_level_allows_anything() -> None:
    pod_ = pod(B, sc={"privileged": True}, spec=HOST_PATH)
    assert violations(pod_, Level.PRIVILEGED) == []
    assert checks_for(Level.PRIVILEGED) == []


def test_restricted_replaces_the_baseline_checks_it_overrides() -> None:
    restricted = {c.id for c in checks_for(R)}
    assert {"capabilities_baseline", "hostPathVolumes", "procMount",
            "seccompProfile_baseline"}.isdisjoint(restricted)
    assert {c.id for c in checks_for(B)} < restricted | {
        "capabilities_baseline", "hostPathVolumes", "procMount", "seccompProfile_baseline"}


@pytest.mark.parametrize("garbage", [
    pytest.param({}, id="empty"),
    pytest.param({"spec": None}, id="null-spec"),
    pytest.param({"spec": {"containers": "nope", "volumes": [None, 3]}}, id="wrong-types"),
    pytest.param({"spec": {"containers": [{"securityContext": "x", "ports": [5]}],
                           "securityContext": {"sysctls": "x"}}}, id="wrong-nested-types"),
    pytest.param(["not", "a", "pod"], id="not-a-mapping"),
])
def test_a_malformed_pod_gives_values_never_an_exception(garbage: Any) -> None:
    for level in Level:
        assert isinstance(violations(garbage, level), list)


def test_new_violations_ignores_what_the_pod_already_had() -> None:
    before = pod(R, drop=("allowPrivilegeEscalation",), spec=HOST_PATH)
    after = copy.deepcopy(before)
    after["spec"]["containers"].append({"name": "agent", "image": "busybox",
                                        "securityContext": HARDENED})
    after["spec"]["volumes"].append({"name": "logs", "emptyDir": {}})
    assert len(violations(after, R)) == 2
    assert new_violations(before, after, R) == []


def test_new_violations_blames_only_what_was_added() -> None:
    before = pod(R, drop=("allowPrivilegeEscalation",))
    after = copy.deepcopy(before)
    after["spec"]["containers"].append({"name": "agent", "image": "busybox",
                                        "securityContext": {**HARDENED, "privileged": True}})
    after["spec"]["volumes"] = [{"name": "sys", "hostPath": {"path": "/sys"}}]
    assert new_violations(before, after, R) == [
        Violation("privileged", "agent", "privileged",
                  'container "agent" must not set securityContext.privileged=true'),
        Violation("restrictedVolumes", "pod", "restricted volume types",
                  'volume "sys" uses restricted volume type "hostPath"'),
    ]


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param("privileged", Level.PRIVILEGED, id="privileged"),
    pytest.param("baseline", Level.BASELINE, id="baseline"),
    pytest.param("restricted", Level.RESTRICTED, id="restricted"),
    pytest.param("Baseline", Level.RESTRICTED, id="wrong-case-is-enforced-as-restricted"),
    pytest.param("strict", Level.RESTRICTED, id="unknown-is-enforced-as-restricted"),
    pytest.param("", Level.RESTRICTED, id="empty-is-enforced-as-restricted"),
    pytest.param(None, None, id="no-label-means-the-cluster-default"),
])
def test_a_level_label_is_parsed_like_the_apiserver_does(text: str | None,
                                                         expected: Level | None) -> None:
    assert parse_level(text) is expected


#: Policies that break Pod Security on purpose (the CLI and end-to-end tests use them).
SECURITY_SCANNER = """\
apiVersion: sidecar.company.com/v1alpha1
kind: InjectionPolicy
metadata:
  name: security-scanner
spec:
  containers:
    - name: security-scanner
      image: aquasec/trivy:0.58.0
      args: ["filesystem", "/"]
      securityContext:
        privileged: true
"""

NODE_EXPORTER = """\
apiVersion: sidecar.company.com/v1alpha1
kind: InjectionPolicy
metadata:
  name: node-exporter
spec:
  containers:
    - name: node-exporter
      image: prom/node-exporter:v1.8.2
      args: ["--path.procfs=/host/proc", "--path.sysfs=/host/sys"]
      volumeMounts:
        - {name: proc, mountPath: /host/proc, readOnly: true}
        - {name: sys, mountPath: /host/sys, readOnly: true}
      securityContext:
        runAsNonRoot: true
        runAsUser: 65534
        allowPrivilegeEscalation: false
        capabilities: {drop: [ALL]}
        seccompProfile: {type: RuntimeDefault}
  volumes:
    - {name: proc, hostPath: {path: /proc}}
    - {name: sys, hostPath: {path: /sys}}
"""

PRIVILEGED_POLICIES = {"security-scanner": SECURITY_SCANNER, "node-exporter": NODE_EXPORTER}
