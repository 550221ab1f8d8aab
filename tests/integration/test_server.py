"""The real `serve` process over HTTPS: every behaviour of SPEC section 4."""

from __future__ import annotations

import base64
import copy
import json
import re
import ssl
from pathlib import Path
from typing import Any

import httpx
import jsonpatch
import pytest
import yaml

from tests.conftest import SHIPPED_POLICIES
from tests.golden.test_golden import CORPUS
from tests.integration.conftest import review
from tests.serverproc import ServerProcess
from webhook.engine import EngineConfig, mutate
from webhook.policy import load_policy_dir
from webhook.selection import Selection

STATUS = "sidecar.company.com/status"
INJECT = "sidecar.company.com/inject"


def pod(annotation: str = "logging", name: str = "web") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "shop"},
                         "annotations": {INJECT: annotation}},
            "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}}


def post(server: ServerProcess, payload: Any) -> httpx.Response:
    with server.client() as client:
        return client.post(server.url(), json=payload)


def patch_of(response: dict[str, Any]) -> list[dict[str, Any]]:
    patch: list[dict[str, Any]] = json.loads(base64.b64decode(response["patch"]))
    return patch


def corpus_pods() -> list[Any]:
    found = []
    for path in sorted(CORPUS.glob("*.yaml")):
        obj = yaml.safe_load(path.read_text())
        if obj["kind"] == "Pod":
            found.append(pytest.param(obj, id=path.stem))
    return found


def test_a_pod_create_gets_a_base64_json_patch_with_the_same_uid(server: ServerProcess) -> None:
    answer = post(server, review(pod(), uid="abc-123")).json()
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert (response["uid"], response["allowed"], response["patchType"]) == (
        "abc-123", True, "JSONPatch")
    injected = jsonpatch.apply_patch(pod(), patch_of(response))
    assert json.loads(injected["metadata"]["annotations"][STATUS])["policies"] == ["logging"]


@pytest.mark.parametrize("obj", corpus_pods())
def test_the_servers_patch_equals_the_engines_result_for_every_corpus_pod(
    server: ServerProcess, obj: dict[str, Any],
) -> None:
    namespace = obj["metadata"].get("namespace", "shop")
    response = post(server, review(obj, namespace=namespace)).json()["response"]
    expected = mutate(obj, namespace=namespace, policies=load_policy_dir(SHIPPED_POLICIES),
                      config=EngineConfig(selection=Selection()))
    assert response["allowed"] == expected.allowed
    if not expected.allowed:
        assert response["status"]["message"] == expected.message
        return
    served = jsonpatch.apply_patch(obj, patch_of(response)) if "patch" in response else obj
    assert served == jsonpatch.apply_patch(obj, copy.deepcopy(expected.patch))


@pytest.mark.parametrize(
    ("operation", "kind"),
    [pytest.param("UPDATE", "Pod", id="pod-update"), pytest.param("DELETE", "Pod", id="delete"),
     pytest.param("CREATE", "ConfigMap", id="configmap-create")],
)
def test_anything_but_a_pod_create_passes_unpatched(server: ServerProcess, operation: str,
                                                    kind: str) -> None:
    response = post(server, review(pod(), operation=operation, kind=kind)).json()["response"]
    assert response == {"uid": "uid-1", "allowed": True}


def test_dry_run_is_answered_the_same_way(server: ServerProcess) -> None:
    wet = post(server, review(pod())).json()["response"]
    dry = post(server, review(pod(), dry_run=True)).json()["response"]
    assert dry == wet


def test_an_unknown_policy_is_admitted_with_a_warning(server: ServerProcess) -> None:
    response = post(server, review(pod("nope"))).json()["response"]
    assert response["allowed"] is True
    assert response["warnings"] == [
        "pod shop/web was admitted without injection: unknown injection policy 'nope' "
        f"(check the {INJECT} annotation)"]
    stamped = jsonpatch.apply_patch(pod("nope"), patch_of(response))
    assert json.loads(stamped["metadata"]["annotations"][STATUS]) == {
        "policies": [], "skipped": "unknown-policy"}


