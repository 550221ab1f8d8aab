"""Prometheus metrics of SPEC section 4, on a registry of their own (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class Metrics:
    """Every metric the server exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[str, str], Counter] = {}
        self.requests = Counter(
            "sidecar_injector_requests", "Admission reviews answered, by result and policy.",
            ["result", "policy"], registry=self.registry)
        self.duration = Histogram(
            "sidecar_injector_request_duration_seconds", "Time to answer an admission review.",
            buckets=BUCKETS, registry=self.registry)
        self.policies_loaded = Gauge(
            "sidecar_injector_policies_loaded", "Policies in the set being served.",
            registry=self.registry)
        self.reload_errors = Counter(
            "sidecar_injector_policy_reload_errors", "Policy reloads refused (last good set kept).",
            registry=self.registry)
        self.cert_expiry = Gauge(
            "sidecar_injector_cert_expiry_timestamp_seconds",
            "When the serving certificate expires (Unix time).", registry=self.registry)
        self.events_dropped = Counter(
            "sidecar_injector_events_dropped",
            "Events on pod owners not recorded, by why (queue-full, forbidden, api-error, "
            "too-many-owners, shutdown); admissions never wait for Events.",
            ["reason"], registry=self.registry)
        for reason in ("queue-full", "forbidden", "api-error"):
            self.events_dropped.labels(reason)
        answers = Counter(
            "sidecar_injector_answer_cache_lookups",
            "Pod CREATE reviews answered from the cache of answers (hit: a pod equal to one "
            "answered before, such as another replica of one ReplicaSet) or rendered (miss).",
            ["result"], registry=self.registry)
        self.answer_hits, self.answer_misses = answers.labels("hit"), answers.labels("miss")

    def record(self, result: str, policies: tuple[str, ...], seconds: float) -> None:
        """Count one answered review and its duration."""
        for policy in policies or ("",):
            counter = self._children.get((result, policy))
            if counter is None:
                counter = self._children[(result, policy)] = self.requests.labels(result, policy)
            counter.inc()
        self.duration.observe(seconds)

    def drop_events(self, reason: str, count: int) -> None:
        """Count `count` Events not recorded, for `reason`."""
        self.events_dropped.labels(reason).inc(count)
