"""What the Namespace watch keeps of each namespace: default policies and the Pod Security level
it enforces (an invalid level as restricted, as the apiserver has it, logged once)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from webhook.kube import NamespaceDefaults
from webhook.podsecurity import ENFORCE_LABEL, Level


def namespace(name: str, *, labels: dict[str, str] | None = None,
              annotations: dict[str, str] | None = None) -> SimpleNamespace:
    """A Namespace as the `kubernetes` client gives it (attributes, not dicts)."""
    return SimpleNamespace(metadata=SimpleNamespace(name=name, labels=labels,
                                                    annotations=annotations))


@pytest.fixture
def watch() -> NamespaceDefaults:
    defaults = NamespaceDefaults("sidecar.company.com/policies", None)
    defaults._synced.set()  # as after the first list
    return defaults


def test_a_namespace_gives_its_default_policies_and_its_enforced_level(
    watch: NamespaceDefaults,
) -> None:
    watch._apply({"type": "ADDED", "object": namespace(
        "shop", labels={ENFORCE_LABEL: "baseline"},
        annotations={"sidecar.company.com/policies": "logging, metrics-exporter"})})
    assert watch.lookup("shop") == ("logging", "metrics-exporter")
    assert watch.pod_security("shop") is Level.BASELINE


def test_a_removed_label_or_namespace_enforces_nothing(watch: NamespaceDefaults) -> None:
    def event(kind: str, level: str | None = None) -> dict[str, object]:
        labels = {ENFORCE_LABEL: level} if level else {}
        return {"type": kind, "object": namespace("shop", labels=labels)}

    watch._apply(event("ADDED", "restricted"))
    watch._apply(event("MODIFIED"))
    assert watch.pod_security("shop") is None
    watch._apply(event("MODIFIED", "baseline"))
    watch._apply(event("DELETED"))
    assert watch.pod_security("shop") is None


def test_an_invalid_level_is_enforced_as_restricted_and_logged_once(
    watch: NamespaceDefaults, caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="sidecar_injector.kube"):
        for _ in range(3):
            watch._apply({"type": "MODIFIED", "object": namespace(
                "legacy", labels={ENFORCE_LABEL: "Baseline"})})
    assert watch.pod_security("legacy") is Level.RESTRICTED
    assert len([r for r in caplog.records if "invalid Pod Security level" in r.message]) == 1


def test_nothing_is_known_before_the_first_list() -> None:
    defaults = NamespaceDefaults("sidecar.company.com/policies", None)
    assert defaults.pod_security("shop") is None
    assert defaults.lookup("shop") is None
