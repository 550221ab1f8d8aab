"""Where the pod is in each kind the offline `inject` reads: Pods and pod-template owners."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

#: Path from the object to its pod (or pod template), by kind.
POD_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
    "PodTemplate": ("template",),
}

#: The pod-template owners whose CREATE and UPDATE the webhook checks (`engine.workload_warnings`),
#: by kind, with their API group.
CHECKED_WORKLOADS: dict[str, str] = {
    "Deployment": "apps",
    "StatefulSet": "apps",
    "DaemonSet": "apps",
    "ReplicaSet": "apps",
    "Job": "batch",
    "CronJob": "batch",
}


@dataclass(slots=True)
class PodSlot:
    """A pod found inside an object: where it sits, so the injected one can be put back."""

    owner: dict[str, Any]
    path: tuple[str, ...]
    label: str
    namespace: str

    @property
    def pod(self) -> Any:
        node: Any = self.owner
        for key in self.path:
            node = node.get(key) if isinstance(node, dict) else None
        return node

    def replace(self, pod: Any) -> None:
        if not self.path:
            self.owner.clear()
            self.owner.update(pod)
            return
        node = self.owner
        for key in self.path[:-1]:
            node = node[key]
        node[self.path[-1]] = pod


def pod_slots(obj: dict[str, Any]) -> Iterator[PodSlot]:
    """Every pod in `obj`: itself, its template, or those of a `List`'s items. Others: none."""
    kind = obj.get("kind")
    if kind == "List" or (isinstance(kind, str) and kind.endswith("List")
                          and isinstance(obj.get("items"), list)):
        for item in obj.get("items") or []:
            if isinstance(item, dict):
                yield from pod_slots(item)
        return
    if not isinstance(kind, str) or kind not in POD_PATHS:
        return
    raw = obj.get("metadata")
    metadata: dict[str, Any] = raw if isinstance(raw, dict) else {}
    namespace = str(metadata.get("namespace") or "")
    slot = PodSlot(obj, POD_PATHS[kind], f"{kind}/{metadata.get('name') or '<unnamed>'}", namespace)
    if isinstance(slot.pod, dict) or not slot.path:
        yield slot
