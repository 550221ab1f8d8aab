"""Operating systems: which pods run on Windows, and what a Windows pod must not carry.

A pod is a Windows pod when `spec.os.name` is `windows` or its `nodeSelector` asks for
`kubernetes.io/os: windows`. The apiserver refuses Linux-only securityContext fields on the
containers of a pod whose `spec.os.name` is `windows` (pkg/apis/core/validation: validateWindows,
"cannot be set for a windows pod"); `LINUX_ONLY_CONTAINER_FIELDS` are those, as of 1.35 to 1.37.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

OS_LABEL = "kubernetes.io/os"

#: container securityContext fields validateWindows forbids (pod-level ones are the pod's own)
LINUX_ONLY_CONTAINER_FIELDS = (
    "appArmorProfile", "seLinuxOptions", "seccompProfile", "capabilities",
    "readOnlyRootFilesystem", "privileged", "allowPrivilegeEscalation", "procMount",
    "runAsUser", "runAsGroup",
)


class OperatingSystem(StrEnum):
    """A system a policy's containers run on (`spec.os` of a policy)."""

    LINUX = "linux"
    WINDOWS = "windows"


def pod_os(spec: Mapping[str, Any]) -> OperatingSystem:
    """The system the pod runs on: Windows by `spec.os.name` or the `kubernetes.io/os` node
    selector, else Linux."""
    os_field = spec.get("os")
    name = os_field.get("name") if isinstance(os_field, dict) else None
    selector = spec.get("nodeSelector")
    wanted = selector.get(OS_LABEL) if isinstance(selector, dict) else None
    if OperatingSystem.WINDOWS in (name, wanted):
        return OperatingSystem.WINDOWS
    return OperatingSystem.LINUX


def for_windows(container: Mapping[str, Any]) -> dict[str, Any]:
    """`container` without the Linux-only securityContext fields (and without an emptied
    securityContext)."""
    result = dict(container)
    context = result.get("securityContext")
    if isinstance(context, dict):
        kept = {k: v for k, v in context.items() if k not in LINUX_ONLY_CONTAINER_FIELDS}
        if kept:
            result["securityContext"] = kept
        else:
            del result["securityContext"]
    return result
