"""The HA soak (tests/e2e/soak.py) through the real apiserver: every pod creation succeeds and every
pod is injected exactly as a good policy set of that moment says, while replicas restart, the
certificate rotates twice and a bad policy set comes and goes. `SOAK_SECONDS` sets the length
(`make soak`: 180; `make e2e`: 30)."""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import POLICIES, STATUS
from tests.e2e.controlplane import K8S_VERSION, ControlPlane
from tests.e2e.kube import Kube
from tests.e2e.soak import (
    POLICY,
    Creations,
    Fault,
    create_pods,
    haproxy,
    policy_sets,
    replicas,
    restart,
    revision_of,
    rotate,
    run_faults,
)
from tests.e2e.webhookconfig import INJECT, instead_of_the_suites_webhook, webhook_configuration
from tests.integration.test_lifecycle import swap_configmap
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.e2e
SECONDS = float(os.environ.get("SOAK_SECONDS", "30"))
RATE = 8.0  # pods per second


def configmap(root: Path, logging: str, version: str, *, first: bool = False) -> None:
    files = {p.name: p.read_text() for p in POLICIES.glob("*.yaml")}
    files[f"{POLICY}.yaml"] = logging
    if first:
        root.mkdir()
    swap_configmap(root, files, version)


def test_pods_are_created_and_injected_through_restarts_rotations_and_a_bad_policy_set(
    control_plane: ControlPlane, kube: Kube, tmp_path: Path,
) -> None:
    shipped, good2, bad, good3 = policy_sets(POLICIES)
    good = {revision_of(text, tmp_path): name
            for name, text in (("shipped", shipped), ("good-2", good2), ("good-3", good3))}
    policies = tmp_path / "policies"
    configmap(policies, shipped, "v1", first=True)
    servers = replicas(tmp_path, policies, control_plane.kubeconfig, control_plane.logs)
    for server in servers:
        server.start()
    namespace = kube.ensure_namespace(f"soak-{int(time.time())}", labels={INJECT: "enabled"})
    try:
        with haproxy(tmp_path, servers, control_plane.logs / "haproxy.log") as port:
            config = webhook_configuration(url=f"https://127.0.0.1:{port}/mutate",
                                           ca_bundle=servers[0].ca_bundle,
                                           failure_policy="Fail", release="ha")
            with instead_of_the_suites_webhook(kube, config):
                time.sleep(2)  # the apiserver applies a webhook configuration asynchronously
                report = soak(kube, namespace, servers, policies, good2, bad, good3)
    finally:
        for server in servers:
            server.stop()
    created, faults, fault_errors = report
    pods = {p["metadata"]["name"]: p for p in kube.list_pods(namespace, "app=soak")}
    stamps = [json.loads((p["metadata"].get("annotations") or {}).get(STATUS, "null"))
              for p in pods.values()]
    unstamped = sum(stamp is None for stamp in stamps)
    by_revision: dict[str, int] = {}
    for stamp in stamps:
        if stamp is not None:
            name = good.get(stamp.get("revision"), f"unknown {stamp.get('revision')}")
            by_revision[name] = by_revision.get(name, 0) + 1
    latencies = sorted(created.latencies)
    print(f"\nHA soak on Kubernetes {K8S_VERSION}, {SECONDS:.0f}s at {RATE:.0f} pods/s: "
          f"{len(created.names)} created, {len(created.failures)} failed, {unstamped} unstamped; "
          f"by policy set: {by_revision}; creation p50 {statistics.median(latencies) * 1000:.0f} "
          f"ms, p99 {latencies[int(len(latencies) * 0.99) - 1] * 1000:.0f} ms, worst "
          f"{latencies[-1] * 1000:.0f} ms")
    print("faults:\n  " + "\n  ".join(faults))
    assert fault_errors == []
    assert created.failures == []
    assert len(pods) == len(created.names) > SECONDS * RATE * 0.8
    assert unstamped == 0
    assert set(by_revision) <= set(good.values()), by_revision
    assert {"good-2", "good-3"} <= set(by_revision), "a policy change never took effect"
    for server in servers:  # the bad set was seen, and refused, by every replica
        assert "policy reload refused" in server.log.read_text()
    for stamp in stamps:
        assert stamp["policies"] == [POLICY]


def soak(kube: Kube, namespace: str, servers: list[ServerProcess], policies: Path, good2: str,
         bad: str, good3: str) -> tuple[Creations, list[str], list[str]]:
    created = Creations()
    stop = threading.Event()
    creator = threading.Thread(target=create_pods, args=(kube, namespace, stop, RATE, created))
    faults = [
        Fault(0.10, "restart replica 0 (SIGTERM, start)", restart(servers[0])),
        Fault(0.25, "restart replica 1 (SIGTERM, start)", restart(servers[1])),
        Fault(0.40, "rotate the serving certificate", lambda: rotate(servers)),
        Fault(0.50, "policy set: good-2", lambda: configmap(policies, good2, "v2")),
        Fault(0.60, "policy set: bad (refused)", lambda: configmap(policies, bad, "v3")),
        Fault(0.75, "policy set: good-3", lambda: configmap(policies, good3, "v4")),
        Fault(0.85, "rotate the serving certificate again", lambda: rotate(servers)),
    ]
    done: list[str] = []
    errors: list[str] = []
    started = time.monotonic()
    creator.start()
    try:
        run_faults(faults, SECONDS, started, done, errors)
        time.sleep(max(0.0, started + SECONDS - time.monotonic()))
    finally:
        stop.set()
        creator.join()
    return created, done, errors
