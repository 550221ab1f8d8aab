"""What the server serves from: the current policy set, the engine settings, namespace defaults,
metrics, the Event recorder. `decide` is the whole request pipeline after parsing: review ->
engine -> answer (a Pod CREATE is mutated; a workload CREATE or UPDATE only gets warnings)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from webhook.answers import HOLE, PATCH_HOLE, Answer, AnswerCache
from webhook.engine import EngineConfig, Outcome, mutate, workload_warnings
from webhook.events import EVENT_RESULTS, EventRecorder, Owner, Reason
from webhook.kube import NamespaceDefaults
from webhook.metrics import Metrics
from webhook.policy import PolicySet
from webhook.render import token_volume
from webhook.review import Review, allow, answer
from webhook.selection import describe_pod

log = logging.getLogger("sidecar_injector.mutate")


@dataclass
class Runtime:
    """Mutable serving state; `policies` is swapped whole on reload, never edited in place."""

    policies: PolicySet
    config: EngineConfig
    namespaces: NamespaceDefaults | None = None
    metrics: Metrics = field(default_factory=Metrics)
    tls_ready: bool = False
    events: EventRecorder | None = None
    answers: AnswerCache = field(default_factory=AnswerCache)

    def __post_init__(self) -> None:
        self.metrics.policies_loaded.set(len(self.policies))

    def learn_kube_version(self, version: tuple[int, int]) -> None:
        """Use the cluster's version for `sidecarMode: auto`, unless one was configured."""
        if self.config.kube_version is None:
            self.config = replace(self.config, kube_version=version)

    def swap(self, policies: PolicySet) -> None:
        """Serve `policies` from the next request on."""
        self.policies = policies
        self.metrics.policies_loaded.set(len(policies))

    def decide(self, review: Review) -> dict[str, Any]:
        """The AdmissionReview to send back for `review`; logs and counts it."""
        answer: dict[str, Any] = orjson.loads(self.respond(review))
        return answer

    def respond(self, review: Review, body: bytes | None = None) -> bytes:
        """`decide`'s answer as JSON text. Given the request's `body`, a Pod CREATE's answer
        comes from `answers` when the same pod was answered before (see webhook.answers)."""
        started = time.perf_counter()
        if review.is_workload_write:
            return orjson.dumps(self._check_workload(review, started))
        if not review.is_pod_create:
            self.metrics.record("passthrough", (), time.perf_counter() - started)
            return orjson.dumps(allow(review.uid))
        namespaces, namespace = self.namespaces, review.namespace
        # one state for the whole review: a reload or the namespace watch's thread may swap
        # either attribute meanwhile, and the cache must hold answers of the state it is bound to
        policies, config = self.policies, self.config
        ns_policies = namespaces.lookup(namespace) if namespaces is not None else None
        level = namespaces.pod_security(namespace) if namespaces is not None else None
        labels = namespaces.labels(namespace) if namespaces is not None else None
        spec = review.object.get("spec") if isinstance(review.object, dict) else None
        metadata = review.object.get("metadata") if isinstance(review.object, dict) else None
        volumes = spec.get("volumes") if isinstance(spec, dict) else None
        token = token_volume(volumes) if isinstance(volumes, list) else None
        key = None
        cached = None
        if body is not None:
            self.answers.bind(policies, config)
            key = self.answers.key(body, review.uid, token, (
                ns_policies, level, tuple(sorted(labels.items())) if labels is not None else None),
                metadata.get("managedFields") if isinstance(metadata, dict) else None)
            cached = self.answers.get(key)
            self.metrics.looked_up(cached is not None)
        if cached is None:
            outcome = mutate(review.object, namespace=namespace, policies=policies,
                             config=config, namespace_policies=ns_policies,
                             pod_security=level, namespace_labels=labels)
            cached = Answer.of(outcome, answer(HOLE, outcome, patch=PATCH_HOLE), token)
            if key is not None:
                self.answers.put(key, cached)
        outcome = cached.outcome
        payload = cached.for_pod(review.uid, token)
        elapsed = time.perf_counter() - started
        self.metrics.record(outcome.result, outcome.policies, elapsed)
        if self.events is not None and not review.dry_run:
            self._record_event(review, outcome)
        if log.isEnabledFor(logging.INFO):
            self._log(review, outcome, elapsed)
        return payload

    def validate(self, review: Review) -> dict[str, Any]:
        """The answer on the validating path: warnings for a workload, never a patch."""
        if review.is_workload_write:
            return self._check_workload(review, time.perf_counter())
        self.metrics.record("passthrough", (), 0.0)
        return allow(review.uid)

    def _check_workload(self, review: Review, started: float) -> dict[str, Any]:
        namespaces = self.namespaces
        warnings = workload_warnings(
            review.object, namespace=review.namespace, policies=self.policies, config=self.config,
            namespace_policies=namespaces.lookup(review.namespace) if namespaces else None,
            namespace_labels=namespaces.labels(review.namespace) if namespaces else None)
        elapsed = time.perf_counter() - started
        self.metrics.record("workload-checked", (), elapsed)
        if log.isEnabledFor(logging.INFO):
            metadata = review.object.get("metadata") if isinstance(review.object, dict) else None
            log.info("workload review", extra={
                "uid": review.uid, "namespace": review.namespace, "operation": review.operation,
                "workload": f"{review.kind} "
                            f"{describe_pod(metadata if isinstance(metadata, dict) else {}, '')}",
                "result": "workload-checked", "dry_run": review.dry_run,
                **({"warnings": list(warnings)} if warnings else {}),
                "duration_ms": round(elapsed * 1000, 3),
            })
        return allow(review.uid, warnings)

    def _record_event(self, review: Review, outcome: Outcome) -> None:
        """An Event on the pod's owner when a policy it asked for was not applied."""
        reason = EVENT_RESULTS.get(outcome.result)
        if reason is None and outcome.policies and outcome.warnings:
            reason = Reason.SKIPPED  # injected, but some asked-for policy left out
        if reason is None or self.events is None:
            return
        owner = Owner.of(review.object, review.namespace)
        if owner is not None:
            message = outcome.message if reason is Reason.DENIED else "; ".join(outcome.warnings)
            self.events.record(owner, reason, message or outcome.result)

    def _log(self, review: Review, outcome: Outcome, elapsed: float) -> None:
        metadata = review.object.get("metadata") if isinstance(review.object, dict) else None
        log.info("admission review", extra={
            "uid": review.uid, "namespace": review.namespace,
            "pod": describe_pod(metadata if isinstance(metadata, dict) else {}, ""),
            "policies": list(outcome.policies), "result": outcome.result,
            "allowed": outcome.allowed, "dry_run": review.dry_run,
            **({"warnings": list(outcome.warnings)} if outcome.warnings else {}),
            "duration_ms": round(elapsed * 1000, 3),
        })