def test_a_clash_is_denied_with_a_status_code_and_message(server: ServerProcess) -> None:
    clashing = pod()
    clashing["spec"]["containers"].append({"name": "logging-agent", "image": "mine"})
    response = post(server, review(clashing)).json()["response"]
    assert response["allowed"] is False
    assert response["status"] == {"code": 403, "reason": "Forbidden",
                                  "message": response["status"]["message"]}
    assert "adds container 'logging-agent', which clashes with the pod's container" in (
        response["status"]["message"])
    assert "patch" not in response


def test_system_namespaces_are_allowed_without_a_patch(server: ServerProcess) -> None:
    response = post(server, review(pod(), namespace="kube-system")).json()["response"]
    assert response == {"uid": "uid-1", "allowed": True}


@pytest.mark.parametrize(
    ("body", "error"),
    [
        pytest.param(b"", "empty request body", id="empty"),
        pytest.param(b"{not json", "malformed JSON", id="malformed"),
        pytest.param(b"[1, 2]", "expected a JSON object", id="not-an-object"),
        pytest.param(b'{"kind": "AdmissionReview"}', "AdmissionReview has no request",
                     id="no-request"),
        pytest.param(b'{"request": {"kind": {}}}', "request has no uid", id="no-uid"),
        pytest.param(b"\xff\xfe\xfd", "malformed JSON", id="not-utf8"),
    ],
)
def test_a_bad_review_gets_400_with_a_json_error(server: ServerProcess, body: bytes,
                                                 error: str) -> None:
    with server.client() as client:
        response = client.post(server.url(), content=body,
                               headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert error in response.json()["error"]


def test_a_body_over_the_limit_gets_413_by_its_content_length(server: ServerProcess) -> None:
    with server.client() as client:
        response = client.post(server.url(), content=b"x" * 70_000)
    assert response.status_code == 413
    assert "over the limit of 65536 bytes" in response.json()["error"]


def test_a_streamed_body_over_the_limit_gets_413(server: ServerProcess) -> None:
    def chunks() -> Any:
        for _ in range(100):
            yield b"y" * 1024

    with server.client() as client:
        response = client.post(server.url(), content=chunks())
    assert response.status_code == 413


def test_get_on_mutate_is_405(server: ServerProcess) -> None:
    with server.client() as client:
        assert client.get(server.url()).status_code == 405


def test_health_ready_and_metrics(server: ServerProcess) -> None:
    post(server, review(pod()))
    with server.client() as client:
        assert client.get(server.url("/healthz")).json() == {"status": "ok"}
        ready = client.get(server.url("/readyz"))
        metrics = client.get(server.url("/metrics")).text
    assert ready.status_code == 200
    assert ready.json()["namespaceDefaults"].startswith("unavailable")
    for name in ("sidecar_injector_requests_total", "sidecar_injector_request_duration_seconds",
                 "sidecar_injector_policies_loaded", "sidecar_injector_policy_reload_errors_total",
                 "sidecar_injector_cert_expiry_timestamp_seconds"):
        assert name in metrics, name
    assert re.search(r'sidecar_injector_requests_total\{policy="logging",result="injected"\} '
                     r"[1-9]", metrics)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls_below_1_2_is_refused(server: ServerProcess) -> None:
    context = server.ssl_context()
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # the client would offer TLS 1.1 if allowed
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(httpx.ConnectError), httpx.Client(verify=context) as client:
        client.get(server.url("/healthz"))


def test_every_review_is_logged_as_one_json_line_with_its_uid(server: ServerProcess) -> None:
    post(server, review(pod(), uid="log-me-please"))
    lines = [json.loads(line) for line in Path(server.log).read_text().splitlines()
             if "log-me-please" in line]
    assert len(lines) == 1
    assert {"uid": "log-me-please", "namespace": "shop", "pod": "web", "policies": ["logging"],
            "result": "injected"}.items() <= lines[0].items()
    assert "duration_ms" in lines[0]
