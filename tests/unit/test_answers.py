"""The answer cache: a Pod CREATE answered again (another uid, same bytes) gives exactly what the
engine would give, and nothing that shapes an answer is left out of what decides a hit."""

from __future__ import annotations

import base64
import copy
from dataclasses import replace
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import SHIPPED_POLICIES
from tests.unit.test_properties import INJECT, pods, policy_sets
from webhook.answers import HOLE, PATCH_HOLE, Answer, AnswerCache, EncodedPatch
from webhook.engine import EngineConfig, mutate
from webhook.policy import PolicySet, load_policy_dir
from webhook.review import answer, parse_review
from webhook.runtime import Runtime

POLICIES = load_policy_dir(SHIPPED_POLICIES)
POD: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod",
       "metadata": {"generateName": "web-", "annotations": {INJECT: "logging"},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                         "name": "web-1", "uid": "rs-1", "controller": True}]},
       "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}


def body(pod: dict[str, Any], uid: str, namespace: str = "shop", *, dry_run: bool = False,
         ) -> bytes:
    return orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                         "request": {"uid": uid, "kind": {"group": "", "version": "v1",
                                                          "kind": "Pod"},
                                     "operation": "CREATE", "namespace": namespace,
                                     "dryRun": dry_run, "object": pod}})


def lookups(runtime: Runtime, result: str) -> float | None:
    """The cache of answers' lookups with `result`, as /metrics exports them."""
    return runtime.metrics.registry.get_sample_value(
        "sidecar_injector_answer_cache_lookups_total", {"result": result})


def respond(runtime: Runtime, raw: bytes) -> dict[str, Any]:
    answered: dict[str, Any] = orjson.loads(runtime.respond(parse_review(raw), raw))
    return answered


class Namespaces:
    """What the Namespace watch would know, changeable by the test."""

    def __init__(self) -> None:
        self.policies: tuple[str, ...] = ()
        self.level: Any = None
        self.namespace_labels: dict[str, str] = {}

    def lookup(self, _: str) -> tuple[str, ...]:
        return self.policies

    def pod_security(self, _: str) -> Any:
        return self.level

    def labels(self, _: str) -> dict[str, str]:
        return self.namespace_labels


def test_the_same_pod_again_is_answered_from_the_cache_with_its_own_uid() -> None:
    runtime = Runtime(POLICIES, EngineConfig())
    first = respond(runtime, body(POD, "uid-1"))
    second = respond(runtime, body(POD, "uid-2"))
    assert len(runtime.answers) == 1
    assert first["response"]["uid"] == "uid-1"
    assert second["response"]["uid"] == "uid-2"
    assert {**second["response"], "uid": "uid-1"} == first["response"]
    assert first == runtime.decide(parse_review(body(POD, "uid-1")))  # decide is never cached
    assert lookups(runtime, "hit") == 1
    assert lookups(runtime, "miss") == 1


