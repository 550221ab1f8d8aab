"""The real `serve` process answering workload reviews: `/validate` (the chart's validating
webhook) and `/mutate` both admit a Deployment unchanged, with the engine's workload warnings;
`/validate` never patches a Pod; both are counted as `workload-checked`."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import SHIPPED_POLICIES
from tests.integration.conftest import review
from tests.serverproc import ServerProcess
from webhook.engine import EngineConfig, workload_warnings
from webhook.policy import load_policy_dir

INJECT = "sidecar.company.com/inject"


def deployment(own: dict[str, str], template: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "annotations": own},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {
                "metadata": {"labels": {"app": "web"}, "annotations": template},
                "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}}}}


def workload_review(obj: dict[str, Any], operation: str = "CREATE") -> dict[str, Any]:
    body: dict[str, Any] = review(obj, operation=operation, kind=obj["kind"])
    body["request"]["kind"] = {"group": "apps", "version": "v1", "kind": obj["kind"]}
    return body


def post(server: ServerProcess, path: str, payload: Any) -> dict[str, Any]:
    with server.client() as client:
        response = client.post(server.url(path), json=payload)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()["response"]
    return answer


@pytest.mark.parametrize("path", ["/validate", "/mutate"])
@pytest.mark.parametrize("operation", ["CREATE", "UPDATE"])
def test_a_workload_is_admitted_unchanged_with_the_engines_warnings(
    server: ServerProcess, path: str, operation: str,
) -> None:
    obj = deployment({INJECT: "logging"}, {})
    answer = post(server, path, workload_review(obj, operation))
    expected = workload_warnings(obj, namespace="shop", policies=load_policy_dir(SHIPPED_POLICIES),
                                 config=EngineConfig())
    assert expected  # the annotation is on the Deployment, not its pod template
    assert answer == {"uid": "uid-1", "allowed": True, "warnings": list(expected)}


def test_a_well_placed_workload_gets_a_bare_allow(server: ServerProcess) -> None:
    answer = post(server, "/validate", workload_review(deployment({}, {INJECT: "logging"})))
    assert answer == {"uid": "uid-1", "allowed": True}


def test_the_validate_path_never_patches_a_pod(server: ServerProcess) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"annotations": {INJECT: "logging"}},
           "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}}
    assert post(server, "/validate", review(pod)) == {"uid": "uid-1", "allowed": True}
    assert "patch" in post(server, "/mutate", review(pod))


def test_workload_reviews_are_counted_as_workload_checked(server: ServerProcess) -> None:
    post(server, "/validate", workload_review(deployment({}, {})))
    with server.client() as client:
        text = client.get(server.url("/metrics")).text
    assert 'sidecar_injector_requests_total{policy="",result="workload-checked"}' in text
    assert 'sidecar_injector_events_dropped_total{reason="queue-full"} 0.0' in text


def test_a_malformed_review_on_validate_is_a_400(server: ServerProcess) -> None:
    with server.client() as client:
        response = client.post(server.url("/validate"), content=b"{")
    assert response.status_code == 400
    assert isinstance(response.json()["error"], str)
