"""Pod-level resources: KEP-753's aggregate, and how injection grows a pod's `spec.resources`."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from typing import Any

import jsonpatch
import pytest

from tests.conftest import WritePolicies
from webhook.engine import EngineConfig, mutate, unmutate
from webhook.podresources import aggregate, format_quantity, grow
from webhook.policy import load_policy_dir

STATUS = "sidecar.company.com/status"


def container(name: str, requests: dict[str, str] | None = None,
              limits: dict[str, str] | None = None, *, sidecar: bool = False) -> dict[str, Any]:
    resources = {k: v for k, v in (("requests", requests), ("limits", limits)) if v}
    return {"name": name, "image": "x", **({"resources": resources} if resources else {}),
            **({"restartPolicy": "Always"} if sidecar else {})}


@pytest.mark.parametrize(("init", "regular", "expected"), [
    pytest.param([], [container("a", {"cpu": "100m"}), container("b", {"cpu": "50m"})],
                 {"cpu": Decimal("0.15")}, id="regular-containers-add-up"),
    pytest.param([container("s", {"cpu": "50m"}, sidecar=True)], [container("a", {"cpu": "100m"})],
                 {"cpu": Decimal("0.15")}, id="a-native-sidecar-adds-to-them"),
    pytest.param([container("i", {"cpu": "1"})], [container("a", {"cpu": "100m"})],
                 {"cpu": Decimal("1")}, id="a-big-init-container-is-the-peak"),
    pytest.param([container("s", {"cpu": "200m"}, sidecar=True), container("i", {"cpu": "1"})],
                 [container("a", {"cpu": "100m"})], {"cpu": Decimal("1.2")},
                 id="an-init-container-runs-beside-the-sidecars-declared-before-it"),
    pytest.param([container("i", {"cpu": "1"}), container("s", {"cpu": "200m"}, sidecar=True)],
                 [container("a", {"cpu": "100m"})], {"cpu": Decimal("1")},
                 id="but-not-beside-those-declared-after-it"),
    pytest.param([], [container("a", limits={"memory": "64Mi"})], {"memory": Decimal(2**26)},
                 id="a-limit-without-a-request-is-the-request"),
])
def test_the_aggregate_follows_kep_753(init: list[dict[str, Any]], regular: list[dict[str, Any]],
                                       expected: dict[str, Decimal]) -> None:
    assert aggregate(init, regular, "requests") == expected


@pytest.mark.parametrize(("value", "text"), [
    pytest.param(Decimal(192 * 2**20), "192Mi", id="binary"),
    pytest.param(Decimal("0.15"), "150m", id="millis"),
    pytest.param(Decimal(2), "2", id="whole"),
    pytest.param(Decimal("0.0001"), "1m", id="rounded-up-to-a-milli"),
    pytest.param(Decimal(1_000_000_000), "1000000000", id="decimal-bytes"),
])
def test_quantities_are_written_as_kubernetes_reads_them(value: Decimal, text: str) -> None:
    assert format_quantity(value) == text


def spec_with(resources: dict[str, Any], app: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"resources": resources,
            "containers": [app or container("app", {"cpu": "100m", "memory": "128Mi"})]}


def test_pod_requests_grow_by_what_a_sidecar_requests() -> None:
    change = grow(spec_with({"requests": {"cpu": "100m", "memory": "128Mi"}}), init_front=[
        container("agent", {"cpu": "50m", "memory": "64Mi"}, sidecar=True)],
        init_back=[], containers=[])
    assert change is not None
    assert change.values == {"requests": {"cpu": "150m", "memory": "192Mi"}}
    assert change.previous == {"requests": {"cpu": "100m", "memory": "128Mi"}}


def test_a_small_init_container_needs_no_more_than_the_app_already_has() -> None:
    change = grow(spec_with({"requests": {"cpu": "100m", "memory": "128Mi"}}), init_front=[
        container("wait", {"cpu": "10m", "memory": "16Mi"})], init_back=[], containers=[])
    assert change is None


def test_pod_limits_grow_by_the_sidecar_limits_and_cover_the_new_requests() -> None:
    change = grow(spec_with({"requests": {"cpu": "100m"}, "limits": {"cpu": "100m"}}),
                  init_front=[], init_back=[], containers=[
                      container("agent", {"cpu": "50m"}, {"cpu": "200m"})])
    assert change is not None
    assert change.values == {"requests": {"cpu": "150m"}, "limits": {"cpu": "300m"}}


def test_a_pod_limit_with_room_for_the_sidecar_is_left_as_it_is() -> None:
    change = grow(spec_with({"limits": {"memory": "256Mi"}}), init_front=[], init_back=[],
                  containers=[container("agent", {"memory": "64Mi"})])
    assert change is None  # 128Mi + 64Mi of requests fit in 256Mi; requests stay unset


def test_only_limits_grow_to_cover_the_defaulted_requests() -> None:
    change = grow(spec_with({"limits": {"memory": "128Mi"}}), init_front=[], init_back=[],
                  containers=[container("agent", {"memory": "64Mi"})])
    assert change is not None
    assert change.values == {"limits": {"memory": "192Mi"}}


def test_a_pod_without_pod_level_resources_is_not_changed() -> None:
    spec = {"containers": [container("app", {"cpu": "100m"})]}
    assert grow(spec, init_front=[container("agent", {"cpu": "50m"}, sidecar=True)],
                init_back=[], containers=[]) is None


def pod(resources: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "shop",
                         "annotations": {"sidecar.company.com/inject": "agent"}},
            "spec": {"resources": resources,
                     "containers": [container("app", {"cpu": "100m", "memory": "128Mi"},
                                              {"cpu": "1", "memory": "512Mi"})]}}


AGENT = """
    apiVersion: sidecar.company.com/v1alpha1
    kind: InjectionPolicy
    metadata: {{name: agent}}
    spec:
      podResources: {mode}
      containers:
        - name: agent
          image: agent:1
          resources:
            requests: {{cpu: 50m, memory: 64Mi}}
            limits: {{cpu: 200m, memory: 128Mi}}
