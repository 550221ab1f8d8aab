"""Kubernetes label selectors (`matchLabels`, `matchExpressions`) on plain label maps, as
apimachinery's `LabelSelectorAsSelector` reads them: every term must hold; an empty selector
selects everything."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Operator = Literal["In", "NotIn", "Exists", "DoesNotExist"]


@dataclass(frozen=True, slots=True)
class Requirement:
    """One `matchExpressions` term."""

    key: str
    operator: Operator
    values: frozenset[str] = frozenset()

    def holds(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "Exists":
            return present
        if self.operator == "DoesNotExist":
            return not present
        if self.operator == "In":
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values  # NotIn


@dataclass(frozen=True, slots=True)
class Selector:
    """A compiled LabelSelector."""

    requirements: tuple[Requirement, ...]

    @classmethod
    def of(cls, match_labels: Mapping[str, str],
           match_expressions: Sequence[Requirement]) -> Selector:
        exact = tuple(Requirement(k, "In", frozenset({v})) for k, v in match_labels.items())
        return cls(exact + tuple(match_expressions))

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(requirement.holds(labels) for requirement in self.requirements)

    def contradiction(self) -> str | None:
        """Why no label map can match, or None when some can (a selector that matches nothing
        is valid in Kubernetes, and almost always a mistake)."""
        for key in dict.fromkeys(r.key for r in self.requirements):
            terms = [r for r in self.requirements if r.key == key]
            needed = [r for r in terms if r.operator in ("In", "Exists")]
            if needed and any(r.operator == "DoesNotExist" for r in terms):
                return f"{key!r} must be set and must not be set"
            chosen = [r.values for r in terms if r.operator == "In"]
            if not chosen:
                continue
            allowed = frozenset.intersection(*chosen).difference(
                *(r.values for r in terms if r.operator == "NotIn"))
            if not allowed:
                return f"no value of {key!r} meets all of {Selector(tuple(terms)).describe()}"
        return None

    def describe(self) -> str:
        """The selector in kubectl's `-l` syntax, for messages."""
        def term(r: Requirement) -> str:
            if r.operator == "Exists":
                return r.key
            if r.operator == "DoesNotExist":
                return f"!{r.key}"
            if r.operator == "In" and len(r.values) == 1:
                return f"{r.key}={next(iter(r.values))}"
            word = "in" if r.operator == "In" else "notin"
            return f"{r.key} {word} ({','.join(sorted(r.values))})"
        return ",".join(map(term, self.requirements)) or "everything"
