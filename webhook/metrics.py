"""Prometheus metrics of SPEC section 4, on a registry of their own (one per app)."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
LOOKUP_RESULTS = ("hit", "miss")


class Metrics:
    """Every metric the server exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reviews = ReviewCounts()
        self.registry.register(self.reviews)
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
        # serve --engine admission-policy | hybrid (webhook.sync)
        self.sync_errors = Counter(
            "sidecar_injector_admission_policy_sync_errors",
            "Syncs of the compiled admission policies that failed (the cluster keeps the last "
            "applied objects).", registry=self.registry)
        self.synced_at = Gauge(
            "sidecar_injector_admission_policy_synced_timestamp_seconds",
            "When the compiled admission policies were last applied (Unix time).",
            registry=self.registry)
        self.uncompiled = Gauge(
            "sidecar_injector_policies_uncompiled",
            "Served policies that cannot be compiled into admission policies.",
            registry=self.registry)

    def record(self, result: str, policies: tuple[str, ...], seconds: float) -> None:
        """Count one answered review and its duration."""
        self.reviews.record(result, policies, seconds)

    def looked_up(self, hit: bool) -> None:
        """Count one lookup in the cache of answers."""
        self.reviews.looked_up(hit)

    def drop_events(self, reason: str, count: int) -> None:
        """Count `count` Events not recorded, for `reason`."""
        self.events_dropped.labels(reason).inc(count)


class ReviewCounts(Collector):
    """The metrics every admission review moves (requests by result and policy, their duration,
    the cache of answers' lookups), kept in plain numbers and read by the registry as a collector.

    prometheus_client's Counter and Histogram take a lock per increment, five or six per review
    (a tenth of a cached answer's time). These are written and read on the event loop only (the
    server answers reviews and serves /metrics there), so they need none. The text they export is
    what a Counter and a Histogram would export, `_created` samples included."""

    def __init__(self) -> None:
        self.created = time.time()
        self.requests: dict[tuple[str, str], list[float]] = {}  # -> [count, created]
        self.buckets = [0] * (len(BUCKETS) + 1)  # per bucket, not cumulative; the last is +Inf
        self.seconds = 0.0
        self.lookups = [0, 0]  # in LOOKUP_RESULTS' order

    def record(self, result: str, policies: tuple[str, ...], seconds: float) -> None:
        requests = self.requests
        for policy in policies or ("",):
            counted = requests.get((result, policy))
            if counted is None:
                requests[(result, policy)] = [1, time.time()]
            else:
                counted[0] += 1
        self.buckets[bisect_left(BUCKETS, seconds)] += 1  # the first bound >= seconds
        self.seconds += seconds

    def looked_up(self, hit: bool) -> None:
        self.lookups[0 if hit else 1] += 1

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "sidecar_injector_requests", "Admission reviews answered, by result and policy.",
            labels=["result", "policy"])
        for (result, policy), (count, created) in list(self.requests.items()):
            requests.add_metric([result, policy], count, created)
        yield requests
        duration = HistogramMetricFamily(
            "sidecar_injector_request_duration_seconds", "Time to answer an admission review.")
        cumulative, total = [], 0
        for bound, count in zip((*map(repr, BUCKETS), "+Inf"), self.buckets, strict=True):
            total += count
            cumulative.append((bound, float(total)))
        duration.add_metric([], cumulative, self.seconds)
        duration.samples.append(Sample(f"{duration.name}_created", {}, self.created, None))
        yield duration
        lookups = CounterMetricFamily(
            "sidecar_injector_answer_cache_lookups",
            "Pod CREATE reviews answered from the cache of answers (hit: a pod equal to one "
            "answered before, such as another replica of one ReplicaSet) or rendered (miss).",
            labels=["result"])
        for result, count in zip(LOOKUP_RESULTS, self.lookups, strict=True):
            lookups.add_metric([result], count, self.created)
        yield lookups
