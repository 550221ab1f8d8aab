"""A bounded cache of answers to Pod CREATE reviews, for pods made from one template.

The pods of a ReplicaSet (of a Job, a StatefulSet but for their name) reach the webhook as the same
bytes but for three things: the review's `uid`, the name of the service-account token volume
(`kube-api-access-` and 5 random characters) that the ServiceAccount admission plugin adds before
the webhooks run, and the second its controller wrote it (`managedFields[].time`). The apiserver
generates `metadata.name` from `generateName` after admission. A scale-up of 100 replicas would
otherwise render the same patch 100 times. An answer is a pure function of what the engine reads
(`engine.mutate` does no I/O), so it is cached under

    (the review's bytes without its uid, with the token volume's name made one and no
     managedFields time, the namespace context the engine was given)

The server's policy set and engine settings are not in the key: `bind` empties the cache when
either changes. An answer is kept as JSON text with holes where the uid and the patch go, and the
patch base64-encoded with the token volume it was rendered with: a hit puts the pod's own uid in
and re-encodes only the bytes around the volume's name (`EncodedPatch`); it renders nothing.
"""

from __future__ import annotations

import base64
import operator
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import orjson

from webhook.engine import Outcome

#: stand for the uid and the patch while an answer is encoded; neither is ever one of these
HOLE = "sidecar-injector/uid-goes-here"
PATCH_HOLE = "sidecar-injector/patch-goes-here"
_HOLE_JSON = orjson.dumps(HOLE)
_PATCH_HOLE_JSON = orjson.dumps(PATCH_HOLE)
#: what every token volume's name becomes in a key (a JSON text never holds a NUL byte)
_ONE_TOKEN_VOLUME = b"kube-api-access-\0"


def _written_at(managed_fields: object) -> list[tuple[bytes, bytes]]:
    """`"time":"..."` of each entry of a pod's parsed `metadata.managedFields`: the second at which
    a controller wrote the pod, which the engine never reads, so that the replicas a ReplicaSet
    creates over several seconds are one answer. Replaced in the key as they appear in the body
    (the apiserver writes an entry's `time` right after its `apiVersion`); found by their values,
    not by scanning the whole review, so a label named `time` is never touched."""
    if not isinstance(managed_fields, list):
        return []
    found = []
    for entry in managed_fields:
        if isinstance(entry, dict) and isinstance(entry.get("apiVersion"), str) and isinstance(
                entry.get("time"), str):
            version = b'"apiVersion":' + orjson.dumps(entry["apiVersion"]) + b',"time":'
            found.append((version + orjson.dumps(entry["time"]), version + b'""'))
    return found


@dataclass(frozen=True, slots=True)
class Key:
    """A review's bytes, without its uid and with one token volume name, and its namespace
    context."""

    review: bytes
    context: Hashable


@dataclass(frozen=True, slots=True)
class Answer:
    """An encoded answer, and the outcome it came from without its patch's operations (for the
    metrics, the log and Events)."""

    outcome: Outcome
    head: bytes
    middle: bytes
    tail: bytes
    patch: EncodedPatch | None

    @classmethod
    def of(cls, outcome: Outcome, response: dict[str, Any], token: str | None) -> Answer:
        """`response` is the AdmissionReview built for the uid `HOLE` and the patch
        `PATCH_HOLE` (`review.answer(HOLE, outcome, patch=PATCH_HOLE)`), so the patch is
        serialized and encoded once, with the token volume name `token`."""
        patch = outcome.patch_json if "patch" in response["response"] else None
        head, hole, rest = orjson.dumps(response).partition(_HOLE_JSON)
        middle, patched, tail = rest.partition(_PATCH_HOLE_JSON)
        if not hole or (patch is not None) != bool(patched):
            raise ValueError("the response does not hold the placeholders")
        if patch is None:
            middle, tail = b"", rest
        # the decision and warnings only: the patch's operations (thousands of objects for a
        # large pod) would be uncounted memory that every garbage collection walks
        summary = Outcome(outcome.decision, warnings=outcome.warnings)
        encoded = None if patch is None else EncodedPatch.of(patch, token)
        return cls(summary, head, middle, tail, encoded)

    def for_pod(self, uid: str, token: str | None) -> bytes:
        """The answer for the review `uid` of a pod whose token volume is named `token`."""
        if self.patch is None:
            return b"".join((self.head, orjson.dumps(uid), self.tail))
        encoded = self.patch.with_token(token)
        return b"".join((self.head, orjson.dumps(uid), self.middle, b'"', encoded, b'"',
                         self.tail))

    @property
    def size(self) -> int:
        patch = 0 if self.patch is None else len(self.patch.raw) + len(self.patch.encoded)
        return len(self.head) + len(self.middle) + len(self.tail) + patch