def test_replicas_written_in_different_seconds_share_an_answer() -> None:
    """A ReplicaSet that creates its pods over several seconds (a slow start, a retried sync)
    sends them with different `managedFields[].time`: one render all the same."""
    runtime = Runtime(POLICIES, EngineConfig())
    answers = []
    for second in ("2026-12-02T04:31:15Z", "2026-12-02T04:31:16Z"):
        pod = copy.deepcopy(POD)
        pod["metadata"]["managedFields"] = [{
            "manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
            "time": second, "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {}}}]
        answers.append(respond(runtime, body(pod, second)))
    assert lookups(runtime, "miss") == 1
    assert lookups(runtime, "hit") == 1
    assert answers[0]["response"]["patch"] == answers[1]["response"]["patch"]


def test_a_label_named_time_still_decides_a_hit() -> None:
    """Only managedFields' time is left out of the key: a policy may read any label."""
    runtime = Runtime(POLICIES, EngineConfig())
    for second in ("2026-12-02T04:31:15Z", "2026-12-02T04:31:16Z"):
        pod = copy.deepcopy(POD)
        pod["metadata"]["labels"] = {"apiVersion": "v1", "fieldsType": "x", "time": second}
        respond(runtime, body(pod, second))
    assert lookups(runtime, "miss") == 2


def test_every_byte_but_the_uid_decides_a_hit() -> None:
    runtime = Runtime(POLICIES, EngineConfig())
    other = copy.deepcopy(POD)
    other["metadata"]["annotations"][INJECT] = "metrics-exporter"
    answers = [respond(runtime, raw) for raw in (
        body(POD, "a"), body(other, "b"), body(POD, "c", namespace="kube-system"),
        body(POD, "d", dry_run=True))]
    assert len(runtime.answers) == 4
    assert answers[0]["response"]["patch"] != answers[1]["response"]["patch"]
    assert "patch" not in answers[2]["response"]


def test_what_the_namespace_watch_says_is_part_of_the_key() -> None:
    namespaces = Namespaces()
    runtime = Runtime(POLICIES, EngineConfig(), namespaces=namespaces)  # type: ignore[arg-type]
    pod = copy.deepcopy(POD)
    del pod["metadata"]["annotations"][INJECT]  # the namespace's defaults decide
    none = respond(runtime, body(pod, "a"))
    namespaces.policies = ("logging",)
    some = respond(runtime, body(pod, "b"))
    assert "patch" in some["response"]
    assert none["response"].get("patch") != some["response"]["patch"]
    namespaces.namespace_labels = {"team": "x"}
    respond(runtime, body(pod, "c"))
    assert len(runtime.answers) == 3


def test_a_new_policy_set_or_new_settings_empty_the_cache() -> None:
    runtime = Runtime(POLICIES, EngineConfig())
    before = respond(runtime, body(POD, "a"))
    runtime.swap(PolicySet({name: POLICIES[name] for name in POLICIES.names()
                            if name != "logging"}))
    gone = respond(runtime, body(POD, "b"))
    assert "patch" not in gone["response"] or gone["response"]["patch"] != (
        before["response"]["patch"])
    assert "unknown injection policy 'logging'" in " ".join(gone["response"]["warnings"])
    runtime.swap(POLICIES)
    runtime.learn_kube_version((1, 28))  # sidecarMode: auto now means classic sidecars
    after = respond(runtime, body(POD, "c"))
    assert after["response"]["patch"] != before["response"]["patch"]


def test_the_cache_is_bounded_by_entries_and_by_bytes() -> None:
    outcome = mutate(POD, namespace="shop", policies=POLICIES, config=EngineConfig())
    entry = Answer.of(outcome, answer(HOLE, outcome, patch=PATCH_HOLE), None)
    assert outcome.operations
    assert entry.outcome.operations == []  # uncounted objects the GC would walk: not kept
    assert entry.outcome.result == outcome.result == "injected"
    by_count = AnswerCache(max_entries=2)
    for index in range(3):
        by_count.put(index, entry)
    assert len(by_count) == 2
    assert by_count.get(0) is None
    assert by_count.get(2) is entry
    by_bytes = AnswerCache(max_bytes=entry.size * 8)
    for index in range(20):
        by_bytes.put(index, entry)
    assert len(by_bytes) == 8
    too_big = AnswerCache(max_bytes=entry.size * 8 - 1)
    too_big.put("x", entry)
    assert len(too_big) == 0  # one answer may take an eighth of the budget at most


def test_the_least_recently_used_answer_goes_first() -> None:
    outcome = mutate(POD, namespace="shop", policies=POLICIES, config=EngineConfig())
    entry = Answer.of(outcome, answer(HOLE, outcome, patch=PATCH_HOLE), None)
    cache = AnswerCache(max_entries=2)
    cache.put("a", entry)
    cache.put("b", entry)
    assert cache.get("a") is entry
    cache.put("c", entry)
    assert cache.get("b") is None
    assert cache.get("a") is entry


def token_volume_added(pod: dict[str, Any], name: str) -> dict[str, Any]:
    """`pod` with a token volume called `name`, mounted where the plugin mounts it."""
    pod = copy.deepcopy(pod)
    spec = pod.setdefault("spec", {})
    spec.setdefault("volumes", []).append({"name": name, "projected": {"sources": [
        {"serviceAccountToken": {"path": "token"}}]}})
    for container in spec.get("containers") or []:
        container.setdefault("volumeMounts", []).append({
            "name": name, "readOnly": True,
            "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"})
    return pod


SUFFIX = st.text(alphabet="bcdfghjklmnpqrstvwxz2456789", min_size=5, max_size=5)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(pod=pods(), policies=policy_sets(), tokens=st.none() | st.tuples(SUFFIX, SUFFIX))
def test_a_cached_answer_is_the_engines_answer(pod: dict[str, Any], policies: PolicySet,
                                               tokens: tuple[str, str] | None) -> None:
    """For any pod and policies: answered a second time (a hit), the answer is byte for byte
    what the engine gives for that uid without any cache, also when the second replica's token
    volume has another name."""
    config = replace(EngineConfig(), on_conflict="skip")
    first, second = pod, pod
    if tokens is not None:
        first = token_volume_added(pod, f"kube-api-access-{tokens[0]}")
        second = token_volume_added(pod, f"kube-api-access-{tokens[1]}")
    cached = Runtime(policies, config)
    respond(cached, body(first, "first"))
    hit = cached.respond(parse_review(body(second, "second")), body(second, "second"))
    assert len(cached.answers) == 1
    fresh = Runtime(policies, config).decide(parse_review(body(second, "second")))
    assert orjson.loads(hit) == fresh


@pytest.mark.parametrize("uid", ["plain", 'with "quotes" and \\ backslash', "ünïcode"])
def test_any_uid_goes_back_as_it_came(uid: str) -> None:
    runtime = Runtime(POLICIES, EngineConfig())
    respond(runtime, body(POD, "warm"))
    assert respond(runtime, body(POD, uid))["response"]["uid"] == uid


def test_a_review_whose_uid_member_is_spelled_otherwise_is_never_a_wrong_hit() -> None:
    runtime = Runtime(POLICIES, EngineConfig())
    for uid in ("a", "b"):
        raw = body(POD, uid).replace(f'"uid":"{uid}"'.encode(), f'"uid": "{uid}"'.encode())
        assert respond(runtime, raw)["response"]["uid"] == uid
    assert len(runtime.answers) == 2  # the uid stayed in the key: two answers, both right


def with_token_volume(name: str) -> dict[str, Any]:
    """POD as the ServiceAccount admission plugin leaves it: a token volume, mounted."""
    pod = copy.deepcopy(POD)
    pod["spec"]["volumes"] = [{"name": name, "projected": {"sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}]
    pod["spec"]["containers"][0]["volumeMounts"] = [{
        "name": name, "readOnly": True,
        "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]
    return pod


def test_replicas_differ_in_their_token_volumes_name_and_each_gets_its_own() -> None:
    """The ServiceAccount plugin names each pod's token volume at random; the injected
    containers must mount the pod's own, so the hit is rewritten, and equals the engine's."""
    runtime = Runtime(POLICIES, EngineConfig())
    first = respond(runtime, body(with_token_volume("kube-api-access-abcde"), "a"))
    second = respond(runtime, body(with_token_volume("kube-api-access-vwxyz"), "b"))
    assert len(runtime.answers) == 1  # one render for both
    fresh = Runtime(POLICIES, EngineConfig()).decide(
        parse_review(body(with_token_volume("kube-api-access-vwxyz"), "b")))
    assert second == fresh
    patch = base64.b64decode(second["response"]["patch"]).decode()
    assert "kube-api-access-vwxyz" in patch
    assert "kube-api-access-abcde" not in patch
    assert "kube-api-access-abcde" in base64.b64decode(first["response"]["patch"]).decode()


TOKENS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=5, max_size=5).map(
    lambda suffix: f"kube-api-access-{suffix}")


@settings(max_examples=300)
@given(pieces=st.lists(st.binary(max_size=40), min_size=1, max_size=6), old=TOKENS,
       new=st.one_of(st.none(), TOKENS, st.just("kube-api-access-longer")))
def test_a_patch_re_encoded_for_another_token_is_the_encoding_of_its_text(
    pieces: list[bytes], old: str, new: str | None,
) -> None:
    """The splice of re-encoded windows equals encoding the whole text with the new name, for
    tokens at every offset modulo 3, side by side, at the start and at the end."""
    raw = old.encode().join(pieces)
    patch = EncodedPatch.of(raw, old)
    expected = raw if new is None else raw.replace(old.encode(), new.encode())
    assert patch.with_token(new) == base64.b64encode(expected)
