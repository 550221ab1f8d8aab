"""The Namespace watch and its shortcut, against the real apiserver: a namespace the watch has
not shown yet (here: the watch is stopped, so it never will) is read with one GET, and its
default policies and labels are then known, as the webhook needs for that namespace's first pods
(the server does the read before it decides; tests/unit/test_kube.py shows that wiring)."""

from __future__ import annotations

import uuid

import pytest

from tests.e2e.controlplane import ControlPlane
from tests.e2e.kube import Kube, wait_for
from webhook.kube import NamespaceDefaults

pytestmark = pytest.mark.e2e
POLICIES = "sidecar.company.com/policies"


def test_a_namespace_the_watch_has_not_shown_is_read_and_then_known(
    control_plane: ControlPlane, kube: Kube,
) -> None:
    watch = NamespaceDefaults(POLICIES, control_plane.kubeconfig)
    watch.start()
    wait_for(lambda: watch.connected, 30, "the Namespace watch to list namespaces")
    watch.stop()  # its next event ends it, unapplied
    name = kube.ensure_namespace(f"fresh-{uuid.uuid4().hex[:6]}", labels={"team": "a"},
                                 annotations={POLICIES: "logging, metrics-exporter"})
    assert watch.missing(name)
    assert watch.lookup(name) == ()  # what the webhook would have decided by, before
    watch.fetch(name)
    assert watch.lookup(name) == ("logging", "metrics-exporter")
    assert (watch.labels(name) or {}).get("team") == "a"
    assert not watch.missing(name)
    assert not watch.missing("kube-system")  # listed at the start: never read again
