"""A real CEL implementation (cel-cpp, through cel-expr-python) for the compiled admission
policies offline. It has none of Kubernetes' CEL libraries; the list functions the policies use
(`distinct`, `flatten`, `slice`, `sum`, `max`, `lists.range`) and the quantity functions
(`isQuantity`, `quantity`, `compareTo`, `isInteger`, `asInteger`, `asApproximateFloat`)
are supplied here with the meaning the Kubernetes and cel-go docs give them. A quantity is its
exact value as a decimal string here (cel-expr-python takes no new types), read by the webhook's
own parser. The apiserver (tests/e2e/test_compiled.py) stays the final
oracle."""

from __future__ import annotations

import contextlib
import re
from decimal import Decimal
from typing import Any

from cel_expr_python import cel
from cel_expr_python.ext import ext_strings

from webhook.k8s_schema import quantity

DYN = cel.Type.DYN
LIST = cel.Type.List(DYN)
INTS = cel.Type.List(cel.Type.INT)
STRING = cel.Type.STRING


def _distinct(values: list[Any]) -> list[Any]:
    kept: list[Any] = []
    for value in values:
        if value not in kept:
            kept.append(value)
    return kept


def _quantity(text: str) -> Decimal:
    value = quantity(text)
    if value is None:
        raise ValueError(f"{text!r} is not a quantity")
    return value


def _as_integer(text: str) -> int:
    value = Decimal(text)
    if value != value.to_integral_value() or abs(value) >= 2**63:
        raise ValueError(f"{text} is not an int64")
    return int(value)


def _compare(a: str, b: str) -> int:
    return (Decimal(a) > Decimal(b)) - (Decimal(a) < Decimal(b))


def _function(name: str, impl: Any, parameters: list[Any], result: Any, *,
              member: bool = True) -> cel.FunctionDecl:
    return cel.FunctionDecl(name, [cel.Overload(
        name.replace(".", "_"), return_type=result, parameters=parameters, is_member=member,
        impl=impl)])


ENV = cel.NewEnv(
    variables={name: DYN for name in ("object", "namespaceObject", "variables")},
    extensions=[ext_strings.ExtStrings()],
    functions=[
        _function("distinct", _distinct, [LIST], LIST),
        _function("flatten", lambda lists: [item for inner in lists for item in inner], [LIST],
                  LIST),
        _function("slice", lambda items, start, end: items[start:end],
                  [LIST, cel.Type.INT, cel.Type.INT], LIST),
        _function("sum", sum, [INTS], cel.Type.INT),
        _function("max", max, [INTS], cel.Type.INT),
        _function("isQuantity", lambda text: quantity(text) is not None, [STRING],
                  cel.Type.BOOL, member=False),
        _function("quantity", lambda text: str(_quantity(text)), [STRING], STRING,
                  member=False),
        _function("compareTo", _compare, [STRING, STRING], cel.Type.INT),
        _function("isInteger", lambda q: Decimal(q) == Decimal(q).to_integral_value(),
                  [STRING], cel.Type.BOOL),
        _function("asInteger", _as_integer, [STRING], cel.Type.INT),
        _function("asApproximateFloat", lambda q: float(Decimal(q)), [STRING],
                  cel.Type.DOUBLE),
        _function("lists.range", lambda n: list(range(n)), [cel.Type.INT], INTS, member=False),
    ],
)


class CelError(Exception):
    """An expression that evaluated to an error (cel-expr-python returns it as a value)."""


def evaluate(expression: str, data: dict[str, Any]) -> Any:
    """The plain value of `expression`; CelError if it evaluates to an error, RuntimeError if
    it does not compile."""
    result = ENV.compile(expression).eval(data=data)
    if result.type() == cel.Type.ERROR:
        raise CelError(result.value())
    return result.plain_value()


def run_variables(spec: dict[str, Any], data: dict[str, Any],
                  wanted: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Each variable of a policy's spec, in order, each seeing the ones before it. The apiserver
    evaluates a variable only when an expression reads it; here each is evaluated in order, and
    one that fails (it reads a policy the pod does not ask for, say) is left out: an expression
    that then reads it fails the test. With `wanted`, only those variables and the ones their
    expressions name are evaluated (cel-cpp stops a pod's worth of iterations the apiserver
    allows, in variables `wanted` does not need)."""
    expressions = {variable["name"]: variable["expression"] for variable in spec["variables"]}
    needed = set(expressions) if wanted is None else set()
    todo = list(wanted or ())
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo += re.findall(r"variables\.(\w+)", expressions[name])
    variables: dict[str, Any] = {}
    for name, expression in expressions.items():
        if name in needed:
            with contextlib.suppress(CelError):
                variables[name] = evaluate(expression, {**data, "variables": variables})
    return variables
