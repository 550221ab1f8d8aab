"""What the Namespace watch keeps of each namespace: default policies and the Pod Security level
it enforces (an invalid level as restricted, as the apiserver has it, logged once); and the
read of a namespace it has not shown yet, before the webhook decides for one of its pods."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from types import SimpleNamespace

import pytest

from tests.conftest import SHIPPED_POLICIES
from webhook.engine import EngineConfig
from webhook.kube import NamespaceDefaults
from webhook.podsecurity import ENFORCE_LABEL, Level
from webhook.policy import load_policy_dir
from webhook.runtime import Runtime
from webhook.server import create_app


def namespace(name: str, *, labels: dict[str, str] | None = None,
              annotations: dict[str, str] | None = None) -> SimpleNamespace:
    """A Namespace as the `kubernetes` client gives it (attributes, not dicts)."""
    return SimpleNamespace(metadata=SimpleNamespace(name=name, labels=labels,
                                                    annotations=annotations))


@pytest.fixture
def watch() -> NamespaceDefaults:
    defaults = NamespaceDefaults("sidecar.company.com/policies", None)
    defaults._synced.set()  # as after the first list
    return defaults


def test_a_namespace_gives_its_default_policies_and_its_enforced_level(
    watch: NamespaceDefaults,
) -> None:
    watch._apply({"type": "ADDED", "object": namespace(
        "shop", labels={ENFORCE_LABEL: "baseline"},
        annotations={"sidecar.company.com/policies": "logging, metrics-exporter"})})
    assert watch.lookup("shop") == ("logging", "metrics-exporter")
    assert watch.pod_security("shop") is Level.BASELINE


def test_a_removed_label_or_namespace_enforces_nothing(watch: NamespaceDefaults) -> None:
    def event(kind: str, level: str | None = None) -> dict[str, object]:
        labels = {ENFORCE_LABEL: level} if level else {}
        return {"type": kind, "object": namespace("shop", labels=labels)}

    watch._apply(event("ADDED", "restricted"))
    watch._apply(event("MODIFIED"))
    assert watch.pod_security("shop") is None
    watch._apply(event("MODIFIED", "baseline"))
    watch._apply(event("DELETED"))
    assert watch.pod_security("shop") is None


def test_an_invalid_level_is_enforced_as_restricted_and_logged_once(
    watch: NamespaceDefaults, caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="sidecar_injector.kube"):
        for _ in range(3):
            watch._apply({"type": "MODIFIED", "object": namespace(
                "legacy", labels={ENFORCE_LABEL: "Baseline"})})
    assert watch.pod_security("legacy") is Level.RESTRICTED
    assert len([r for r in caplog.records if "invalid Pod Security level" in r.message]) == 1


def test_nothing_is_known_before_the_first_list() -> None:
    defaults = NamespaceDefaults("sidecar.company.com/policies", None)
    assert defaults.pod_security("shop") is None
    assert defaults.lookup("shop") is None


class Api:
    """`CoreV1Api.read_namespace` on a dict of namespaces; a missing one raises as the client
    does (an ApiException-like error with `status`)."""

    def __init__(self, **namespaces: SimpleNamespace) -> None:
        self.namespaces = namespaces
        self.reads: list[str] = []

    def read_namespace(self, name: str, **_: object) -> SimpleNamespace:
        self.reads.append(name)
        if name not in self.namespaces:
            raise type("ApiException", (Exception,), {"status": 404, "reason": "Not Found",
                                                      "body": ""})()
        return self.namespaces[name]


def test_a_namespace_the_watch_has_not_shown_is_read_once(watch: NamespaceDefaults) -> None:
    api = Api(fresh=namespace("fresh", labels={"team": "a"},
                              annotations={"sidecar.company.com/policies": "logging"}))
    watch._api = api
    assert watch.missing("fresh")
    watch.fetch("fresh")
    assert (watch.lookup("fresh"), watch.labels("fresh")) == (("logging",), {"team": "a"})
    assert not watch.missing("fresh")
    assert api.reads == ["fresh"]


def test_a_failed_read_is_not_retried_at_once_and_decides_nothing(
    watch: NamespaceDefaults, caplog: pytest.LogCaptureFixture,
) -> None:
    watch._api = Api()
    with caplog.at_level(logging.WARNING, logger="sidecar_injector.kube"):
        watch.fetch("gone")
    assert not watch.missing("gone")  # for FETCH_RETRY_SECONDS
    assert watch.lookup("gone") == ()
    assert "cannot read a namespace the watch has not shown yet" in caplog.text


def test_without_the_first_list_nothing_is_read() -> None:
    defaults = NamespaceDefaults("sidecar.company.com/policies", None)
    assert not defaults.missing("shop")


def test_the_webhook_reads_a_missing_namespace_before_it_decides(
    watch: NamespaceDefaults,
) -> None:
    """Through the ASGI app: the first pod of a namespace the watch has not shown yet gets the
    namespace's default policies, not the global ones."""

    watch._api = Api(fresh=namespace("fresh", annotations={
        "sidecar.company.com/policies": "metrics-exporter"}))
    runtime = Runtime(load_policy_dir(SHIPPED_POLICIES), EngineConfig(), namespaces=watch)
    app = create_app(runtime, max_body_bytes=1 << 20)
    body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                       "request": {"uid": "u", "kind": {"group": "", "version": "v1",
                                                        "kind": "Pod"},
                                   "operation": "CREATE", "namespace": "fresh", "object": {
                                       "metadata": {"generateName": "web-"},
                                       "spec": {"containers": [{"name": "app",
                                                                "image": "nginx"}]}}}}).encode()
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "http", "path": "/mutate", "method": "POST", "headers": []}
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    answer = json.loads(sent[-1]["body"])  # type: ignore[arg-type]
    patch = base64.b64decode(answer["response"]["patch"]).decode()
    assert '\\"policies\\":[\\"metrics-exporter\\"]' in patch
