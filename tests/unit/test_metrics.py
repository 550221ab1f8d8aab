"""The per-review metrics export what prometheus_client's own Counter and Histogram would."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from webhook.metrics import BUCKETS, Metrics

RESULTS = st.sampled_from(["injected", "denied", "opted-out", "passthrough"])
POLICIES = st.lists(st.sampled_from(["logging", "metrics-exporter", "auth-proxy"]), max_size=3,
                    unique=True).map(tuple)
SECONDS = st.one_of(st.sampled_from(BUCKETS), st.floats(0, 3, allow_nan=False))
FAMILIES = ("sidecar_injector_requests", "sidecar_injector_request_duration_seconds",
            "sidecar_injector_answer_cache_lookups")
REVIEWS = st.lists(st.tuples(RESULTS, POLICIES, SECONDS), max_size=30)


def _without_created(text: bytes) -> list[str]:
    return [line for line in text.decode().splitlines() if not re.match(r"^\w+_created\b", line)]


def _reference(reviews: list[tuple[str, tuple[str, ...], float]],
               lookups: list[bool]) -> CollectorRegistry:
    """The same reviews counted by prometheus_client's own metrics (what the server used before)."""
    registry = CollectorRegistry()
    requests = Counter("sidecar_injector_requests",
                       "Admission reviews answered, by result and policy.",
                       ["result", "policy"], registry=registry)
    duration = Histogram("sidecar_injector_request_duration_seconds",
                         "Time to answer an admission review.", buckets=BUCKETS,
                         registry=registry)
    answers = Counter(
        "sidecar_injector_answer_cache_lookups",
        "Pod CREATE reviews answered from the cache of answers (hit: a pod equal to one "
        "answered before, such as another replica of one ReplicaSet) or rendered (miss).",
        ["result"], registry=registry)
    hits, misses = answers.labels("hit"), answers.labels("miss")
    for result, policies, seconds in reviews:
        for policy in policies or ("",):
            requests.labels(result, policy).inc()
        duration.observe(seconds)
    for hit in lookups:
        (hits if hit else misses).inc()
    return registry


@given(REVIEWS, st.lists(st.booleans(), max_size=10))
def test_the_export_is_what_a_counter_and_a_histogram_would_give(
        reviews: list[tuple[str, tuple[str, ...], float]], lookups: list[bool]) -> None:
    metrics = Metrics()
    for result, policies, seconds in reviews:
        metrics.record(result, policies, seconds)
    for hit in lookups:
        metrics.looked_up(hit)
    ours = _without_created(generate_latest(metrics.registry))
    reference = _without_created(generate_latest(_reference(reviews, lookups)))
    assert [line for line in ours if any(family in line for family in FAMILIES)] == reference


def test_every_series_has_its_created_sample() -> None:
    metrics = Metrics()
    metrics.record("injected", ("logging",), 0.002)
    registry = metrics.registry
    for name, labels in (("sidecar_injector_requests_created",
                          {"result": "injected", "policy": "logging"}),
                         ("sidecar_injector_request_duration_seconds_created", {}),
                         ("sidecar_injector_answer_cache_lookups_created", {"result": "hit"})):
        assert registry.get_sample_value(name, labels) is not None, name
