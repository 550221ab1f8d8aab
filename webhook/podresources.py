"""Pod-level resources (KEP-2837): what injection must change in a pod's `spec.resources`.

A pod that sets `spec.resources` is admitted only if (pkg/apis/core/validation:
validatePodResources) its pod-level requests cover the aggregate of its containers' requests,
each regular container's limit stays within the pod limit, and each pod-level request stays
within its limit. The aggregate is KEP-753's, as component-helpers' AggregateContainerRequests
computes it: the larger of (every regular container plus every native sidecar) and, for each
init container, its own request plus the native sidecars declared before it. A container that
sets only a limit requests that limit (the apiserver defaults it so before validating).

`grow` works out, for the resources the pod sets at pod level, how much the injected containers
add to each aggregate, and raises those pod-level values by exactly that: the app's own budget
does not shrink, and a pod-level value the pod leaves unset stays unset (the apiserver defaults
it from the whole aggregate). Pure: quantities in, quantities out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import Any

from webhook.k8s_schema import quantity

Amounts = dict[str, Decimal]
BINARY = (("Ei", 2**60), ("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20),
           ("Ki", 2**10))


@dataclass(frozen=True, slots=True)
class PodLevelChange:
    """New pod-level values (`field -> resource -> quantity`) and the ones they replace."""

    values: dict[str, dict[str, str]]
    previous: dict[str, dict[str, str]]


def pod_level(spec: Mapping[str, Any]) -> dict[str, dict[str, str]] | None:
    """The pod's own `spec.resources` requests and limits, or None when it sets none."""
    resources = spec.get("resources")
    if not isinstance(resources, dict):
        return None
    found = {field: dict(resources[field]) for field in ("requests", "limits")
             if isinstance(resources.get(field), dict) and resources[field]}
    return found or None


def grow(spec: Mapping[str, Any], *, init_front: Sequence[Mapping[str, Any]],
         init_back: Sequence[Mapping[str, Any]], containers: Sequence[Mapping[str, Any]],
         ) -> PodLevelChange | None:
    """How the pod-level values of `spec` must grow once these containers are added (init
    containers and native sidecars before and after the pod's own, classic sidecars after its
    containers); None when the pod sets no pod-level resources or nothing changes."""
    own = pod_level(spec)
    if own is None:
        return None
    init = list(_dicts(spec.get("initContainers")))
    regular = list(_dicts(spec.get("containers")))
    after_init = [*init_front, *init, *init_back]
    after_regular = [*regular, *containers]
    values: dict[str, dict[str, str]] = {}
    previous: dict[str, dict[str, str]] = {}
    new_requests: Amounts = {}
    requests = own.get("requests", {})
    grown = _delta(aggregate(after_init, after_regular, "requests"),
                   aggregate(init, regular, "requests"))
    for resource, text in requests.items():
        before = quantity(text)
        if before is None or not grown.get(resource):
            continue
        new_requests[resource] = before + grown[resource]
        values.setdefault("requests", {})[resource] = format_quantity(new_requests[resource])
        previous.setdefault("requests", {})[resource] = text
    limits = own.get("limits", {})
    limit_growth = _delta(aggregate(after_init, after_regular, "limits"),
                          aggregate(init, regular, "limits"))
    floor = aggregate(after_init, after_regular, "requests")
    for resource, text in limits.items():
        before = quantity(text)
        if before is None:
            continue
        needed = max([before + limit_growth.get(resource, Decimal(0)),
                      new_requests.get(resource, quantity(requests.get(resource)) or Decimal(0)),
                      Decimal(0) if resource in requests else floor.get(resource, Decimal(0)),
                      *(_amount(c, "limits", resource) for c in containers)])
        if needed > before:
            values.setdefault("limits", {})[resource] = format_quantity(needed)
            previous.setdefault("limits", {})[resource] = text
    return PodLevelChange(values, previous) if values else None


def aggregate(init_containers: Iterable[Mapping[str, Any]],
              containers: Iterable[Mapping[str, Any]], field: str) -> Amounts:
    """KEP-753's effective amounts of a pod: max(regular containers + native sidecars, each init
    container plus the native sidecars declared before it), per resource."""
    sidecars: Amounts = {}
    init_peak: Amounts = {}
    for container in init_containers:
        own = amounts(container, field)
        if container.get("restartPolicy") == "Always":
            sidecars = _sum(sidecars, own)
            init_peak = _max(init_peak, sidecars)
        else:
            init_peak = _max(init_peak, _sum(sidecars, own))
    running = sidecars
    for container in containers:
        running = _sum(running, amounts(container, field))
    return _max(running, init_peak)


def format_quantity(value: Decimal) -> str:
    """A quantity text for `value`: whole binary units where they fit (`192Mi`), else whole
    numbers, else millis rounded up (`150m`)."""
    if value == value.to_integral_value():
        whole = int(value)
        for suffix, factor in BINARY:
            if whole and whole % factor == 0:
                return f"{whole // factor}{suffix}"
        return str(whole)
    return f"{int((value * 1000).to_integral_value(rounding=ROUND_CEILING))}m"


def amounts(container: Mapping[str, Any], field: str) -> Amounts:
    """A container's `field` amounts by resource; its limits stand in for requests it leaves
    out, and what is not a quantity counts as absent."""
    resources = container.get("resources")
    if not isinstance(resources, dict):
        return {}
    chosen = _map(resources.get(field))
    if field == "requests":  # a limit without a request is the request (apiserver defaulting)
        chosen = {**_map(resources.get("limits")), **chosen}
    return {name: amount for name, text in chosen.items()
            if (amount := quantity(text)) is not None}


def _amount(container: Mapping[str, Any], field: str, resource: str) -> Decimal:
    return amounts(container, field).get(resource, Decimal(0))


def _sum(a: Amounts, b: Amounts) -> Amounts:
    return {key: a.get(key, Decimal(0)) + b.get(key, Decimal(0)) for key in {*a, *b}}


def _max(a: Amounts, b: Amounts) -> Amounts:
    return {key: max(a.get(key, Decimal(0)), b.get(key, Decimal(0))) for key in {*a, *b}}


def _delta(after: Amounts, before: Amounts) -> Amounts:
    return {key: after[key] - before.get(key, Decimal(0)) for key in after
            if after[key] > before.get(key, Decimal(0))}


def _map(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: Any) -> Iterable[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []
