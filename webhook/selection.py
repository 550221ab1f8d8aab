"""Which policies apply to a pod: annotations, namespace defaults, global defaults -> a decision.

Decisions are values. `Inject` names the policies in order; `Skip` names a reason that is also the
metric label and the log field; `Deny` carries the message the client sees.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from webhook.keys import OPT_OUT, SYSTEM_NAMESPACES, USE_DEFAULTS, Keys


class SkipReason(StrEnum):
    """Why nothing was injected. The first seven are stamped into `P/status`; the rest are not."""

    OPTED_OUT = "opted-out"
    UNKNOWN_POLICY = "unknown-policy"
    NO_POLICIES = "no-policies"
    CONFLICT = "conflict"
    POD_SECURITY = "pod-security"
    NAMESPACE_NOT_ALLOWED = "namespace-not-allowed"
    UNSUPPORTED_OS = "unsupported-os"
    SYSTEM_NAMESPACE = "system-namespace"
    ALREADY_INJECTED = "already-injected"

    @property
    def stamped(self) -> bool:
        """Whether the pod gets a `P/status` saying so (a repeat or a system pod does not)."""
        return self not in (SkipReason.SYSTEM_NAMESPACE, SkipReason.ALREADY_INJECTED)


@dataclass(frozen=True, slots=True)
class Inject:
    """Inject these policies, in this order."""

    policies: tuple[str, ...]
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Skip:
    """Admit the pod without injecting, for `reason`."""

    reason: SkipReason
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Deny:
    """Refuse the pod; `message` names the pod, the policy and the field."""

    message: str
    warnings: tuple[str, ...] = ()


Decision = Inject | Skip | Deny


@dataclass(frozen=True, slots=True)
class Selection:
    """The settings selection depends on, fixed for a server's or a CLI run's lifetime."""

    keys: Keys = field(default_factory=Keys)
    default_policies: tuple[str, ...] = ()
    strict: bool = False
    own_namespace: str | None = None

    def untouched(self, namespace: str) -> bool:
        """System namespaces and the webhook's own are never touched nor stamped."""
        return namespace in SYSTEM_NAMESPACES or namespace == self.own_namespace


def parse_policy_list(text: str) -> tuple[str, ...]:
    """`" a, b ,a,,c"` -> `("a", "b", "c")`: trimmed, empty names and repeats dropped, in order."""
    names = (name.strip() for name in text.split(","))
    return tuple(dict.fromkeys(name for name in names if name))


def describe_pod(metadata: Mapping[str, object], namespace: str) -> str:
    """`namespace/name`, or `namespace/generateName*` for a pod the apiserver has not named yet."""
    name = metadata.get("name") or ""
    if not name and metadata.get("generateName"):
        name = f"{metadata['generateName']}*"
    return f"{namespace}/{name}" if namespace else str(name or "<unnamed>")


def select(
    metadata: Mapping[str, object],
    *,
    namespace: str,
    settings: Selection,
    known: Collection[str],
    namespace_policies: Sequence[str] | None = None,
) -> Decision:
    """Decide for a pod from its metadata; `namespace_policies` None means "not known"."""
    keys = settings.keys
    names = requested_policies(metadata, namespace=namespace, settings=settings,
                               namespace_policies=namespace_policies)
    if isinstance(names, Skip):
        return names
    unknown = [name for name in names if name not in known]
    if unknown:
        pod = describe_pod(metadata, namespace)
        listed = ", ".join(repr(name) for name in unknown)
        if settings.strict:
            return Deny(unknown_policy_denial(pod, listed, known))
        return Skip(SkipReason.UNKNOWN_POLICY, (unknown_policy_warning(pod, listed, keys),))
    return Inject(names)


def unknown_policy_denial(pod: str, listed: str, known: Collection[str]) -> str:
    """Why `--strict` denies a pod that names unknown policies (`listed`: their reprs)."""
    return (f"pod {pod}: unknown injection policy {listed}; "
            f"known policies: {', '.join(sorted(known)) or 'none'}")


def unknown_policy_warning(pod: str, listed: str, keys: Keys) -> str:
    """The warning for a pod skipped for naming unknown policies (`listed`: their reprs)."""
    return (f"pod {pod} was admitted without injection: unknown injection policy {listed} "
            f"(check the {keys.inject} annotation)")


def requested_policies(
    metadata: Mapping[str, object],
    *,
    namespace: str,
    settings: Selection,
    namespace_policies: Sequence[str] | None = None,
) -> tuple[str, ...] | Skip:
    """The policies a pod (or a pod template) asks for, in order, known or not; or the `Skip`
    that says why it asks for none."""
    keys = settings.keys
    if settings.untouched(namespace):
        return Skip(SkipReason.SYSTEM_NAMESPACE)
    annotations, labels = metadata.get("annotations"), metadata.get("labels")
    if _string_at(annotations, keys.status) is not None:
        return Skip(SkipReason.ALREADY_INJECTED)
    requested = _string_at(annotations, keys.inject)
    if _string_at(labels, keys.inject) == OPT_OUT or (
            requested or "").strip().lower() == OPT_OUT:
        return Skip(SkipReason.OPTED_OUT)
    if requested is None or requested.strip().lower() in USE_DEFAULTS:
        names = tuple(namespace_policies or ()) or settings.default_policies
    else:
        names = parse_policy_list(requested)
    return names or Skip(SkipReason.NO_POLICIES)


def _string_at(mapping: object, key: str) -> str | None:
    """`mapping[key]` when `mapping` is a map and that value a string (labels and annotations
    as a pod's author wrote them), else None."""
    value = mapping.get(key) if isinstance(mapping, dict) else None
    return value if isinstance(value, str) else None
