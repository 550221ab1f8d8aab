"""RFC 6902 operations, built directly from what `render` decided (never by diffing two documents).

Two helpers know the rules: `_extend` adds a whole array when it is absent, else inserts at the
front by index or appends with `/-`; `_put` adds a whole map when it is absent, else one escaped
key at a time. JSON Pointer escaping (`~0`, `~1`) is `jsonpointer`'s.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from jsonpointer import escape

from webhook.policy import RawJSON
from webhook.render import PodView, Rendered

Operation = dict[str, Any]


def serialize(ops: list[Operation]) -> bytes:
    """The patch as UTF-8 JSON text; pre-rendered fragments (`RawJSON`) are embedded as they
    are."""
    return orjson.dumps(ops, default=_embed, option=orjson.OPT_PASSTHROUGH_SUBCLASS)


def _embed(value: Any) -> Any:
    """What orjson is given for a value it does not encode itself: a pre-rendered fragment as
    it is, any other str subclass as its text."""
    if isinstance(value, RawJSON):
        return orjson.Fragment(str(value))  # orjson takes no subclass of str here
    if isinstance(value, str):
        return str(value)
    raise TypeError(f"cannot put a {type(value).__name__} into a JSON patch")


def injection_patch(pod: PodView, rendered: Rendered) -> list[Operation]:
    """The operations that add everything in `rendered` to `pod`."""
    ops: list[Operation] = []
    if not pod.has_metadata:
        ops.append({"op": "add", "path": "/metadata", "value": {}})
    _put(ops, "/metadata/annotations", pod.metadata.get("annotations"), rendered.annotations)
    _put(ops, "/metadata/labels", pod.metadata.get("labels"), rendered.labels)
    if not pod.has_spec:
        ops.append({"op": "add", "path": "/spec", "value": {}})
    init = pod.spec.get("initContainers")
    if init:
        _insert_front(ops, "/spec/initContainers", rendered.init_front)
        _extend(ops, "/spec/initContainers", init, rendered.init_back)
    else:
        _extend(ops, "/spec/initContainers", init, rendered.init_front + rendered.init_back)
    _extend(ops, "/spec/containers", pod.spec.get("containers"), rendered.containers)
    for index, container in enumerate(pod.containers):
        base = f"/spec/containers/{index}"
        _extend(ops, f"{base}/volumeMounts", container.get("volumeMounts"),
                rendered.mounts.get(index, []))
        _extend(ops, f"{base}/env", container.get("env"), rendered.env.get(index, []))
    _extend(ops, "/spec/volumes", pod.spec.get("volumes"), rendered.volumes)
    listed = pod.spec.get("imagePullSecrets")
    _extend(ops, "/spec/imagePullSecrets", listed if isinstance(listed, list) else None,
            rendered.pull_secrets)
    if rendered.pod_resources is not None:
        _replace(ops, "/spec/resources", rendered.pod_resources.values)
    return ops


def stamp_patch(pod: PodView, key: str, value: str) -> list[Operation]:
    """The operations that only add the `P/status` annotation."""
    ops: list[Operation] = []
    if not pod.has_metadata:
        ops.append({"op": "add", "path": "/metadata", "value": {}})
    _put(ops, "/metadata/annotations", pod.metadata.get("annotations"), {key: value})
    return ops


def removal_patch(pod: PodView, status_key: str) -> list[Operation]:
    """The operations that undo exactly what `P/status` records; emptied arrays and maps go too."""
    annotations = pod.metadata.get("annotations") or {}
    try:
        status = json.loads(annotations[status_key])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"annotation {status_key} is missing or not valid JSON") from None
    if not isinstance(status, dict):
        raise ValueError(f"annotation {status_key} is not a JSON object")
    sidecars = set(_strings(status.get("containers")))
    ops: list[Operation] = []
    _drop_items(ops, "/metadata/annotations", annotations,
                {*_strings(status.get("podAnnotations")), status_key})
    _drop_items(ops, "/metadata/labels", pod.metadata.get("labels") or {},
                set(_strings(status.get("podLabels"))))
    _drop_named(ops, "/spec/initContainers", pod.init_containers,
                sidecars | set(_strings(status.get("initContainers"))))
    _drop_named(ops, "/spec/containers", pod.containers, sidecars)
    env = _mapping(status.get("env"))
    mounts = _mapping(status.get("volumeMounts"))
    for index, container in enumerate(pod.containers):
        base = f"/spec/containers/{index}"
        _drop_named(ops, f"{base}/volumeMounts", container.get("volumeMounts") or [],
                    set(_strings(mounts.get(container["name"]))), key="mountPath")
        _drop_named(ops, f"{base}/env", container.get("env") or [],
                    set(_strings(env.get(container["name"]))))
    _drop_named(ops, "/spec/volumes", pod.volumes, set(_strings(status.get("volumes"))))
    listed = pod.spec.get("imagePullSecrets")
    _drop_named(ops, "/spec/imagePullSecrets", listed if isinstance(listed, list) else [],
                set(_strings(status.get("imagePullSecrets"))))
    previous = _mapping(status.get("podResources"))
    own = pod.spec.get("resources")
    if previous and isinstance(own, dict):  # only values that are still there
        _replace(ops, "/spec/resources", {
            field: {name: value for name, value in _mapping(values).items()
                    if isinstance(value, str) and name in _mapping(own.get(field))}
            for field, values in previous.items()})
    return ops


def _replace(ops: list[Operation], path: str, values: Mapping[str, Mapping[str, str]]) -> None:
    """Replace existing `field -> key` values below `path` (pod-level requests and limits)."""
    ops.extend({"op": "replace", "path": f"{path}/{field}/{escape(key)}", "value": value}
               for field, keyed in values.items() for key, value in keyed.items())


def _extend(ops: list[Operation], path: str, existing: Sequence[Any] | None,
            items: Sequence[Any]) -> None:
    if not items:
        return
    if not existing:
        ops.append({"op": "add", "path": path, "value": _array(items)})
        return
    ops.extend({"op": "add", "path": f"{path}/-", "value": item} for item in items)


def _array(items: Sequence[Any]) -> Any:
    """`items` as one JSON array: the text itself when they are pre-rendered (what `render`
    gives), so that `serialize` embeds it once."""
    if isinstance(items[0], RawJSON):
        return RawJSON("[" + ",".join(items) + "]")
    return list(items)


def _insert_front(ops: list[Operation], path: str, items: Sequence[Any]) -> None:
    ops.extend({"op": "add", "path": f"{path}/{i}", "value": item} for i, item in enumerate(items))


def _put(ops: list[Operation], path: str, existing: Mapping[str, Any] | None,
         items: Mapping[str, Any]) -> None:
    if not items:
        return
    if existing is None or not isinstance(existing, dict):
        ops.append({"op": "add", "path": path, "value": dict(items)})
        return
    ops.extend({"op": "add", "path": f"{path}/{escape(key)}", "value": value}
               for key, value in items.items())


def _drop_items(ops: list[Operation], path: str, existing: Mapping[str, Any],
                keys: set[str]) -> None:
    present = [key for key in existing if key in keys]
    if not present:
        return
    if len(present) == len(existing):
        ops.append({"op": "remove", "path": path})
        return
    ops.extend({"op": "remove", "path": f"{path}/{escape(key)}"} for key in present)


def _drop_named(ops: list[Operation], path: str, existing: Sequence[Any], names: set[str],
                key: str = "name") -> None:
    found = [i for i, item in enumerate(existing)
             if isinstance(item, dict) and item.get(key) in names]
    if not found:
        return
    if len(found) == len(existing):
        ops.append({"op": "remove", "path": path})
        return
    ops.extend({"op": "remove", "path": f"{path}/{i}"} for i in reversed(found))


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []
