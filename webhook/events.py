"""Kubernetes Events on a pod's owner when its injection is skipped or denied, off the request path.

A pod being created has no UID yet, and its creator (a ReplicaSet controller) never shows the
admission warnings to anyone, so the Event goes on the owner its `ownerReferences` name as
controller, where `kubectl describe replicaset` (or job, statefulset, daemonset) shows it:

    request path:  Runtime -> EventRecorder.record: a non-blocking put on a bounded queue
                   (a full queue: the Event is dropped and counted, the admission goes on)
    one thread:    drain the queue -> aggregate per owner and reason -> at most one API call per
                   owner and reason per `interval`: create a core/v1 Event, later patch its
                   `count`, `lastTimestamp` and `message`; a failed call drops (and counts) what
                   it carried, and what arrives for that owner and reason until the interval is
                   over; failures are logged once per interval, not once per pod

The API is behind `EventSink` (kube.py implements it with the `kubernetes` client), so this
module does no I/O of its own and its tests drive `step` with a fake sink and a fake clock.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

log = logging.getLogger("sidecar_injector.events")

#: Seconds between two API calls for one owner and reason (what arrives between is aggregated).
INTERVAL = 60.0
#: Occurrences the queue holds before new ones are dropped.
QUEUE_SIZE = 1000
#: Owner-and-reason series remembered at most (the idle ones go first).
MAX_SERIES = 10_000
#: Seconds an idle series is remembered: the apiserver's default Event TTL (`--event-ttl`, 1 h),
#: after which its Event is gone and a patch would find nothing.
FORGET_AFTER = 3600.0
#: Longest Event message sent (the events.k8s.io limit for a note).
MAX_MESSAGE = 1024
COMPONENT = "sidecar-injector"


class Reason(StrEnum):
    """The Event's `reason`."""

    SKIPPED = "InjectionSkipped"
    DENIED = "InjectionDenied"


class Dropped(StrEnum):
    """Why an Event was not recorded: the `reason` label of the dropped-events metric."""

    QUEUE_FULL = "queue-full"
    FORBIDDEN = "forbidden"
    API_ERROR = "api-error"
    TOO_MANY_OWNERS = "too-many-owners"
    SHUTDOWN = "shutdown"


@dataclass(frozen=True, slots=True)
class Owner:
    """The object an Event is about: a pod's controller."""

    api_version: str
    kind: str
    name: str
    uid: str
    namespace: str

    @classmethod
    def of(cls, pod: Any, namespace: str) -> Owner | None:
        """The pod's controller from `metadata.ownerReferences`; None for a pod nobody owns."""
        metadata = pod.get("metadata") if isinstance(pod, dict) else None
        owners = metadata.get("ownerReferences") if isinstance(metadata, dict) else None
        for ref in owners if isinstance(owners, list) else []:
            if not isinstance(ref, dict) or ref.get("controller") is not True:
                continue
            api_version, kind, name, uid = (ref.get(key) for key in (
                "apiVersion", "kind", "name", "uid"))
            if (isinstance(api_version, str) and isinstance(kind, str) and isinstance(name, str)
                    and isinstance(uid, str) and api_version and kind and name and uid
                    and namespace):
                return cls(api_version, kind, name, uid, namespace)
        return None

    def reference(self) -> dict[str, str]:
        """The Event's `involvedObject`."""
        return {"apiVersion": self.api_version, "kind": self.kind, "name": self.name,
                "namespace": self.namespace, "uid": self.uid}


class EventSinkError(Exception):
    """The API refused or failed an Event call; `status` is its HTTP status, if it answered."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status


class EventSink(Protocol):
    """Where Events go: core/v1 create and merge-patch; failures raise EventSinkError."""

    def create(self, namespace: str, body: dict[str, Any]) -> None: ...

    def patch(self, namespace: str, name: str, body: dict[str, Any]) -> None: ...


OnDrop = Callable[[Dropped, int], None]


@dataclass(frozen=True, slots=True)
class _Occurrence:
    owner: Owner
    reason: Reason
    message: str
    at: datetime


@dataclass(slots=True)
class _Series:
    """What is known about one owner and reason: its Event, and what is waiting to be sent."""

    owner: Owner
    reason: Reason
    message: str = ""
    pending: int = 0  # occurrences not sent yet
    pending_since: datetime | None = None
    last_seen: datetime | None = None
    name: str | None = None  # the Event, once created
    count: int = 0  # occurrences that Event counts
    called_at: float | None = None  # clock time of the last API call
    failed: Dropped | None = None  # why the last call failed


class EventRecorder:
    """Aggregates and rate-limits Events for owners; `record` never blocks and never raises."""

    def __init__(self, sink: EventSink, *, on_drop: OnDrop, instance: str,
                 interval: float = INTERVAL, queue_size: int = QUEUE_SIZE,
                 max_series: int = MAX_SERIES, clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.sink = sink
        self.on_drop = on_drop
        self.instance = instance[:128]
        self.interval = interval
        self.max_series = max_series
        self.clock = clock
        self.now = now
        self._queue: queue.Queue[_Occurrence] = queue.Queue(maxsize=queue_size)
        self._series: dict[tuple[Owner, Reason], _Series] = {}
        self._logged_at: float | None = None
        self._unlogged = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def record(self, owner: Owner, reason: Reason, message: str) -> None:
        """Queue one occurrence (the request path's only call); a full queue drops it."""
        try:
            self._queue.put_nowait(_Occurrence(owner, reason, message[:MAX_MESSAGE], self.now()))
        except queue.Full:
            self.on_drop(Dropped.QUEUE_FULL, 1)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="events", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread; what was not sent yet is counted as dropped."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        unsent = self._queue.qsize() + sum(s.pending for s in self._series.values())
        if unsent:
            self.on_drop(Dropped.SHUTDOWN, unsent)

    def step(self, wait: float = 0.0) -> None:
        """Take what is queued (waiting up to `wait` seconds for the first), then make the API
        calls that are due."""
        try:
            first = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
        except queue.Empty:
            pass
        else:
            self._add(first)
            while True:
                try:
                    self._add(self._queue.get_nowait())
                except queue.Empty:
                    break
        self._flush()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step(self._wait())
            except Exception:  # a bug here must not stop the thread, nor reach a request
                log.exception("event recorder failed; going on")
                self._stop.wait(1.0)

    def _wait(self) -> float:
        """Seconds until the next pending series is due, at most 1 (so `stop` is seen soon)."""
        now = self.clock()
        due = [s.called_at + self.interval - now for s in self._series.values()
               if s.pending and s.called_at is not None]
        return min([1.0, *due]) if due else 1.0

    def _add(self, occurrence: _Occurrence) -> None:
        key = (occurrence.owner, occurrence.reason)
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= self.max_series and not self._forget(force=True):
                self.on_drop(Dropped.TOO_MANY_OWNERS, 1)
                return
            series = self._series[key] = _Series(occurrence.owner, occurrence.reason)
        if series.failed is not None and not self._due(series):
            self.on_drop(series.failed, 1)  # the API just failed for it: no point in waiting
            return
        series.pending += 1
        series.message = occurrence.message
        series.last_seen = occurrence.at
        if series.pending_since is None:
            series.pending_since = occurrence.at

    def _due(self, series: _Series) -> bool:
        return series.called_at is None or self.clock() - series.called_at >= self.interval

    def _flush(self) -> None:
        for series in list(self._series.values()):
            if series.pending and self._due(series):
                self._send(series)
        self._forget()

    def _forget(self, *, force: bool = False) -> bool:
        """Drop idle series older than FORGET_AFTER (with `force`, the oldest idle one if none
        is that old); whether any went."""
        now = self.clock()
        idle = sorted(((s.called_at, key) for key, s in self._series.items()
                       if not s.pending and s.called_at is not None), key=lambda pair: pair[0])
        old = [key for at, key in idle if now - at >= FORGET_AFTER]
        if not old and force and idle:
            old = [idle[0][1]]
        for key in old:
            del self._series[key]
        return bool(old)

    def _send(self, series: _Series) -> None:
        series.called_at = self.clock()
        try:
            if series.name is not None:
                try:
                    self._patch(series)
                except EventSinkError as exc:
                    if exc.status != 404:  # 404: the Event expired; make a new one
                        raise
                    series.name = None
            if series.name is None:
                self._create(series)
        except EventSinkError as exc:
            series.failed = Dropped.FORBIDDEN if exc.status == 403 else Dropped.API_ERROR
            self.on_drop(series.failed, series.pending)
            self._log_failure(series, exc)
        else:
            series.failed = None
        series.pending, series.pending_since = 0, None

    def _create(self, series: _Series) -> None:
        owner = series.owner
        name = f"{owner.name[:200].rstrip('.-')}.{uuid.uuid4().hex[:16]}"
        first = _timestamp(series.pending_since or self.now())
        self.sink.create(owner.namespace, {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": owner.namespace},
            "involvedObject": owner.reference(),
            "reason": series.reason.value, "message": series.message, "type": "Warning",
            "count": series.pending, "firstTimestamp": first,
            "lastTimestamp": _timestamp(series.last_seen or self.now()),
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT, "reportingInstance": self.instance,
        })
        series.name, series.count = name, series.pending

    def _patch(self, series: _Series) -> None:
        assert series.name is not None
        count = series.count + series.pending
        self.sink.patch(series.owner.namespace, series.name, {
            "count": count, "message": series.message,
            "lastTimestamp": _timestamp(series.last_seen or self.now()),
        })
        series.count = count

    def _log_failure(self, series: _Series, exc: EventSinkError) -> None:
        """Log an API failure at most once per interval, with how many went unlogged."""
        now = self.clock()
        if self._logged_at is not None and now - self._logged_at < self.interval:
            self._unlogged += 1
            return
        log.warning("cannot record an Event on a pod's owner: dropped (counted in "
                    "sidecar_injector_events_dropped_total); admissions are not affected",
                    extra={"status": exc.status, "reason": str(exc), "owner":
                           f"{series.owner.kind} {series.owner.namespace}/{series.owner.name}",
                           "failures_not_logged": self._unlogged})
        self._logged_at, self._unlogged = now, 0


def _timestamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


#: The engine's results that make an Event, and its reason.
EVENT_RESULTS: Mapping[str, Reason] = {
    "denied": Reason.DENIED,
    "unknown-policy": Reason.SKIPPED,
    "namespace-not-allowed": Reason.SKIPPED,
    "pod-security": Reason.SKIPPED,
    "unsupported-os": Reason.SKIPPED,
    "conflict": Reason.SKIPPED,
}