@dataclass(frozen=True, slots=True)
class EncodedPatch:
    """A patch's text, its base64 encoding, and the 3-byte aligned ranges of the text that hold
    the token volume's name it was rendered with: another pod's answer re-encodes only those
    (a few dozen bytes) and splices them in, instead of encoding the whole patch again."""

    raw: bytes
    encoded: bytes
    token: bytes | None
    windows: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, raw: bytes, token: str | None) -> EncodedPatch:
        windows: list[tuple[int, int]] = []
        name = None if token is None else token.encode()
        at = -1 if name is None else raw.find(name)
        while name is not None and at != -1:
            low, high = at // 3 * 3, min(len(raw), -(-(at + len(name)) // 3) * 3)
            if windows and low <= windows[-1][1]:
                windows[-1] = (windows[-1][0], high)
            else:
                windows.append((low, high))
            at = raw.find(name, at + len(name))
        return cls(raw, base64.b64encode(raw), name, tuple(windows))

    def with_token(self, token: str | None) -> bytes:
        """The base64 text of this patch with `token` where its own token volume name is."""
        name = None if token is None else token.encode()
        if name is None or self.token is None or name == self.token or not self.windows:
            return self.encoded
        if len(name) != len(self.token):  # the windows no longer line up
            return base64.b64encode(self.raw.replace(self.token, name))
        pieces, done = [], 0
        for low, high in self.windows:  # `low` is a multiple of 3: 4 base64 bytes per 3
            pieces.append(self.encoded[done // 3 * 4:low // 3 * 4])
            pieces.append(base64.b64encode(self.raw[low:high].replace(self.token, name)))
            done = high
        if done < len(self.raw):  # else the last window reached the end (and its padding)
            pieces.append(self.encoded[done // 3 * 4:])
        return b"".join(pieces)


class AnswerCache:
    """Least recently used answers, at most `max_entries` of them and `max_bytes` in all
    (answers and keys)."""

    def __init__(self, max_entries: int = 1024, max_bytes: int = 8 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._answers: OrderedDict[Hashable, tuple[Answer, int]] = OrderedDict()
        self._bytes = 0
        self._state: tuple[object, ...] = ()

    def __len__(self) -> int:
        return len(self._answers)

    @staticmethod
    def key(body: bytes, uid: str, token: str | None, context: Hashable,
            managed_fields: object = None) -> Key:
        """What decides the answer: the review's bytes but for its `"uid":"..."` member and with
        the token volume's name `token` made one, and the namespace `context` the engine reads.
        The bytes themselves, not a digest, so two reviews share an answer only when they are
        equal (they count towards `max_bytes`)."""
        review = body.replace(b'"uid":' + orjson.dumps(uid), b"", 1)
        if token is not None:
            review = review.replace(token.encode(), _ONE_TOKEN_VOLUME)
        for written, blank in _written_at(managed_fields):
            review = review.replace(written, blank, 1)
        return Key(review, context)

    def bind(self, *state: object) -> None:
        """Answer for this server state (the policy set, the engine settings) only: a state
        other than the last one's objects empties the cache."""
        if len(state) != len(self._state) or not all(map(operator.is_, state, self._state)):
            self.clear()
            self._state = state

    def get(self, key: Hashable) -> Answer | None:
        found = self._answers.get(key)
        if found is None:
            return None
        self._answers.move_to_end(key)
        return found[0]

    def put(self, key: Hashable, answer: Answer) -> None:
        """Keep `answer` unless it alone, with its key, would take more than an eighth of the
        budget."""
        size = answer.size + (len(key.review) if isinstance(key, Key) else 0)
        if size > self.max_bytes // 8:
            return
        old = self._answers.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        self._answers[key] = (answer, size)
        self._bytes += size
        while len(self._answers) > self.max_entries or self._bytes > self.max_bytes:
            _, (_, evicted) = self._answers.popitem(last=False)
            self._bytes -= evicted

    def clear(self) -> None:
        self._answers.clear()
        self._bytes = 0
