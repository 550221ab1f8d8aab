"""Pod-level resources (KEP-2837) in the compiled engine policy: webhook.podresources `grow`, in
CEL, for a pod that sets `spec.resources`.

CEL can read a quantity but not write one into the pod (a Quantity is no JSON patch value, and
MutatingAdmissionPolicy's CEL has no `math` library), so every amount is worked in int64 millis
and printed back as `format_quantity` prints it. An amount is exact in millis when it is whole,
or when the nearest whole number of millis is the same quantity again; a pod with an amount
finer than that (`100u`), a negative one, one over `MAX_AMOUNT`, a resource name that needs JSON
escaping, or more than `MAX_OWN_INITS` init containers (KEP-753's sums are quadratic in them) is
the webhook's (`envelopeFits` false). A policy whose own amounts are not exact in millis is not
compiled (`problem`).

The pod's variables (`pod_variables`) hold the pod's own amounts, one list per container aligned
with `resNames` (the pod-level resource names, sorted as the apiserver's JSON sorts them); the
engine policy's (`variables`) add the injected containers' amounts from the policy constants
(`amounts`), take KEP-753's aggregate before and after, and give the new pod-level values, their
`replace` operations and the stamp's `podResources`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal

from webhook.k8s_schema import quantity
from webhook.podresources import BINARY, amounts, format_quantity
from webhook.policy import CompiledPolicy, Template

Obj = dict[str, object]
#: the largest amount the compiled policy adds up (an int64 of millis holds 500 containers of it)
MAX_AMOUNT = "8Ti"
MAX_MILLIS = int(quantity(MAX_AMOUNT) or 0) * 1000
#: the most init containers of a pod with pod-level resources the compiled policy injects
MAX_OWN_INITS = 32
#: the most pod-level resource names it injects (cpu, memory, hugepages-<size>)
MAX_RESOURCES = 8
#: resource names that go into the stamp's JSON and a JSON pointer as they are
RESOURCE_NAME = "^[-._/a-zA-Z0-9]+$"

SPEC = "object.spec"
OWN = f"{SPEC}.resources"
INITS = f"(has({SPEC}.initContainers) ? {SPEC}.initContainers : [])"
APPS = f"(has({SPEC}.containers) ? {SPEC}.containers : [])"
FIELDS = ("req", "lim")


def _millis(amount: Decimal) -> int | None:
    millis = amount * 1000
    if millis != millis.to_integral_value() or not 0 <= millis <= MAX_MILLIS:
        return None
    return int(millis)


def problem(policy: CompiledPolicy) -> str | None:
    """Why the compiled policy cannot add `policy`'s containers' amounts up, None when it can."""
    for shapes in (policy.variants[(False, False)], policy.variants[(True, False)]):
        for template in (t for group in shapes for t in group):
            for field in ("requests", "limits"):
                for resource, amount in amounts(template.value, field).items():
                    if _millis(amount) is None:
                        whole = (amount * 1000) % 1 == 0  # format_quantity rounds up to millis
                        shown = format_quantity(amount) if whole else f"{amount.normalize():f}"
                        return (f"container {template.value.get('name')!r} has {field} "
                                f"{resource}: {shown}, which is not a whole "
                                f"number of millis up to {MAX_AMOUNT} (the compiled pod-level "
                                "resources add millis up)")
    return None


def amounts_fields(template: Template) -> dict[str, str]:
    """The CEL fields of an injected container's record: whether it is a native sidecar, and
    its request and limit amounts in millis by resource (`problem` is None)."""
    def ints(field: str) -> str:
        found = amounts(template.value, field)
        return "{" + ", ".join(f"{json.dumps(name, ensure_ascii=False)}: {_millis(amount)}"
                               for name, amount in found.items()) + "}"

    native = template.value.get("restartPolicy") == "Always"
    return {"side": "true" if native else "false", "req": ints("requests"),
            "lim": ints("limits")}


def _bind(expression: str, name: str, body: str) -> str:
    """`body` with `name` bound to the value of `expression` (once)."""
    return f"[{expression}].map({name}, {body})[0]"


def millis(text: str) -> str:
    """CEL: the quantity `text` in millis, -1 when it is not one, negative, over `MAX_AMOUNT`
    or finer than a milli."""
    exact = _bind("int(q.asApproximateFloat() * 1000.0 + 0.5)", "m",
                  "quantity(string(m) + 'm').compareTo(q) == 0 ? m : -1")
    return _bind(text, "t", "isQuantity(t) ? " + _bind(
        "quantity(t)", "q", "q.compareTo(quantity('0')) < 0 || "
        f"q.compareTo(quantity('{MAX_AMOUNT}')) > 0 ? -1 : "
        f"q.isInteger() ? q.asInteger() * 1000 : {exact}") + " : -1")


def formatted(number: str) -> str:
    """CEL: millis as webhook.podresources `format_quantity` prints them."""
    whole = "string(w)"
    for suffix, factor in reversed(BINARY):
        whole = f"w % {factor} == 0 ? string(w / {factor}) + '{suffix}' : {whole}"
    return _bind(number, "v", "v % 1000 != 0 ? string(v) + 'm' : " + _bind(
        "v / 1000", "w", f"w == 0 ? '0' : {whole}"))


def _own(container: str, resource: str, field: str) -> str:
    """CEL: a pod's container's amount of `resource` (a limit stands in for a request)."""
    def of(kind: str, otherwise: str) -> str:
        source = f"{container}.resources.{kind}"
        return (f"has({container}.resources) && has({source}) && {resource} in {source} ? "
                f"{millis(f'string({source}[{resource}])')} : {otherwise}")
    return of("requests", of("limits", "0")) if field == "req" else of("limits", "0")


def _own_record(side: str | None = None) -> str:
    """CEL: a record of the pod's container `c`: its amounts aligned with `resNames` and, for
    an init container, whether it is a native sidecar (`side`)."""
    fields = [f"'{f}': dyn(variables.resNames.map(r, {_own('c', 'r', f)}))" for f in FIELDS]
    return "{" + ", ".join(([f"'side': dyn({side})"] if side else []) + fields) + "}"


def pod_variables() -> list[Obj]:
    """Whether the pod sets pod-level resources (`envelope`), its amounts, and whether the
    compiled policy can add them up (`envelopeFits`)."""
    def keys(kind: str) -> str:
        return f"has({OWN}) && has({OWN}.{kind}) ? {OWN}.{kind}.map(k, k) : []"

    def level(kind: str) -> str:
        return (f"variables.resNames.map(r, r in variables.{kind}Keys ? "
                f"{millis(f'string({OWN}.{kind}[r])')} : 0)")

    side = "has(c.restartPolicy) && c.restartPolicy == 'Always'"
    exact = "x.req.all(v, v >= 0) && x.lim.all(v, v >= 0)"
    return [
        {"name": "envelope", "expression": (
            f"has({OWN}) && ((has({OWN}.requests) && size({OWN}.requests) > 0) || "
            f"(has({OWN}.limits) && size({OWN}.limits) > 0))")},
        {"name": "requestsKeys", "expression": keys("requests")},
        {"name": "limitsKeys", "expression": keys("limits")},
        {"name": "resUnion", "expression": "(variables.requestsKeys + variables.limitsKeys)"
                                           ".distinct()"},
        # sorted, as the apiserver's JSON (and so the webhook) has them
        {"name": "resNames", "expression": (
            "lists.range(size(variables.resUnion)).map(i, variables.resUnion.filter(k, "
            "size(variables.resUnion.filter(o, o < k)) == i)[0])")},
        {"name": "ownInit", "expression": f"{INITS}.map(c, {_own_record(side)})"},
        {"name": "ownApps", "expression": f"{APPS}.map(c, {_own_record()})"},
        {"name": "podReq", "expression": level("requests")},
        {"name": "podLim", "expression": level("limits")},
        {"name": "envelopeFits", "expression": (
            f"size({INITS}) <= {MAX_OWN_INITS} && size(variables.resNames) <= {MAX_RESOURCES} "
            f"&& variables.resNames.all(r, r.matches('{RESOURCE_NAME}')) && "
            f"variables.ownInit.all(x, {exact}) && variables.ownApps.all(x, {exact}) && "
            "variables.podReq.all(v, v >= 0) && variables.podLim.all(v, v >= 0)")},
    ]


def _aggregate(inits: str, apps: str, field: str) -> str:
    """CEL: KEP-753's amount of resource j (webhook.podresources `aggregate`): the larger of
    (every native sidecar plus every app container) and, for each init container, its own
    plus the native sidecars declared before it."""
    def sidecars(items: str) -> str:
        return f"{items}.filter(x, x.side).map(x, x.{field}[j]).sum()"

    running = f"{sidecars(inits)} + {apps}.map(x, x.{field}[j]).sum()"
    peak = (f"([0] + lists.range(size({inits})).map(i, {sidecars(f'{inits}.slice(0, i)')} + "
            f"{inits}[i].{field}[j])).max()")
    return f"[{running}, {peak}].max()"


def variables(front: str, back: str, classic: str) -> list[Obj]:
    """The engine policy's variables for a pod with pod-level resources: the injected
    containers' amounts, aligned with `resNames` (`front`, `back`, `classic`: the lists of
    injected container records), and the new pod-level values in millis (-1: unchanged)."""
    def injected(items: str) -> str:
        aligned = ", ".join(
            f"'{f}': dyn(variables.resNames.map(r, r in e.{f} ? e.{f}[r] : 0))" for f in FIELDS)
        return f"{items}.map(e, {{'side': dyn(e.side), {aligned}}})"

    after = "variables.afterInit", "variables.afterApps"
    before = "variables.ownInit", "variables.ownApps"
    aggregates = ", ".join(
        f"'{f}{when}': int({_aggregate(*lists, f)})"
        for f in FIELDS for when, lists in (("After", after), ("Before", before)))
    n = "size(variables.resNames)"
    grown = "variables.aggs[j].reqAfter - variables.aggs[j].reqBefore"
    limit_grown = "variables.aggs[j].limAfter - variables.aggs[j].limBefore"
    return [
        {"name": "afterInit", "expression": (
            f"{injected(front)} + variables.ownInit + {injected(back)}")},
        {"name": "injClassic", "expression": injected(classic)},
        {"name": "afterApps", "expression": "variables.ownApps + variables.injClassic"},
        {"name": "aggs", "expression": f"lists.range({n}).map(j, {{{aggregates}}})"},
        {"name": "newReq", "expression": (
            f"lists.range({n}).map(j, variables.resNames[j] in variables.requestsKeys && "
            f"{grown} > 0 ? variables.podReq[j] + {grown} : -1)")},
        # the limit covers what it held plus what was added, the pod's requests (its own
        # aggregate when it sets no request) and every added app container's own limit
        {"name": "newLim", "expression": (
            f"lists.range({n}).map(j, !(variables.resNames[j] in variables.limitsKeys) ? -1 : "
            + _bind(
                f"[variables.podLim[j] + {limit_grown}, variables.resNames[j] in "
                "variables.requestsKeys ? (variables.newReq[j] >= 0 ? variables.newReq[j] : "
                "variables.podReq[j]) : variables.aggs[j].reqAfter, int(([0] + "
                "variables.injClassic.map(x, x.lim[j])).max())].max()",
                "v", "v > variables.podLim[j] ? v : -1") + ")")},
    ]


def _changed(new: str) -> str:
    return f"lists.range(size(variables.resNames)).filter(j, variables.{new}[j] >= 0)"


def operations(op: Callable[[str, str, str], str]) -> str:
    """CEL: the `replace` operations of the new pod-level values (webhook.patch `_replace`)."""
    def of(kind: str, new: str) -> str:
        path = (f"'/spec/resources/{kind}/' + variables.resNames[j].replace('~', '~0')"
                ".replace('/', '~1')")
        return f"{_changed(new)}.map(j, {op('replace', path, formatted(f'variables.{new}[j]'))})"
    return f"!variables.envelope ? [] : {of('requests', 'newReq')} + {of('limits', 'newLim')}"


def stamp() -> str:
    """CEL: the stamp's `podResources` member with its leading comma ('' when nothing grew):
    the pod's own values that were replaced."""
    def pairs(kind: str, new: str) -> str:
        return (f"{_changed(new)}.map(j, '\"' + variables.resNames[j] + '\":\"' + "
                f"string({OWN}.{kind}[variables.resNames[j]]) + '\"').join(',')")

    return ("!variables.envelope ? '' : " + _bind(
        f"[{pairs('requests', 'newReq')}, {pairs('limits', 'newLim')}]", "p",
        "p[0] == '' && p[1] == '' ? '' : ',\"podResources\":{' + (p[0] == '' ? '' : "
        "'\"requests\":{' + p[0] + '}') + (p[0] != '' && p[1] != '' ? ',' : '') + "
        "(p[1] == '' ? '' : '\"limits\":{' + p[1] + '}') + '}'"))
