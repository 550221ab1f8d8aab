"""The engine end to end on one pod: what is added, where, and what the status records."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import pytest

from tests.conftest import WritePolicies
from webhook.engine import EngineConfig, Outcome, mutate, unmutate
from webhook.keys import Keys
from webhook.policy import PolicySet, load_policy_dir
from webhook.selection import Deny, Selection, SkipReason

KEY = "sidecar.company.com/inject"
STATUS = "sidecar.company.com/status"

LOGGING = """\
apiVersion: sidecar.company.com/v1alpha1
kind: InjectionPolicy
metadata: {name: logging}
spec:
  initContainers:
    - {name: logging-setup, image: "busybox:1.37"}
  containers:
    - name: logging-agent
      image: fluent/fluent-bit:3.2.4
      env: [{name: TAG, value: "${pod.namespace}.${pod.labels['app']}.${pod.name}"}]
      args: ["$(HOME)", "${pod.unknown}", "${pod.annotations[\\"team/owner\\"]}"]
  volumes: [{name: app-logs, emptyDir: {}}]
  volumeMounts:
    - {name: app-logs, mountPath: /var/log/app}
    - {name: app-logs, mountPath: /logs-web-only, containers: [web]}
  env: [{name: LOG_DIR, value: /var/log/app}, {name: SHARED, value: from-logging}]
  resources: {requests: {cpu: 50m}, limits: {cpu: 100m}}
  podAnnotations: {"logging.example.com/enabled": "true"}
  podLabels: {"logging/agent": fluent-bit}
"""

METRICS = """\
apiVersion: sidecar.company.com/v1alpha1
kind: InjectionPolicy
metadata: {name: metrics}
spec:
  initContainerPosition: last
  sidecarMode: classic
  initContainers:
    - {name: metrics-init, image: "busybox:1.37", resources: {requests: {cpu: 10m}}}
  containers:
    - {name: metrics-exporter, image: "prom/statsd-exporter:v0.28.0"}
  env: [{name: SHARED, value: from-metrics}, {name: METRICS_PORT, value: "9102"}]
"""


@pytest.fixture
def policies(write_policies: WritePolicies) -> PolicySet:
    return load_policy_dir(write_policies(logging=LOGGING, metrics=METRICS))


def pod(annotation: str | None = "logging", **spec: Any) -> dict[str, Any]:
    annotations = {"team/owner": "payments"}
    if annotation is not None:
        annotations[KEY] = annotation
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-1", "labels": {"app": "shop"}, "annotations": annotations},
        "spec": {"containers": [{"name": "web", "image": "nginx:1.27"},
                                {"name": "worker", "image": "worker:1"}], **spec},
    }


def run(policies: PolicySet, obj: dict[str, Any], config: EngineConfig | None = None,
        namespace: str = "shop") -> tuple[Outcome, dict[str, Any]]:
    outcome = mutate(obj, namespace=namespace, policies=policies, config=config or EngineConfig())
    return outcome, jsonpatch.apply_patch(obj, copy.deepcopy(outcome.patch))


def status_of(obj: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(obj["metadata"]["annotations"][STATUS])
    return result


def names(items: list[dict[str, Any]]) -> list[str]:
    return [item["name"] for item in items]


def test_native_sidecars_follow_the_init_containers_at_the_front(policies: PolicySet) -> None:
    outcome, out = run(policies, pod(initContainers=[{"name": "own-init", "image": "x"}]))
    assert outcome.result == "injected"
    assert names(out["spec"]["initContainers"]) == ["logging-setup", "logging-agent", "own-init"]
    assert out["spec"]["initContainers"][1]["restartPolicy"] == "Always"
    assert names(out["spec"]["containers"]) == ["web", "worker"]


def test_last_position_and_classic_sidecars(policies: PolicySet) -> None:
    _, out = run(policies, pod("logging,metrics", initContainers=[{"name": "own", "image": "x"}]))
    assert names(out["spec"]["initContainers"]) == [
        "logging-setup", "logging-agent", "own", "metrics-init"]
    assert names(out["spec"]["containers"]) == ["web", "worker", "metrics-exporter"]
    assert "restartPolicy" not in out["spec"]["containers"][2]


def test_auto_mode_is_classic_on_clusters_older_than_1_29(policies: PolicySet) -> None:
    _, out = run(policies, pod(), EngineConfig(kube_version=(1, 28)))
    assert names(out["spec"]["initContainers"]) == ["logging-setup"]
    assert names(out["spec"]["containers"]) == ["web", "worker", "logging-agent"]


def test_placeholders_are_evaluated_and_other_dollar_text_passes_through(
    policies: PolicySet,
) -> None:
    obj = pod()
    del obj["metadata"]["name"]
    obj["metadata"]["generateName"] = "web-7f9c-"
    _, out = run(policies, obj)
    agent = out["spec"]["initContainers"][1]
    assert agent["env"] == [{"name": "TAG", "value": "shop.shop.web-7f9c-"}]
    assert agent["args"] == ["$(HOME)", "${pod.unknown}", "payments"]


def test_resource_defaults_go_only_to_injected_containers_without_resources(
    policies: PolicySet,
) -> None:
    _, out = run(policies, pod("logging,metrics"))
    init = {c["name"]: c for c in out["spec"]["initContainers"]}
    assert init["logging-setup"]["resources"] == {"requests": {"cpu": "50m"},
                                                  "limits": {"cpu": "100m"}}
    assert init["metrics-init"]["resources"] == {"requests": {"cpu": "10m"}}
    assert "resources" not in out["spec"]["containers"][0]


def test_mounts_respect_the_container_selector_and_existing_paths(policies: PolicySet) -> None:
    obj = pod()
    obj["spec"]["containers"][1]["volumeMounts"] = [{"name": "own", "mountPath": "/var/log/app"}]
    _, out = run(policies, obj)
    web, worker = out["spec"]["containers"]
    assert [m["mountPath"] for m in web["volumeMounts"]] == ["/var/log/app", "/logs-web-only"]
    assert worker["volumeMounts"] == [{"name": "own", "mountPath": "/var/log/app"}]
    assert status_of(out)["volumeMounts"] == {"web": ["/var/log/app", "/logs-web-only"]}


def test_env_keeps_the_pods_names_then_the_first_policys(policies: PolicySet) -> None:
    obj = pod("logging,metrics")
    obj["spec"]["containers"][0]["env"] = [{"name": "LOG_DIR", "value": "/mine"}]
    _, out = run(policies, obj)
    web_env = {e["name"]: e["value"] for e in out["spec"]["containers"][0]["env"]}
    assert web_env == {"LOG_DIR": "/mine", "SHARED": "from-logging", "METRICS_PORT": "9102"}
    assert status_of(out)["env"]["web"] == ["SHARED", "METRICS_PORT"]
    assert status_of(out)["env"]["worker"] == ["LOG_DIR", "SHARED", "METRICS_PORT"]


def test_annotations_and_labels_are_added_only_if_absent_with_pointer_escaping(
    policies: PolicySet,
) -> None:
    obj = pod()
    obj["metadata"]["labels"]["logging/agent"] = "mine"
    outcome, out = run(policies, obj)
    assert out["metadata"]["labels"]["logging/agent"] == "mine"
    assert out["metadata"]["annotations"]["logging.example.com/enabled"] == "true"
    paths = [op["path"] for op in outcome.patch]
    assert "/metadata/annotations/sidecar.company.com~1status" in paths
    assert status_of(out)["podLabels"] == []


def test_absent_arrays_and_maps_are_created_whole(policies: PolicySet) -> None:
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"name": "bare", "annotations": {KEY: "logging"}},
                           "spec": {"containers": [{"name": "app", "image": "app:1"}]}}
    outcome, out = run(policies, obj)
    ops = {op["path"]: op for op in outcome.patch}
    for path in ("/metadata/labels", "/spec/initContainers", "/spec/volumes",
                 "/spec/containers/0/env", "/spec/containers/0/volumeMounts"):
        assert isinstance(ops[path]["value"], dict | list), path
    assert out["metadata"]["labels"] == {"logging/agent": "fluent-bit"}


def test_the_status_records_everything_and_a_revision(policies: PolicySet) -> None:
    _, out = run(policies, pod("metrics, logging"))
    status = status_of(out)
    assert status["policies"] == ["metrics", "logging"]
    assert status["initContainers"] == ["metrics-init", "logging-setup"]
    assert status["containers"] == ["metrics-exporter", "logging-agent"]
    assert status["volumes"] == ["app-logs"]
    assert status["podAnnotations"] == ["logging.example.com/enabled"]
    assert len(status["revision"]) == 16


def test_a_clash_with_the_pod_denies_naming_both_sides(policies: PolicySet) -> None:
    outcome, _ = run(policies, pod(volumes=[{"name": "app-logs", "emptyDir": {}}]))
    assert not outcome.allowed
    assert outcome.message == (
        "pod shop/web-1: injection policy 'logging' adds volume 'app-logs', which clashes with "
        "the pod's volume 'app-logs'; rename one of them or leave 'logging' out of the "
        f"{KEY} annotation")
    assert outcome.patch == []


def test_a_clash_between_two_policies_names_both(write_policies: WritePolicies) -> None:
    twin = LOGGING.replace("name: logging}", "name: twin}")
    policies = load_policy_dir(write_policies(logging=LOGGING, twin=twin))
    outcome, _ = run(policies, pod("logging,twin"))
    assert isinstance(outcome.decision, Deny)
    assert ("injection policy 'twin' adds container 'logging-setup', which clashes with "
            "container 'logging-setup' of injection policy 'logging'") in outcome.decision.message


def test_on_conflict_skip_drops_the_policy_and_warns(policies: PolicySet) -> None:
    obj = pod("metrics,logging", containers=[{"name": "logging-agent", "image": "mine"}])
    outcome, out = run(policies, obj, EngineConfig(on_conflict="skip"))
    assert outcome.policies == ("metrics",)
    assert outcome.warnings == (
        "pod shop/web-1: injection policy 'logging' skipped: injection policy 'logging' adds "
        "container 'logging-agent', which clashes with the pod's container 'logging-agent'",)
    assert status_of(out)["policies"] == ["metrics"]


def test_when_every_policy_clashes_the_pod_is_stamped_conflict(policies: PolicySet) -> None:
    obj = pod(containers=[{"name": "logging-agent", "image": "mine"}])
    outcome, out = run(policies, obj, EngineConfig(on_conflict="skip"))
    assert outcome.decision.reason is SkipReason.CONFLICT  # type: ignore[union-attr]
    assert status_of(out) == {"policies": [], "skipped": "conflict"}


def test_a_skip_is_stamped_with_its_reason(policies: PolicySet) -> None:
    _, out = run(policies, pod("false"))
    assert status_of(out) == {"policies": [], "skipped": "opted-out"}


def test_system_namespaces_get_no_patch_at_all(policies: PolicySet) -> None:
    outcome, _ = run(policies, pod(), namespace="kube-system")
    assert outcome.patch == []
    assert outcome.allowed


def test_injecting_twice_is_a_no_op(policies: PolicySet) -> None:
    _, once = run(policies, pod("logging,metrics"))
    outcome, twice = run(policies, once)
    assert outcome.patch == []
    assert twice == once


def test_a_policy_reloaded_under_the_same_name_is_rendered_as_it_is_now(
    policies: PolicySet, write_policies: WritePolicies,
) -> None:
    _, before = run(policies, pod("logging,metrics"))  # what render works out per policy list
    changed = LOGGING.replace("fluent/fluent-bit:3.2.4", "fluent/fluent-bit:4.0.0").replace(
        "volumes: [{name: app-logs, emptyDir: {}}]",
        "volumes: [{name: app-logs, emptyDir: {}}, {name: buffer, emptyDir: {}}]")
    reloaded = load_policy_dir(write_policies(logging=changed, metrics=METRICS))
    outcome, after = run(reloaded, pod("logging,metrics"))
    assert after["spec"]["initContainers"][1]["image"] == "fluent/fluent-bit:4.0.0"
    assert names(after["spec"]["volumes"]) == ["app-logs", "buffer"]
    assert status_of(after)["revision"] != status_of(before)["revision"]
    assert outcome.policies == ("logging", "metrics")
    clash = pod("logging,metrics", volumes=[{"name": "buffer", "emptyDir": {}}])
    assert not run(policies, clash)[0].message  # the old set adds no `buffer`
    assert "volume 'buffer'" in (run(reloaded, clash)[0].message or "")


def test_remove_undoes_exactly_what_status_records(policies: PolicySet) -> None:
    original = pod("logging,metrics", initContainers=[{"name": "own", "image": "x"}],
                   volumes=[{"name": "data", "emptyDir": {}}])
    _, injected = run(policies, original)
    removal = unmutate(injected, namespace="shop", config=EngineConfig())
    assert jsonpatch.apply_patch(injected, removal) == original


def test_remove_without_a_status_is_an_error() -> None:
    with pytest.raises(ValueError, match="missing or not valid JSON"):
        unmutate(pod(), namespace="shop", config=EngineConfig())


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        pytest.param([], "pod <unnamed>: the pod is not an object", id="not-an-object"),
        pytest.param({"metadata": {"name": "x"}, "spec": {"containers": {}}},
                     "pod shop/x: spec.containers must be a list", id="containers-not-a-list"),
        pytest.param({"metadata": {"name": "x"}, "spec": {"containers": [{"image": "a"}]}},
                     "pod shop/x: spec.containers[0] must be an object with a name",
                     id="container-without-name"),
        pytest.param({"metadata": {"name": "x", "annotations": []}, "spec": {}},
                     "pod shop/x: metadata.annotations must be an object", id="bad-annotations"),
    ],
)
def test_a_malformed_pod_is_denied_with_the_field_not_raised(
    policies: PolicySet, obj: Any, message: str,
) -> None:
    outcome = mutate(obj, namespace="shop", policies=policies, config=EngineConfig())
    assert outcome.message == message


def test_the_configured_prefix_is_used_for_every_key(policies: PolicySet) -> None:
    config = EngineConfig(selection=Selection(keys=Keys("acme.io")))
    obj = pod(None)
    obj["metadata"]["annotations"]["acme.io/inject"] = "metrics"
    _, out = run(policies, obj, config)
    assert "acme.io/status" in out["metadata"]["annotations"]


def test_a_trailing_slash_does_not_make_a_second_mount_on_the_same_path(
    policies: PolicySet,
) -> None:
    obj = pod()
    obj["spec"]["containers"][0]["volumeMounts"] = [{"name": "own", "mountPath": "/var/log/app/"}]
    _, out = run(policies, obj)
    paths = [m["mountPath"] for m in out["spec"]["containers"][0]["volumeMounts"]]
    assert paths == ["/var/log/app/", "/logs-web-only"]


KUBELET = """\
apiVersion: sidecar.company.com/v1alpha1
kind: InjectionPolicy
metadata: {name: registrar}
spec:
  containers:
    - name: registrar
      image: "registrar:${pod.annotations['tag']}"
      command: ["/bin/register", "--tags=${pod.annotations['tags']}", "--pod=$(POD_NAME)"]
      env:
        - {name: TOKEN, valueFrom: {secretKeyRef: {name: consul, key: token}}}
        - {name: TAGS, value: "${pod.annotations['tags']}"}
  env: [{name: REGISTERED_AS, value: "${pod.annotations['tags']}"}]
  podAnnotations: {"registrar/tags": "${pod.annotations['tags']}"}
"""


def test_pod_metadata_is_escaped_where_the_kubelet_expands_and_nowhere_else(
    write_policies: WritePolicies,
) -> None:
    policies = load_policy_dir(write_policies(registrar=KUBELET))
    obj = pod()
    obj["metadata"]["annotations"].update({KEY: "registrar", "tags": "a,$(TOKEN),$$x",
                                           "tag": "1.0$(TOKEN)"})
    _, out = run(policies, obj)
    (agent,) = out["spec"]["initContainers"]
    assert agent["command"] == ["/bin/register", "--tags=a,$$(TOKEN),$$$$x", "--pod=$(POD_NAME)"]
    assert agent["env"][1] == {"name": "TAGS", "value": "a,$$(TOKEN),$$$$x"}
    assert agent["image"] == "registrar:1.0$(TOKEN)"  # never expanded: written as it is
    app_env = {e["name"]: e.get("value") for e in out["spec"]["containers"][0]["env"]}
    assert app_env["REGISTERED_AS"] == "a,$$(TOKEN),$$$$x"
    assert out["metadata"]["annotations"]["registrar/tags"] == "a,$(TOKEN),$$x"
