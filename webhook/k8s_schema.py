"""The real Kubernetes OpenAPI definitions (strict: unknown fields fail), and quantity parsing.

The definitions are the ones `kubernetes-validate` bundles for a released Kubernetes version;
nothing here re-describes a Kubernetes object by hand.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from functools import cache
from importlib import resources
from typing import Any

import jsonschema
from kubernetes.utils.quantity import parse_quantity
from referencing import Registry, Resource

#: The Kubernetes release whose API schema policies and injected objects are checked against: the
#: oldest supported minor, so that nothing a policy adds is unknown to a supported apiserver.
KUBERNETES_VERSION = "1.35.0"

CONTAINER = "io.k8s.api.core.v1.Container"
VOLUME = "io.k8s.api.core.v1.Volume"
VOLUME_MOUNT = "io.k8s.api.core.v1.VolumeMount"
ENV_VAR = "io.k8s.api.core.v1.EnvVar"
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"

_DEFS_URI = "/api/_definitions.json"


def _schema_dir() -> Any:
    root = resources.files("kubernetes_validate").joinpath("kubernetes-json-schema")
    return root.joinpath(f"v{KUBERNETES_VERSION}-local-strict")


@cache
def definitions() -> dict[str, Any]:
    """Every strict definition of the pinned Kubernetes version, by its OpenAPI name."""
    text = _schema_dir().joinpath("_definitions.json").read_text(encoding="utf-8")
    defs: dict[str, Any] = json.loads(text)["$defs"]
    return defs


@cache
def _registry() -> Registry[Any]:
    text = _schema_dir().joinpath("_definitions.json").read_text(encoding="utf-8")
    registry: Registry[Any] = Registry().with_resource(
        _DEFS_URI, Resource.from_contents(json.loads(text))
    )
    return registry


@cache
def validator(definition: str) -> jsonschema.protocols.Validator:
    """A strict validator for one definition, e.g. `CONTAINER`."""
    schema = {"$ref": f"{_DEFS_URI}#/$defs/{definition}"}
    return jsonschema.Draft202012Validator(schema, registry=_registry())


@cache
def object_validator(kind: str, api_version: str) -> jsonschema.protocols.Validator:
    """A strict validator for a whole object such as a `v1` `Pod` or an `apps/v1` `Deployment`."""
    group, _, version = api_version.rpartition("/")
    short_group = group.split(".", maxsplit=1)[0]
    suffix = f"{short_group}-{version}" if group else version
    name = f"{kind.lower()}-{suffix}.json"
    schema = json.loads(_schema_dir().joinpath(name).read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema, registry=_registry())


def closure(names: list[str]) -> dict[str, Any]:
    """The named definitions and every definition they reference, for a self-contained schema."""
    defs = definitions()
    found: dict[str, Any] = {}
    pending = list(names)
    while pending:
        name = pending.pop()
        if name in found:
            continue
        found[name] = defs[name]
        pending.extend(_refs(defs[name]))
    return dict(sorted(found.items()))


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value.rsplit("/", 1)[-1]
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def rewrite_refs(node: Any, target: str) -> Any:
    """A copy of `node` whose `$ref`s point at `target` + the definition name."""
    if isinstance(node, dict):
        return {
            key: target + value.rsplit("/", 1)[-1] if key == "$ref" else rewrite_refs(value, target)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [rewrite_refs(item, target) for item in node]
    return node


def quantity(value: object) -> Decimal | None:
    """The value of a Kubernetes quantity (`100m`, `64Mi`, `2`), or None if it is not one."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    try:
        parsed: Decimal = parse_quantity(value)  # type: ignore[no-untyped-call]
    except ValueError:
        return None
    return parsed