"""


def inject(write_policies: WritePolicies, mode: str, resources: dict[str, Any],
           ) -> tuple[dict[str, Any], dict[str, Any]]:
    policies = load_policy_dir(write_policies(agent=AGENT.format(mode=mode)))
    before = pod(resources)
    outcome = mutate(copy.deepcopy(before), namespace="shop", policies=policies,
                     config=EngineConfig())
    return before, jsonpatch.apply_patch(before, outcome.patch)


def test_the_engine_adds_the_sidecar_to_the_pod_envelope_and_remove_restores_it(
    write_policies: WritePolicies,
) -> None:
    envelope = {"requests": {"cpu": "100m", "memory": "128Mi"},
                "limits": {"cpu": "1", "memory": "512Mi"}}
    before, after = inject(write_policies, "add", envelope)
    assert after["spec"]["resources"] == {"requests": {"cpu": "150m", "memory": "192Mi"},
                                          "limits": {"cpu": "1200m", "memory": "640Mi"}}
    status = json.loads(after["metadata"]["annotations"][STATUS])
    assert status["podResources"] == envelope
    undo = unmutate(after, namespace="shop", config=EngineConfig())
    assert jsonpatch.apply_patch(after, undo) == before


def test_a_sharing_policy_adds_containers_without_resources_and_leaves_the_envelope(
    write_policies: WritePolicies,
) -> None:
    envelope = {"requests": {"cpu": "100m", "memory": "128Mi"}}
    _, after = inject(write_policies, "share", envelope)
    assert after["spec"]["resources"] == envelope
    (agent,) = [c for c in after["spec"]["initContainers"] if c["name"] == "agent"]
    assert "resources" not in agent
    assert "podResources" not in json.loads(after["metadata"]["annotations"][STATUS])


def test_a_sharing_policy_keeps_its_resources_in_a_pod_without_an_envelope(
    write_policies: WritePolicies,
) -> None:
    policies = load_policy_dir(write_policies(agent=AGENT.format(mode="share")))
    plain = pod({})
    del plain["spec"]["resources"]
    outcome = mutate(plain, namespace="shop", policies=policies, config=EngineConfig())
    after = jsonpatch.apply_patch(plain, outcome.patch)
    (agent,) = after["spec"]["initContainers"]
    assert agent["resources"]["requests"] == {"cpu": "50m", "memory": "64Mi"}


def test_a_policy_with_absurd_resources_still_gives_an_answer(
    write_policies: WritePolicies,
) -> None:
    huge = AGENT.format(mode="add").replace("64Mi", "8Ei").replace("200m", "1000000000")
    policies = load_policy_dir(write_policies(agent=huge))
    before = pod({"requests": {"cpu": "100m", "memory": "7Ei"}, "limits": {"memory": "8Ei"}})
    outcome = mutate(copy.deepcopy(before), namespace="shop", policies=policies,
                     config=EngineConfig())
    after = jsonpatch.apply_patch(before, outcome.patch)
    assert after["spec"]["resources"]["requests"]["memory"] == "15Ei"


def test_the_pods_own_amounts_given_as_numbers_are_recorded_as_they_were(
    write_policies: WritePolicies,
) -> None:
    envelope = {"requests": {"cpu": 0.5, "memory": 2**70}, "limits": {"cpu": 2}}  # YAML numbers
    _, after = inject(write_policies, "add", envelope)
    stamp = after["metadata"]["annotations"][STATUS]
    assert json.loads(stamp)["podResources"] == envelope
    assert '"memory":1180591620717411303424' in stamp
