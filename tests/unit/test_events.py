"""The Event recorder: Events on a pod's owner, aggregated per owner and reason, at most one API
call per owner and reason per interval, a bounded queue whose overflow is counted, API failures
counted and logged once per interval; and the server's use of it (which pods make an Event)."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.conftest import SHIPPED_POLICIES
from webhook.engine import EngineConfig
from webhook.events import Dropped, EventRecorder, EventSinkError, Owner, Reason
from webhook.policy import load_policy_dir
from webhook.review import Review
from webhook.runtime import Runtime

RS = Owner("apps/v1", "ReplicaSet", "web-7d9f", "uid-rs", "shop")
JOB = Owner("batch/v1", "Job", "migrate", "uid-job", "shop")
KEY = "sidecar.company.com/inject"


class FakeSink:
    """Records each call; with `fail`, every call raises EventSinkError with `status` (None: the
    apiserver did not answer); `fail_patch` makes patches fail with that status."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.fail = False
        self.status: int | None = None
        self.fail_patch: int | None = None

    def create(self, namespace: str, body: dict[str, Any]) -> None:
        self.calls.append(("create", namespace, body))
        if self.fail:
            raise EventSinkError(self.status, f"{self.status} refused")

    def patch(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        self.calls.append(("patch", f"{namespace}/{name}", body))
        if self.fail:
            raise EventSinkError(self.status, f"{self.status} refused")
        if self.fail_patch is not None:
            raise EventSinkError(self.fail_patch, f"{self.fail_patch} refused")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorded:
    """A recorder on a fake sink and clock, and the drops it counted."""

    def __init__(self, **kwargs: Any) -> None:
        self.sink = FakeSink()
        self.clock = Clock()
        self.dropped: Counter[str] = Counter()
        self.recorder = EventRecorder(
            self.sink, on_drop=self._drop, instance="webhook-0", interval=60,
            clock=self.clock, now=lambda: datetime(2026, 12, 1, 12, 0, tzinfo=UTC), **kwargs)

    def _drop(self, reason: Dropped, count: int) -> None:
        self.dropped[reason.value] += count


@pytest.fixture
def rec() -> Recorded:
    return Recorded()


def test_the_first_occurrence_creates_a_warning_event_on_the_owner(rec: Recorded) -> None:
    rec.recorder.record(RS, Reason.SKIPPED, "pod shop/web-7d9f-*: unknown injection policy 'x'")
    rec.recorder.step()
    ((call, namespace, body),) = rec.sink.calls
    assert (call, namespace) == ("create", "shop")
    assert body["involvedObject"] == {"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                      "name": "web-7d9f", "namespace": "shop", "uid": "uid-rs"}
    assert body["metadata"]["name"].startswith("web-7d9f.")
    assert (body["reason"], body["type"], body["count"]) == ("InjectionSkipped", "Warning", 1)
    assert body["message"] == "pod shop/web-7d9f-*: unknown injection policy 'x'"
    assert body["firstTimestamp"] == body["lastTimestamp"] == "2026-12-01T12:00:00Z"
    assert (body["source"], body["reportingInstance"]) == ({"component": "sidecar-injector"},
                                                           "webhook-0")


def test_occurrences_within_the_interval_are_aggregated_into_one_patch(rec: Recorded) -> None:
    rec.recorder.record(RS, Reason.SKIPPED, "first")
    rec.recorder.step()
    rec.clock.now += 10
    rec.recorder.record(RS, Reason.SKIPPED, "second")
    rec.recorder.record(RS, Reason.SKIPPED, "third")
    rec.recorder.step()
    assert len(rec.sink.calls) == 1  # rate-limited: nothing yet
    rec.clock.now += 50
    rec.recorder.step()
    created, (call, where, patch) = rec.sink.calls
    assert (call, where) == ("patch", f"shop/{created[2]['metadata']['name']}")
    assert (patch["count"], patch["message"]) == (3, "third")
    rec.clock.now += 60
    rec.recorder.step()
    assert len(rec.sink.calls) == 2  # nothing new, no call


def test_each_owner_and_reason_is_a_series_of_its_own(rec: Recorded) -> None:
    for owner, reason in [(RS, Reason.SKIPPED), (RS, Reason.DENIED), (JOB, Reason.SKIPPED),
                          (RS, Reason.SKIPPED)]:
        rec.recorder.record(owner, reason, "m")
    rec.recorder.step()
    created = [(body["involvedObject"]["name"], body["reason"], body["count"])
               for call, _, body in rec.sink.calls if call == "create"]
    assert sorted(created) == [("migrate", "InjectionSkipped", 1),
                               ("web-7d9f", "InjectionDenied", 1),
                               ("web-7d9f", "InjectionSkipped", 2)]


def test_a_full_queue_drops_and_counts_without_blocking() -> None:
    rec = Recorded(queue_size=2)
    for _ in range(5):
        rec.recorder.record(RS, Reason.SKIPPED, "m")  # returns at once, never raises
    assert rec.dropped == {"queue-full": 3}
    rec.recorder.step()
    ((_, _, body),) = rec.sink.calls
    assert body["count"] == 2


@pytest.mark.parametrize(("status", "reason"), [
    pytest.param(403, "forbidden", id="forbidden"),
    pytest.param(500, "api-error", id="api-error"),
    pytest.param(None, "api-error", id="unreachable"),
])
def test_a_refused_call_is_counted_and_made_at_most_once_per_interval(
    rec: Recorded, status: int | None, reason: str,
) -> None:
    rec.sink.fail, rec.sink.status = True, status
    rec.recorder.record(RS, Reason.SKIPPED, "m")
    rec.recorder.step()
    rec.clock.now += 5
    for _ in range(3):
        rec.recorder.record(RS, Reason.SKIPPED, "m")
    rec.recorder.step()
    assert len(rec.sink.calls) == 1
    assert rec.dropped == {reason: 4}
    rec.clock.now += 60
    rec.recorder.record(RS, Reason.SKIPPED, "m")
    rec.recorder.step()
    assert len(rec.sink.calls) == 2
    assert rec.dropped == {reason: 5}


def test_api_failures_are_logged_once_per_interval(rec: Recorded,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    rec.sink.fail, rec.sink.status = True, 403
    caplog.set_level(logging.WARNING, "sidecar_injector.events")
    for index in range(20):
        rec.recorder.record(Owner("apps/v1", "ReplicaSet", f"rs-{index}", f"u{index}", "shop"),
                            Reason.SKIPPED, "m")
    rec.recorder.step()
    assert len(rec.sink.calls) == 20
    assert len(caplog.records) == 1
    rec.clock.now += 60
    rec.recorder.record(RS, Reason.SKIPPED, "m")
    rec.recorder.step()
    assert len(caplog.records) == 2
    assert caplog.records[1].__dict__["failures_not_logged"] == 19


def test_an_expired_event_is_created_anew(rec: Recorded) -> None:
    rec.recorder.record(RS, Reason.SKIPPED, "m")
    rec.recorder.step()
    rec.sink.fail_patch = 404
    rec.clock.now += 60
    rec.recorder.record(RS, Reason.SKIPPED, "m")
    rec.recorder.step()
    assert [call for call, _, _ in rec.sink.calls] == ["create", "patch", "create"]
    assert rec.sink.calls[2][2]["count"] == 1
    assert rec.dropped == {}


def test_too_many_owners_forget_the_idle_ones_first() -> None:
    rec = Recorded(max_series=2)
    rec.recorder.record(RS, Reason.SKIPPED, "m")
    rec.recorder.record(JOB, Reason.SKIPPED, "m")
    rec.recorder.step()
    rec.recorder.record(Owner("apps/v1", "StatefulSet", "db", "u-db", "shop"), Reason.SKIPPED, "m")
    rec.recorder.step()
    assert len(rec.sink.calls) == 3
    assert rec.dropped == {}


def test_what_is_not_sent_at_stop_is_counted_as_dropped(rec: Recorded) -> None:
    rec.recorder.record(RS, Reason.SKIPPED, "m")
    rec.recorder.step()
    rec.recorder.record(RS, Reason.SKIPPED, "m")  # rate-limited: pending
    rec.recorder.record(JOB, Reason.SKIPPED, "m")  # still queued
    rec.recorder.stop()
    assert rec.dropped == {"shutdown": 2}


@pytest.mark.parametrize(("references", "owner"), [
    pytest.param([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f",
                   "uid": "uid-rs", "controller": True}], RS, id="controller"),
    pytest.param([{"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": "u"},
                  {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f",
                   "uid": "uid-rs", "controller": True}], RS, id="controller-among-others"),
    pytest.param([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web",
                   "uid": "u"}], None, id="not-a-controller"),
    pytest.param([{"kind": "ReplicaSet", "name": "web", "controller": True}], None,
                 id="incomplete"),
    pytest.param(None, None, id="no-owner"),
])
def test_the_owner_is_the_pods_controller(references: Any, owner: Owner | None) -> None:
    pod = {"metadata": {"generateName": "web-7d9f-", "ownerReferences": references}}
    assert Owner.of(pod, "shop") == owner


# ---------------------------------------------------------------------------------------------
# the server: which admissions make an Event


def pod_review(annotations: dict[str, str], *, owned: bool = True, dry_run: bool = False,
               containers: tuple[str, ...] = ("app",)) -> Review:
    metadata: dict[str, Any] = {"generateName": "web-7d9f-", "annotations": annotations}
    if owned:
        metadata["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                        "name": "web-7d9f", "uid": "uid-rs", "controller": True}]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
           "spec": {"containers": [{"name": name, "image": "app:1"} for name in containers]}}
    return Review(uid="u1", operation="CREATE", kind="Pod", group="", namespace="shop", name="",
                  sub_resource="", dry_run=dry_run, object=pod)


@pytest.fixture
def runtime(rec: Recorded) -> Runtime:
    runtime = Runtime(load_policy_dir(SHIPPED_POLICIES), EngineConfig())
    runtime.events = rec.recorder
    return runtime


def events(rec: Recorded) -> list[tuple[str, int, str]]:
    rec.recorder.step()
    return [(body["reason"], body["count"], body["message"]) for _, _, body in rec.sink.calls]


def test_a_skipped_pod_makes_an_event_on_its_replicaset(runtime: Runtime, rec: Recorded) -> None:
    answer = runtime.decide(pod_review({KEY: "nope"}))
    ((reason, count, message),) = events(rec)
    assert (reason, count) == ("InjectionSkipped", 1)
    assert message == answer["response"]["warnings"][0]
    assert "unknown injection policy 'nope'" in message


def test_a_denied_pod_makes_an_injection_denied_event(runtime: Runtime, rec: Recorded) -> None:
    answer = runtime.decide(pod_review({KEY: "logging"}, containers=("app", "logging-agent")))
    assert answer["response"]["allowed"] is False
    ((reason, _, message),) = events(rec)
    assert reason == "InjectionDenied"
    assert message == answer["response"]["status"]["message"]


@pytest.mark.parametrize("review", [
    pytest.param(pod_review({KEY: "logging"}), id="injected"),
    pytest.param(pod_review({KEY: "false"}), id="opted-out"),
    pytest.param(pod_review({KEY: "nope"}, owned=False), id="no-owner"),
    pytest.param(pod_review({KEY: "nope"}, dry_run=True), id="dry-run"),
])
def test_other_admissions_make_no_event(runtime: Runtime, rec: Recorded, review: Review) -> None:
    runtime.decide(review)
    assert events(rec) == []


def test_events_never_change_the_answer_even_when_dropped(rec: Recorded) -> None:
    plain = Runtime(load_policy_dir(SHIPPED_POLICIES), EngineConfig())
    full = Recorded(queue_size=1)
    full.recorder.record(RS, Reason.SKIPPED, "m")  # the queue is full from here on
    with_events = Runtime(load_policy_dir(SHIPPED_POLICIES), EngineConfig())
    with_events.events = full.recorder
    review = pod_review({KEY: "nope"})
    assert with_events.decide(review) == plain.decide(review)
    assert full.dropped == {"queue-full": 1}
