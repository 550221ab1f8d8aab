"""The offline `inject`: run the engine over manifests, as `istioctl kube-inject` does.

Reads every document, finds each pod or pod template (`workloads`), calls `engine.mutate` (or
`engine.unmutate` for `--remove`) and applies the patch with `jsonpatch`, so the output is exactly
what the webhook's patch would make; for a workload, also `engine.workload_warnings` (what the
webhook warns about when it is applied). Objects it does not know pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonpatch

from webhook.engine import EngineConfig, Outcome, mutate, unmutate, workload_warnings
from webhook.errors import InputError
from webhook.podsecurity import Level
from webhook.policy import PolicySet
from webhook.workloads import PodSlot, pod_slots
from webhook.yamlsource import dump_documents, load_documents


@dataclass(slots=True)
class Report:
    """The injected YAML, the lines for stderr, and whether anything was denied."""

    output: str = ""
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: each pod found, by its label (`Kind/name`), and the engine's outcome for it
    outcomes: list[tuple[str, Outcome]] = field(default_factory=list)
    #: the objects of `output`, as data
    objects: list[dict[str, Any]] = field(default_factory=list)

    @property
    def denied(self) -> bool:
        return bool(self.errors)


def inject_text(
    text: str,
    *,
    source: str,
    policies: PolicySet,
    config: EngineConfig,
    namespace_policies: Sequence[str] | None = None,
    pod_security: Level | None = None,
    namespace_labels: Mapping[str, str] | None = None,
    remove: bool = False,
    namespace: str = "",
) -> Report:
    """Inject (or remove) every pod in the YAML `text`; InputError if it cannot be read.
    `namespace` is the one of objects that name none (kubectl's `--namespace`)."""
    report = Report()
    values = []
    for index, document in enumerate(load_documents(text, source), start=1):
        if not isinstance(document.value, dict):
            raise InputError(f"{source}:{document.line}: document {index} is a "
                             f"{type(document.value).__name__}, not a Kubernetes object")
        obj: dict[str, Any] = document.value
        for slot in pod_slots(obj):
            where = f"{source}:{document.line}: {slot.label}"
            pod = slot.pod
            if remove:
                _remove(slot, config, where, report, namespace)
                continue
            report.warnings.extend(f"{where}: {w}" for w in workload_warnings(
                slot.owner, namespace=slot.namespace or namespace, policies=policies,
                config=config, namespace_policies=namespace_policies,
                namespace_labels=namespace_labels, template_checks=False))  # mutate says the rest
            outcome = mutate(pod, namespace=slot.namespace or namespace, policies=policies,
                             config=config,
                             namespace_policies=namespace_policies, pod_security=pod_security,
                             namespace_labels=namespace_labels)
            report.outcomes.append((slot.label, outcome))
            report.warnings.extend(f"{where}: {w}" for w in outcome.warnings)
            if not outcome.allowed:
                report.errors.append(f"{where}: denied: {outcome.message}")
            elif outcome.operations:
                slot.replace(jsonpatch.apply_patch(pod, outcome.patch))
        values.append(obj)
    report.objects = values
    report.output = dump_documents(values) if values else ""
    return report


def _remove(slot: PodSlot, config: EngineConfig, where: str, report: Report,
            namespace: str) -> None:
    pod = slot.pod
    status_key = config.selection.keys.status
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    if not isinstance(annotations, dict) or status_key not in annotations:
        report.warnings.append(f"{where}: not injected ({status_key} is absent); left unchanged")
        return
    try:
        patch = unmutate(pod, namespace=slot.namespace or namespace, config=config)
    except ValueError as exc:
        report.errors.append(f"{where}: cannot remove the injection: {exc}")
        return
    slot.replace(jsonpatch.apply_patch(pod, patch))
