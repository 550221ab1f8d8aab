"""`serve --engine admission-policy | hybrid`: keep the cluster's compiled admission policies
those of the policy set being served.

One background thread compiles the served set (webhook.compiled, the same code as `policies
compile`) and server-side applies every object, as field manager `sidecar-injector`: at start,
within `poll` seconds of a policy reload (a ConfigMap update) or of the cluster version being
learned, and every `resync` seconds, which puts back an object someone changed or deleted. The
objects of the names it owns (`compiled.object_names`) that the settings no longer need are
deleted. A failed sync is logged, counted and retried on the next tick; the objects in the
cluster stay as they were, so pods keep being injected by the last good set.

Several replicas may sync at once: they apply the same objects, and the last one wins.

With an `owner` (a ClusterRole: the chart's own), every object names it in `ownerReferences`, so
the garbage collector deletes them once it is deleted (`helm uninstall`); while it is missing,
nothing is applied (a sync then fails: the release is going away, or was never complete).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from webhook.compiled import MINIMUM_MINOR, Compiled, Target, compile_policies, object_names
from webhook.errors import ClusterError
from webhook.kube import Cluster
from webhook.runtime import Runtime

log = logging.getLogger("sidecar_injector.sync")

#: seconds between syncs when nothing changed
RESYNC_SECONDS = 60.0
#: seconds between looks at the served policy set
POLL_SECONDS = 1.0


def unserved(cluster: Cluster) -> str | None:
    """Why `cluster` cannot run compiled policies (too old), or None when it can."""
    if "mutatingadmissionpolicies" in cluster.admission_resources():
        return None
    version = cluster.version()
    running = f"Kubernetes {version[0]}.{version[1]}" if version else "this cluster"
    return (f"{cluster.host} ({running}) does not serve MutatingAdmissionPolicy in "
            f"admissionregistration.k8s.io/v1: compiled policies need Kubernetes "
            f"1.{MINIMUM_MINOR} or newer; keep the webhook")


class AdmissionPolicySync:
    """Applies the served policy set, compiled for `target`, to `cluster`."""

    def __init__(self, runtime: Runtime, cluster: Cluster, target: Target, *,
                 owner: str | None = None, resync: float = RESYNC_SECONDS,
                 poll: float = POLL_SECONDS) -> None:
        self.runtime, self.cluster, self.target, self.owner = runtime, cluster, target, owner
        self.resync, self.poll = resync, poll
        self.status = "not synced"
        self.synced = threading.Event()  # set once a sync succeeded
        self._applied: tuple[object, object] | None = None  # the (policies, config) applied
        self._applied_at = 0.0
        self._reported: frozenset[str] = frozenset()  # uncompiled policies already logged
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="admission-policy-sync",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            served = (self.runtime.policies, self.runtime.config)
            due = time.monotonic() - self._applied_at >= self.resync
            if served != self._applied or due:
                self.sync()
            self._stop.wait(self.poll)

    def sync(self) -> bool:
        """Compile and apply the served set once; whether it worked."""
        policies, config = self.runtime.policies, self.runtime.config
        metrics = self.runtime.metrics
        self._applied_at = time.monotonic()  # a failure is retried at the next resync, or
        # sooner when the set changes: not in a tight loop
        try:
            why = unserved(self.cluster)
            if why is not None:
                raise ClusterError(why)
            compiled = compile_policies(policies, config, self.target)
            self._report(compiled)
            owners = self._owner_references()
            written = {(o["kind"], o["metadata"]["name"]) for o in compiled.objects}
            for obj in compiled.objects:  # each policy comes before its bindings
                self.cluster.apply_admission(
                    {**obj, "metadata": {**obj["metadata"], "ownerReferences": owners}}
                    if owners else obj)
            deleted = []
            for kind, names in reversed(object_names(self.target.name).items()):
                for name in names:  # bindings first, then their policies
                    if (kind, name) not in written and self.cluster.delete_admission(kind, name):
                        deleted.append(f"{kind}/{name}")
        except ClusterError as exc:
            metrics.sync_errors.inc()
            self.status = f"failed: {exc}"
            log.error("admission policies not synced; the cluster keeps what it has, retrying",
                      extra={"reason": str(exc), "retry_seconds": self.resync})
            return False
        changed = (policies, config) != self._applied
        self._applied = (policies, config)
        metrics.synced_at.set(time.time())
        if changed or deleted:
            log.info("admission policies synced", extra={
                "objects": [f"{o['kind']}/{o['metadata']['name']}" for o in compiled.objects],
                **({"deleted": deleted} if deleted else {}), "policies": policies.names()})
        self.status = "synced"
        self.synced.set()
        return True

    def _owner_references(self) -> list[dict[str, Any]]:
        """The `ownerReferences` of every object applied: the owner ClusterRole, if any."""
        if self.owner is None:
            return []
        role = self.cluster.cluster_role(self.owner)
        if role is None:
            raise ClusterError(
                f"ClusterRole {self.owner} (--engine-owner) not found: the compiled objects "
                "would outlive it, so none is applied (the release is being uninstalled, or "
                "that ClusterRole must be created)")
        return [{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                 "name": self.owner, "uid": role["metadata"]["uid"]}]

    def _report(self, compiled: Compiled) -> None:
        """Log the policies that could not be compiled, once per set of them."""
        self.runtime.metrics.uncompiled.set(len(compiled.uncompiled))
        names = frozenset(left.policy for left in compiled.uncompiled)
        if names and names != self._reported:
            log.error("policies that cannot be compiled: their pods get no injection from the "
                      "admission policies (engine hybrid leaves them to the webhook)",
                      extra={"uncompiled": [str(left) for left in compiled.uncompiled]})
        self._reported = names
