"""`drift`: which stored pods no longer carry what the policies give them, grouped by workload,
restarted as `kubectl rollout restart` does, and reported as a table, JSON or YAML; and the
command's bad-input answers (one line, exit 2)."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonpatch
import pytest
import yaml
from click.testing import CliRunner, Result

from tests.conftest import WritePolicies
from webhook.cli import cli, server_flags_from_args
from webhook.drift import (
    Expected,
    Group,
    Namespace,
    PodDrift,
    Reason,
    Report,
    Workload,
    classify,
    group,
    in_scope,
    parents_to_read,
    render,
    restart_patch,
)
from webhook.engine import EngineConfig, Outcome, mutate
from webhook.errors import ClusterError, PolicyError
from webhook.keys import Keys
from webhook.kube import Cluster
from webhook.policy import PolicySet, legacy_revision, load_policy_dir, revision
from webhook.selection import Inject, Selection
from webhook.settings import Settings
from webhook.survey import (
    Request,
    chart_fullname,
    load_config_map_policies,
    policies_config_map,
    restart,
    run,
    survey,
)

INJECT = "sidecar.company.com/inject"
STATUS = "sidecar.company.com/status"
POLICIES = "sidecar.company.com/policies"
NOW = datetime(2026, 12, 1, 9, 30, 5, tzinfo=UTC)

AGENT = """\
apiVersion: sidecar.company.com/v1alpha1
kind: InjectionPolicy
metadata: {name: agent}
spec:
  containers: [{name: agent, image: "agent:1"}]
  volumes: [{name: agent-data, emptyDir: {}}]
  volumeMounts: [{name: agent-data, mountPath: /data}]
  env: [{name: AGENT, value: "on"}]
  podAnnotations: {agent.example.com/on: "true"}
"""
AGENT_2 = AGENT.replace("agent:1", "agent:2")
#: injects a container named like the pod's own: every pod is denied a clash
CLASHING_AGENT = AGENT.replace("name: agent, image", "name: app, image")
EXPORTER = """\
apiVersion: sidecar.company.com/v1alpha1
kind: InjectionPolicy
metadata: {name: exporter}
spec:
  containers: [{name: exporter, image: "exporter:1"}]
"""
PRIVILEGED = """\
apiVersion: sidecar.company.com/v1alpha1
kind: InjectionPolicy
metadata: {name: privileged}
spec:
  containers: [{name: scanner, image: "scanner:1", securityContext: {privileged: true}}]
"""

OPTED_IN = Namespace("shop", {INJECT: "enabled"})
CONFIG = EngineConfig()


def policy_set(write_policies: WritePolicies, **files: str) -> PolicySet:
    directory = write_policies(**files)
    for stale in directory.glob("*.yaml"):
        if stale.stem not in files:
            stale.unlink()
    return load_policy_dir(directory)


def new_pod(name: str = "web-1", *, annotation: str | None = "agent",
            labels: dict[str, str] | None = None,
            owner: tuple[str, str] | None = ("ReplicaSet", "web-5d8f")) -> dict[str, Any]:
    """A pod as a controller sends it to the apiserver."""
    metadata: dict[str, Any] = {"name": name, "namespace": "shop",
                                "labels": {"app": "shop", **(labels or {})}, "annotations": {}}
    if annotation is not None:
        metadata["annotations"][INJECT] = annotation
    if owner is not None:
        metadata["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner[0],
                                        "name": owner[1], "controller": True, "uid": "u"}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
            "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}}


def stored(pod: dict[str, Any], policies: PolicySet | None, *,
           namespace: Namespace = OPTED_IN) -> dict[str, Any]:
    """`pod` as the apiserver stores it after the webhook (with `policies`; None: the webhook
    was down) and the apiserver's defaulting."""
    result = copy.deepcopy(pod)
    if policies is not None:
        outcome = mutate(pod, namespace=namespace.name, policies=policies, config=CONFIG,
                         namespace_policies=namespace.default_policies(Keys()),
                         pod_security=namespace.pod_security, namespace_labels=namespace.labels)
        assert outcome.allowed, outcome.message
        result = jsonpatch.apply_patch(pod, outcome.patch)
    for container in result["spec"]["containers"] + result["spec"].get("initContainers", []):
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("imagePullPolicy", "IfNotPresent")
    result["spec"]["restartPolicy"] = "Always"
    result["metadata"]["uid"] = f"uid-{result['metadata']['name']}"
    result["status"] = {"phase": "Pending"}
    return result


def check(pod: dict[str, Any], policies: PolicySet, *, namespace: Namespace = OPTED_IN,
          config: EngineConfig = CONFIG) -> PodDrift | None:
    return classify(pod, namespace=namespace, policies=policies, config=config)


# ---------------------------------------------------------------------------------------------
# What drifted


def test_a_pod_injected_with_the_current_policies_has_not_drifted(
    write_policies: WritePolicies,
) -> None:
    policies = policy_set(write_policies, agent=AGENT)
    assert check(stored(new_pod(), policies), policies) is None


def test_a_changed_policy_shows_as_a_stale_revision(write_policies: WritePolicies) -> None:
    before = policy_set(write_policies, agent=AGENT)
    pod = stored(new_pod(), before)
    after = policy_set(write_policies, agent=AGENT_2)
    found = check(pod, after)
    assert found is not None
    assert found.reason is Reason.STALE_REVISION
    recorded = json.loads(pod["metadata"]["annotations"][STATUS])["revision"]
    assert found.recorded is not None
    assert found.recorded.revision == recorded
    assert found.expected.stamp is not None
    assert found.expected.stamp.revision != recorded
    assert found.message == (f"injected with agent at revision {recorded}; the policies give "
                             f"revision {found.expected.stamp.revision} now")


def test_a_pod_stamped_with_the_old_revision_form_has_not_drifted_for_that_alone(
    write_policies: WritePolicies,
) -> None:
    """0.1.0 stamped a SHA-256 prefix, which a compiled admission policy cannot compute: such a
    pod is not stale while its policies are unchanged, and is once they change."""
    policies = policy_set(write_policies, agent=AGENT)
    pod = stored(new_pod(), policies)
    status = json.loads(pod["metadata"]["annotations"][STATUS])
    status["revision"] = legacy_revision([policies["agent"]])
    assert status["revision"] != revision([policies["agent"]])
    pod["metadata"]["annotations"][STATUS] = json.dumps(status)
    assert check(pod, policies) is None
    found = check(pod, policy_set(write_policies, agent=AGENT_2))
    assert found is not None
    assert found.reason is Reason.STALE_REVISION


def test_a_policy_that_no_longer_exists_is_named(write_policies: WritePolicies) -> None:
    pod = stored(new_pod(), policy_set(write_policies, agent=AGENT))
    found = check(pod, policy_set(write_policies, exporter=EXPORTER))
    assert found is not None
    assert found.reason is Reason.POLICY_REMOVED
    assert found.message == ("injected with agent; policy 'agent' no longer exists; the webhook "
                             "would now skip it (unknown-policy)")


def test_changed_namespace_defaults_show_as_policies_changed(
    write_policies: WritePolicies,
) -> None:
    policies = policy_set(write_policies, agent=AGENT, exporter=EXPORTER)
    before = Namespace("shop", {INJECT: "enabled"}, {POLICIES: "agent"})
    pod = stored(new_pod(annotation=None), policies, namespace=before)
    assert check(pod, policies, namespace=before) is None
    now = Namespace("shop", {INJECT: "enabled"}, {POLICIES: "agent,exporter"})
    found = check(pod, policies, namespace=now)
    assert found is not None
    assert found.reason is Reason.POLICIES_CHANGED
    assert found.message == "injected with agent; the webhook would now inject agent, exporter"


def test_a_namespace_that_now_enforces_pod_security_leaves_the_policy_out(
    write_policies: WritePolicies,
) -> None:
    policies = policy_set(write_policies, privileged=PRIVILEGED)
    pod = stored(new_pod(annotation="privileged"), policies)
    enforcing = Namespace("shop", {INJECT: "enabled",
                                   "pod-security.kubernetes.io/enforce": "baseline"})
    found = check(pod, policies, namespace=enforcing)
    assert found is not None
    assert found.reason is Reason.POLICIES_CHANGED
    assert found.expected.stamp is not None
    assert found.expected.stamp.skipped == "pod-security"


def test_an_unstamped_pod_says_what_the_webhook_would_do(write_policies: WritePolicies) -> None:
    policies = policy_set(write_policies, agent=AGENT)
    found = check(stored(new_pod(), None), policies)
    assert found is not None
    assert found.reason is Reason.UNSTAMPED
    assert found.recorded is None
    assert found.message.endswith("; it would now inject agent")
    assert found.message.startswith(f"no {STATUS} annotation: the webhook never saw this pod")


def test_an_unstamped_pod_that_opts_out_by_annotation_has_not_drifted(
    write_policies: WritePolicies,
) -> None:
    policies = policy_set(write_policies, agent=AGENT)
    assert check(stored(new_pod(annotation="false"), None), policies) is None


def test_a_skip_whose_reason_no_longer_holds_is_outdated(write_policies: WritePolicies) -> None:
    pod = stored(new_pod(annotation="exporter"), policy_set(write_policies, agent=AGENT))
    assert json.loads(pod["metadata"]["annotations"][STATUS])["skipped"] == "unknown-policy"
    found = check(pod, policy_set(write_policies, agent=AGENT, exporter=EXPORTER))
    assert found is not None
    assert found.reason is Reason.SKIP_OUTDATED
    assert found.message == ("stamped skipped (unknown-policy); the webhook would now inject "
                             "exporter")


def test_a_skip_that_still_holds_has_not_drifted(write_policies: WritePolicies) -> None:
    policies = policy_set(write_policies, agent=AGENT)
    pod = stored(new_pod(annotation="exporter"), policies)
    assert check(pod, policies) is None


def test_a_pod_like_which_would_now_be_denied_says_so(write_policies: WritePolicies) -> None:
    pod = stored(new_pod(), policy_set(write_policies, agent=AGENT))
    found = check(pod, policy_set(write_policies, agent=CLASHING_AGENT))
    assert found is not None
    assert found.reason is Reason.WOULD_DENY
    assert found.expected.denial is not None
    assert "'app'" in found.expected.denial


def test_an_unreadable_stamp_is_reported(write_policies: WritePolicies) -> None:
    policies = policy_set(write_policies, agent=AGENT)
    pod = stored(new_pod(), None)
    pod["metadata"]["annotations"][STATUS] = "{not json"
    found = check(pod, policies)
    assert found is not None
    assert found.reason is Reason.INVALID_STAMP
    assert found.message.endswith("the webhook would now inject agent")


def test_a_patch_the_apiserver_would_refuse_counts_as_a_denial(
    write_policies: WritePolicies, monkeypatch: pytest.MonkeyPatch,
) -> None:
    policies = policy_set(write_policies, agent=AGENT)
    unappliable = Outcome(Inject(("agent",)), [{"op": "remove", "path": "/spec/nope"}])
    monkeypatch.setattr("webhook.drift.mutate", lambda *_, **__: unappliable)
    found = check(stored(new_pod(), None), policies)
    assert found is not None
    assert found.expected.denial is not None
    assert found.expected.denial.startswith("the apiserver would refuse the webhook's patch")


def test_the_configured_prefix_is_the_one_read(write_policies: WritePolicies) -> None:
    policies = policy_set(write_policies, agent=AGENT)
    config = EngineConfig(selection=Selection(keys=Keys("example.org")))
    pod = stored(new_pod(), policies)  # stamped under the default prefix only
    pod["metadata"]["annotations"]["example.org/inject"] = "agent"
    found = check(pod, policies, namespace=Namespace("shop", {"example.org/inject": "enabled"}),
                  config=config)
    assert found is not None
    assert found.reason is Reason.UNSTAMPED


@pytest.mark.parametrize(("namespace", "labels", "extra", "expected"), [
    pytest.param("shop", {INJECT: "enabled"}, {}, True, id="opted-in-namespace"),
    pytest.param("plain", {}, {}, False, id="plain-namespace"),
    pytest.param("plain", {}, {"labels": {INJECT: "enabled"}}, True, id="pod-label-opt-in"),
    pytest.param("shop", {INJECT: "enabled"}, {"labels": {INJECT: "false"}}, False,
                 id="pod-label-opt-out"),
    pytest.param("kube-system", {INJECT: "enabled"}, {}, False, id="system-namespace"),
    pytest.param("injector", {INJECT: "enabled"}, {}, False, id="the-webhooks-own-namespace"),
    pytest.param("shop", {INJECT: "enabled"}, {"deletionTimestamp": "2026-12-01T00:00:00Z"},
                 False, id="terminating"),
    pytest.param("shop", {INJECT: "enabled"}, {"phase": "Succeeded"}, False, id="finished"),
])
def test_which_pods_are_checked(namespace: str, labels: dict[str, str], extra: dict[str, Any],
                                expected: bool) -> None:
    pod = new_pod(labels=extra.get("labels"))
    if "deletionTimestamp" in extra:
        pod["metadata"]["deletionTimestamp"] = extra["deletionTimestamp"]
    pod["status"] = {"phase": extra.get("phase", "Running")}
    selection = Selection(own_namespace="injector")
    assert in_scope(pod, Namespace(namespace, labels), selection) is expected


# ---------------------------------------------------------------------------------------------
# Owners


def drift_of(name: str, owner: tuple[str, str] | None, namespace: str = "shop") -> PodDrift:
    return PodDrift(namespace, name, Reason.UNSTAMPED, "m", None, Expected(None), owner)


def owned(kind: str, name: str) -> dict[str, Any]:
    return {"metadata": {"ownerReferences": [
        {"kind": "Other", "name": "not-the-controller"},
        {"kind": kind, "name": name, "controller": True}]}}


def test_pods_are_grouped_by_the_workload_a_person_manages() -> None:
    drifts = [
        drift_of("web-5d8f-b", ("ReplicaSet", "web-5d8f")),
        drift_of("web-5d8f-a", ("ReplicaSet", "web-5d8f")),
        drift_of("web-77aa-c", ("ReplicaSet", "web-77aa")),
        drift_of("orphan-x", ("ReplicaSet", "orphan")),
        drift_of("canary-1-x", ("ReplicaSet", "canary-1")),
        drift_of("db-0", ("StatefulSet", "db")),
        drift_of("agent-q", ("DaemonSet", "agent")),
        drift_of("report-1-z", ("Job", "report-1")),
        drift_of("migrate-y", ("Job", "migrate")),
        drift_of("lonely", None),
        drift_of("web-9-k", ("ReplicaSet", "web-9"), namespace="blog"),
    ]
    assert parents_to_read(drifts) == {
        ("shop", "ReplicaSet", "web-5d8f"), ("shop", "ReplicaSet", "web-77aa"),
        ("shop", "ReplicaSet", "orphan"), ("shop", "ReplicaSet", "canary-1"),
        ("shop", "Job", "report-1"),
        ("shop", "Job", "migrate"), ("blog", "ReplicaSet", "web-9")}
    parents: dict[tuple[str, str, str], dict[str, Any] | None] = {
        ("shop", "ReplicaSet", "web-5d8f"): owned("Deployment", "web"),
        ("shop", "ReplicaSet", "web-77aa"): owned("Deployment", "web"),
        ("shop", "ReplicaSet", "orphan"): {"metadata": {}},
        ("shop", "ReplicaSet", "canary-1"): owned("Rollout", "canary"),  # Argo Rollouts
        ("shop", "Job", "report-1"): owned("CronJob", "report"),
        ("shop", "Job", "migrate"): None,  # gone since
        ("blog", "ReplicaSet", "web-9"): owned("Deployment", "web"),
    }
    groups = group(drifts, parents)
    assert [(g.workload.namespace, g.workload.kind, g.workload.name, [p.name for p in g.pods])
            for g in groups] == [
        ("blog", "Deployment", "web", ["web-9-k"]),
        ("shop", "CronJob", "report", ["report-1-z"]),
        ("shop", "DaemonSet", "agent", ["agent-q"]),
        ("shop", "Deployment", "web", ["web-5d8f-a", "web-5d8f-b", "web-77aa-c"]),
        ("shop", "Job", "migrate", ["migrate-y"]),
        ("shop", "Pod", "lonely", ["lonely"]),
        ("shop", "ReplicaSet", "orphan", ["orphan-x"]),
        ("shop", "Rollout", "canary", ["canary-1-x"]),
        ("shop", "StatefulSet", "db", ["db-0"]),
    ]


# ---------------------------------------------------------------------------------------------
# Restarts


class FakeCluster:
    """A `Source` on plain dicts that records the restarts asked of it."""

    def __init__(self, *, namespaces: list[dict[str, Any]] | None = None,
                 pods: list[dict[str, Any]] | None = None,
                 objects: dict[tuple[str, str, str], dict[str, Any]] | None = None,
                 config_maps: dict[tuple[str, str], dict[str, Any]] | None = None,
                 refuse: str | None = None) -> None:
        self._namespaces = namespaces or []
        self._pods = pods or []
        self.objects = objects or {}
        self.config_maps = config_maps or {}
        self.refuse = refuse
        self.restarts: list[tuple[str, str, str, dict[str, Any], bool]] = []
        self.deployments: dict[tuple[str, str], dict[str, Any]] = {}
        self.webhooks: dict[str, dict[str, Any]] = {}
        self.refuse_webhooks = False

    def version(self) -> tuple[int, int] | None:
        return (1, 37)

    def namespaces(self) -> list[dict[str, Any]]:
        return copy.deepcopy(self._namespaces)

    def namespace(self, name: str) -> dict[str, Any] | None:
        return next((ns for ns in self._namespaces if ns["metadata"]["name"] == name), None)

    def pods(self, namespace: str | None = None, *,
             label_selector: str | None = None) -> list[dict[str, Any]]:
        found = [p for p in self._pods if namespace in (None, p["metadata"]["namespace"])]
        if label_selector is not None:
            key, _, value = label_selector.partition("=")
            found = [p for p in found if (p["metadata"].get("labels") or {}).get(key) == value]
        return copy.deepcopy(found)

    def read(self, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((namespace, kind, name))

    def config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.config_maps.get((namespace, name))

    def deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.deployments.get((namespace, name))

    def mutating_webhooks(self, name: str) -> dict[str, Any] | None:
        if self.refuse_webhooks:
            raise ClusterError(f"cannot read MutatingWebhookConfiguration {name}: 403 Forbidden")
        return self.webhooks.get(name)

    def restart(self, namespace: str, kind: str, name: str, body: dict[str, Any], *,
                dry_run: bool) -> dict[str, Any]:
        if self.refuse is not None:
            raise ClusterError(self.refuse)
        self.restarts.append((namespace, kind, name, body, dry_run))
        return self.objects.get((namespace, kind, name), {"spec": {}})


def test_the_restart_patch_is_kubectls_with_an_rfc3339_time() -> None:
    paris = datetime(2026, 12, 1, 10, 30, 5, tzinfo=timezone(timedelta(hours=1)))
    assert restart_patch(paris) == {"spec": {"template": {"metadata": {"annotations": {
        "kubectl.kubernetes.io/restartedAt": "2026-12-01T09:30:05Z"}}}}}


def report_of(*owners: tuple[str, str]) -> Report:
    groups = [Group(Workload("shop", kind, name), [drift_of(f"{name}-1", None)])
              for kind, name in owners]
    return Report(len(owners), groups)


def test_only_deployments_statefulsets_and_daemonsets_are_restarted() -> None:
    report = report_of(("Deployment", "web"), ("StatefulSet", "db"), ("DaemonSet", "agent"),
                       ("CronJob", "report"), ("Job", "migrate"), ("Pod", "lonely"),
                       ("ReplicaSet", "orphan"), ("Rollout", "canary"))
    cluster = FakeCluster()
    assert restart(cluster, report, dry_run=False, now=NOW) == []
    assert [(kind, name, dry) for _, kind, name, _, dry in cluster.restarts] == [
        ("Deployment", "web", False), ("StatefulSet", "db", False),
        ("DaemonSet", "agent", False)]
    assert all(body == restart_patch(NOW) for *_, body, _ in cluster.restarts)
    actions = {item.workload.kind: item.restart for item in report.groups}
    assert actions["Deployment"] is not None
    assert actions["Deployment"].action == "restarted"
    assert actions["CronJob"] is not None
    assert actions["CronJob"].describe() == (
        "not restarted: the next CronJob run picks up the change")
    assert actions["Job"] is not None
    assert actions["Job"].describe().startswith(
        "not restarted: a Job's pods cannot be rolled")
    assert actions["Pod"] is not None
    assert "never deleted" in actions["Pod"].message
    assert actions["Rollout"] is not None
    assert actions["Rollout"].message == ("drift restarts Deployments, StatefulSets and "
                                          "DaemonSets; restart this Rollout yourself")


def test_a_dry_run_asks_the_apiserver_to_store_nothing() -> None:
    report = report_of(("Deployment", "web"))
    cluster = FakeCluster()
    restart(cluster, report, dry_run=True, now=NOW)
    assert [dry for *_, dry in cluster.restarts] == [True]
    assert report.groups[0].restart is not None
    assert report.groups[0].restart.describe() == "would restart (dry run)"


def test_a_workload_whose_new_pods_would_be_denied_is_not_restarted(
    write_policies: WritePolicies,
) -> None:
    pod = stored(new_pod(owner=("StatefulSet", "db")), policy_set(write_policies, agent=AGENT))
    found = check(pod, policy_set(write_policies, agent=CLASHING_AGENT))
    assert found is not None
    report = Report(1, group([found], {}))
    cluster = FakeCluster()
    restart(cluster, report, dry_run=False, now=NOW)
    assert cluster.restarts == []
    assert report.groups[0].restart is not None
    assert report.groups[0].restart.message.startswith("its new pods would be denied")


def test_a_refused_restart_is_an_error_and_says_why() -> None:
    report = report_of(("Deployment", "web"))
    errors = restart(FakeCluster(refuse="cannot restart Deployment shop/web: 403 Forbidden"),
                     report, dry_run=False, now=NOW)
    assert errors == ["cannot restart Deployment shop/web: 403 Forbidden"]
    assert report.groups[0].restart is not None
    assert report.groups[0].restart.action == "failed"


def test_what_keeps_a_restarted_workload_from_rolling_is_said() -> None:
    report = report_of(("Deployment", "web"), ("StatefulSet", "db"))
    cluster = FakeCluster(objects={
        ("shop", "Deployment", "web"): {"spec": {"paused": True}},
        ("shop", "StatefulSet", "db"): {"spec": {"updateStrategy": {"type": "OnDelete"}}}})
    restart(cluster, report, dry_run=False, now=NOW)
    notes = [item.restart.message for item in report.groups if item.restart]
    assert notes == ["the Deployment is paused: its pods roll when it is resumed",
                     "its updateStrategy is OnDelete: delete its pods to roll them"]


# ---------------------------------------------------------------------------------------------
# The survey and the report


def namespace_object(name: str, labels: dict[str, str] | None = None,
                     annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}}}


@pytest.fixture
def cluster(write_policies: WritePolicies) -> FakeCluster:
    """A shop namespace with a Deployment's two injected pods, one unstamped bare pod, an
    opted-out pod; a plain namespace with one pod opted in by label; kube-system."""
    old = policy_set(write_policies, agent=AGENT)
    plain = Namespace("blog")
    pods = [stored(new_pod("web-5d8f-a"), old), stored(new_pod("web-5d8f-b"), old),
            stored(new_pod("lonely", owner=None), None),
            stored(new_pod("quiet", labels={INJECT: "false"}, owner=None), None)]
    label_pod = new_pod("blog-1", labels={INJECT: "enabled"}, owner=("StatefulSet", "blog"))
    label_pod["metadata"]["namespace"] = "blog"
    pods += [stored(label_pod, old, namespace=plain),
             {**stored(new_pod("dns", owner=None), None),
              "metadata": {"name": "dns", "namespace": "kube-system"}}]
    return FakeCluster(
        namespaces=[namespace_object("shop", {INJECT: "enabled"}), namespace_object("blog"),
                    namespace_object("kube-system", {INJECT: "enabled"})],
        pods=pods,
        objects={("shop", "ReplicaSet", "web-5d8f"): owned("Deployment", "web")})


def test_the_survey_checks_opted_in_pods_and_groups_the_drifted(
    cluster: FakeCluster, write_policies: WritePolicies,
) -> None:
    report = survey(cluster, namespace=None, policies=policy_set(write_policies, agent=AGENT_2),
                    config=CONFIG)
    assert report.checked == 4  # web-5d8f-a, web-5d8f-b, lonely, blog-1
    assert [(str(g.workload), [(p.name, p.reason.value) for p in g.pods])
            for g in report.groups] == [
        ("StatefulSet blog/blog", [("blog-1", "stale-revision")]),
        ("Deployment shop/web", [("web-5d8f-a", "stale-revision"),
                                 ("web-5d8f-b", "stale-revision")]),
        ("Pod shop/lonely", [("lonely", "unstamped")]),
    ]


def test_one_namespace_is_checked_alone(cluster: FakeCluster,
                                        write_policies: WritePolicies) -> None:
    report = survey(cluster, namespace="blog", policies=policy_set(write_policies, agent=AGENT),
                    config=CONFIG)
    assert (report.checked, report.groups) == (1, [])
    with pytest.raises(ClusterError, match="namespace nope not found"):
        survey(cluster, namespace="nope", policies=policy_set(write_policies, agent=AGENT),
               config=CONFIG)


def test_the_table_has_a_row_per_pod_the_restarts_and_a_summary(
    cluster: FakeCluster, write_policies: WritePolicies,
) -> None:
    report = survey(cluster, namespace="shop", policies=policy_set(write_policies, agent=AGENT_2),
                    config=CONFIG)
    restart(cluster, report, dry_run=False, now=NOW)
    lines = render(report, "table").splitlines()
    assert lines[0].split() == ["NAMESPACE", "WORKLOAD", "POD", "REASON", "MESSAGE"]
    assert lines[1].split()[:4] == ["shop", "Deployment/web", "web-5d8f-a", "stale-revision"]
    assert lines[3].split()[:4] == ["shop", "Pod/lonely", "lonely", "unstamped"]
    assert lines[0].index("REASON") == lines[3].index("unstamped")  # aligned columns
    assert lines[5:] == [
        "Deployment shop/web: restarted",
        "Pod shop/lonely: not restarted: a bare pod is never deleted by drift; delete and "
        "re-create it yourself",
        "", "3 of 3 pods drifted, in 2 workloads"]


def test_no_drift_is_one_line() -> None:
    assert render(Report(7), "table") == (
        "no drift: 7 pods checked, each carries what the policies give it now\n")
    assert json.loads(render(Report(7), "json")) == {"checked": 7, "drifted": 0, "workloads": []}


def test_json_and_yaml_carry_the_same_report(cluster: FakeCluster,
                                             write_policies: WritePolicies) -> None:
    policies = policy_set(write_policies, agent=AGENT_2)
    report = survey(cluster, namespace="shop", policies=policies, config=CONFIG)
    data = json.loads(render(report, "json"))
    assert yaml.safe_load(render(report, "yaml")) == data
    assert data["checked"] == 3
    assert data["drifted"] == 3
    web = data["workloads"][0]
    assert {k: web[k] for k in ("kind", "namespace", "name", "restart")} == {
        "kind": "Deployment", "namespace": "shop", "name": "web", "restart": None}
    first = web["pods"][0]
    assert (first["name"], first["reason"]) == ("web-5d8f-a", "stale-revision")
    assert first["recorded"]["policies"] == first["expected"]["policies"] == ["agent"]
    assert first["recorded"]["revision"] != first["expected"]["revision"]
    lonely = data["workloads"][1]["pods"][0]
    assert (lonely["reason"], lonely["recorded"]) == ("unstamped", None)


# ---------------------------------------------------------------------------------------------
# The chart's policies and the whole command


@pytest.mark.parametrize(("release", "fullname"), [
    pytest.param("sidecar-injector", "sidecar-injector", id="the-chart-name"),
    pytest.param("prod-sidecar-injector-2", "prod-sidecar-injector-2", id="containing-it"),
    pytest.param("e2e", "e2e-sidecar-injector", id="another-name"),
    pytest.param("r" * 47, "r" * 47 + "-sidecar-injecto", id="truncated-to-63"),
    pytest.param("r" * 62, "r" * 62, id="no-dash-left-at-the-end"),
])
def test_the_release_gives_the_charts_fullname(release: str, fullname: str) -> None:
    assert chart_fullname(release) == fullname
    assert policies_config_map(release) == f"{fullname}-policies"


def test_a_config_map_loads_like_the_directory(write_policies: WritePolicies) -> None:
    loaded = load_config_map_policies({"data": {"agent.yaml": AGENT, "README.txt": "hi",
                                                "..data": "x"}}, "configmap/ns/p")
    assert loaded.names() == ["agent"]
    assert loaded["agent"].digest == policy_set(write_policies, agent=AGENT)["agent"].digest


def test_a_bad_config_map_policy_is_named_by_its_key() -> None:
    broken = AGENT.replace("image: \"agent:1\"", "image: 3")
    with pytest.raises(PolicyError) as caught:
        load_config_map_policies({"data": {"agent.yaml": broken}}, "configmap/ns/p")
    assert caught.value.problems
    assert all(p.startswith("configmap/ns/p/agent.yaml:") for p in caught.value.problems)


def request(**fields: Any) -> Request:
    return Request(Settings(), **fields)


def test_the_command_exits_1_on_drift_and_0_without(cluster: FakeCluster,
                                                    write_policies: WritePolicies) -> None:
    directory = write_policies(agent=AGENT_2)
    drifted = run(request(policies_dir=directory), connect=lambda _: cluster)
    assert drifted.exit_code == 1
    assert drifted.errors == []
    directory.joinpath("agent.yaml").write_text(AGENT)
    clean = run(request(policies_dir=directory, namespace="blog"), connect=lambda _: cluster)
    assert clean.exit_code == 0


def test_the_command_reads_the_releases_config_map(cluster: FakeCluster) -> None:
    cluster.config_maps[("infra", "prod-sidecar-injector-policies")] = {
        "data": {"agent.yaml": AGENT_2}}
    result = run(request(release="prod", release_namespace="infra", restart=True,
                         output="json"), connect=lambda _: cluster, now=lambda: NOW)
    assert result.exit_code == 1
    assert [(kind, name) for _, kind, name, *_ in cluster.restarts] == [
        ("StatefulSet", "blog"), ("Deployment", "web")]
    with pytest.raises(ClusterError, match="ConfigMap infra/other-sidecar-injector-policies "
                                           "not found"):
        run(request(release="other", release_namespace="infra"), connect=lambda _: cluster)


def test_the_release_namespace_is_the_webhooks_own(cluster: FakeCluster,
                                                   write_policies: WritePolicies,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    result = run(request(policies_dir=write_policies(agent=AGENT_2), release_namespace="shop"),
                 connect=lambda _: cluster)
    assert "shop" not in result.text  # never checked: only blog's pod drifted
    assert "blog-1" in result.text


def test_a_failed_restart_exits_2(cluster: FakeCluster, write_policies: WritePolicies) -> None:
    cluster.refuse = "cannot restart: 403 Forbidden"
    result = run(request(policies_dir=write_policies(agent=AGENT_2), restart=True),
                 connect=lambda _: cluster)
    assert result.exit_code == 2
    assert result.errors


def test_the_cluster_reads_every_page_of_a_list() -> None:
    pages = {None: {"items": [{"n": 1}], "metadata": {"continue": "two"}},
             "two": {"items": [{"n": 2}], "metadata": {"continue": ""}}}
    asked: list[dict[str, Any]] = []

    def list_pods(**kwargs: Any) -> Any:
        asked.append(kwargs)
        return SimpleNamespace(data=json.dumps(pages[kwargs["_continue"]]).encode())

    reader = Cluster.__new__(Cluster)  # no client: only the paging is under test
    reader.host = "https://example"
    assert reader._list("list pods", list_pods, label_selector="a=b") == [{"n": 1}, {"n": 2}]
    assert [(a["_continue"], a["limit"], a["label_selector"], a["_preload_content"])
            for a in asked] == [(None, 500, "a=b", False), ("two", 500, "a=b", False)]


# ---------------------------------------------------------------------------------------------
# Bad input at the command line: one line on stderr, exit 2


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, ["drift", *args])


@pytest.fixture
def no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KUBERNETES_SERVICE_HOST", "SIDECAR_INJECTOR_KUBECONFIG",
                 "SIDECAR_INJECTOR_POLICIES"):
        monkeypatch.delenv(name, raising=False)


def kubeconfig(tmp_path: Path, server: str) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    return path


class Forbidding(BaseHTTPRequestHandler):
    """An apiserver that refuses everyone."""

    def do_GET(self) -> None:
        body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "reason": "Forbidden", "code": 403,
                           "message": 'namespaces is forbidden: User "dev" cannot list '
                                      'resource "namespaces" at the cluster scope'}).encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def forbidding() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Forbidding)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def unused_port() -> int:
    from tests.serverproc import free_port  # noqa: PLC0415

    return free_port()


@pytest.mark.usefixtures("no_cluster")
@pytest.mark.parametrize(("args", "message"), [
    pytest.param((), "error: give either --policies DIR or --release NAME", id="no-policies"),
    pytest.param(("--policies", "policies", "--release", "r"), "error: give either",
                 id="both-policy-sources"),
    pytest.param(("--policies", "policies"), "error: no cluster access: not running in a "
                 "cluster and no --kubeconfig given", id="no-kubeconfig"),
    pytest.param(("--policies", "policies", "--kubeconfig", "/no/such"),
                 "error: no cluster access: /no/such: no such kubeconfig file",
                 id="missing-kubeconfig"),
    pytest.param(("--policies", "policies", "--kube-version", "new"), "error: invalid option: ",
                 id="bad-kube-version"),
])
def test_bad_usage_is_one_line_and_exit_2(args: tuple[str, ...], message: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2
    assert result.stderr.startswith(message), result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert result.stdout == ""


@pytest.mark.usefixtures("no_cluster")
def test_an_unreachable_apiserver_is_one_line(tmp_path: Path) -> None:
    config = kubeconfig(tmp_path, f"https://127.0.0.1:{unused_port()}")
    result = invoke("--policies", "policies", "--kubeconfig", str(config))
    assert result.exit_code == 2
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("error: cannot read the cluster version: cannot reach "
                                    "https://127.0.0.1:"), result.stderr
    assert "Connection refused" in result.stderr


@pytest.mark.usefixtures("no_cluster")
def test_a_forbidden_call_is_one_line_with_the_apiservers_message(tmp_path: Path,
                                                                  forbidding: str) -> None:
    result = invoke("--policies", "policies", "--kubeconfig", str(kubeconfig(tmp_path,
                                                                             forbidding)))
    assert result.exit_code == 2
    assert result.stderr == ('error: cannot read the cluster version: 403 Forbidden: namespaces '
                             'is forbidden: User "dev" cannot list resource "namespaces" at the '
                             'cluster scope\n')


@pytest.mark.usefixtures("no_cluster")
def test_invalid_policies_are_the_lines_of_policies_check_and_exit_2(
    write_policies: WritePolicies,
) -> None:
    directory = write_policies(agent=AGENT.replace("image: \"agent:1\"", "image: 3"))
    checked = CliRunner().invoke(cli, ["policies", "check", str(directory)])
    result = invoke("--policies", str(directory))
    assert result.exit_code == 2
    assert result.stderr == checked.stderr != ""


# ---------------------------------------------------------------------------------------------
# --release: the server's own settings and webhook entries


def server_deployment(*args: str) -> dict[str, Any]:
    server = {"name": "webhook", "args": ["serve", "--policies=/etc/sidecar-injector/policies",
                                          *args]}
    return {"spec": {"template": {"spec": {"containers": [server]}}}}


def test_with_a_release_the_servers_own_settings_judge_its_pods(
    write_policies: WritePolicies,
) -> None:
    """A pod injected by the server's --default-policies is in step with the release: drift
    reads that setting from the release's Deployment; a setting given on the command line wins."""
    agent = policy_set(write_policies, agent=AGENT)
    defaults = EngineConfig(selection=Selection(default_policies=("agent",)))
    pod = new_pod("web-5d8f-a", annotation=None)
    outcome = mutate(pod, namespace="shop", policies=agent, config=defaults)
    injected = jsonpatch.apply_patch(pod, outcome.patch)
    cluster = FakeCluster(namespaces=[{"metadata": {"name": "shop",
                                                    "labels": {INJECT: "enabled"}}}],
                          pods=[injected])
    cluster.config_maps[("infra", "prod-sidecar-injector-policies")] = {
        "data": {"agent.yaml": AGENT}}
    asked = request(release="prod", release_namespace="infra", output="json")
    assert run(asked, connect=lambda _: cluster, server_flags=server_flags_from_args).exit_code == 1
    cluster.deployments[("infra", "prod-sidecar-injector")] = server_deployment(
        "--default-policies=agent", "--log-level=info")
    judged = run(asked, connect=lambda _: cluster, server_flags=server_flags_from_args)
    assert (judged.exit_code, json.loads(judged.text)["checked"]) == (0, 1)
    assert judged.notes == (
        "settings from Deployment infra/prod-sidecar-injector: default-policies=agent",)
    given = Request(Settings(default_policies=""), release="prod", release_namespace="infra")
    assert run(given, connect=lambda _: cluster, server_flags=server_flags_from_args).exit_code == 1


def test_without_the_pod_entry_label_opted_pods_elsewhere_are_not_checked(
    cluster: FakeCluster,
) -> None:
    cluster.config_maps[("infra", "prod-sidecar-injector-policies")] = {
        "data": {"agent.yaml": AGENT}}
    asked = request(release="prod", release_namespace="infra", output="json")
    everything = json.loads(run(asked, connect=lambda _: cluster).text)["checked"]
    cluster.webhooks["prod-sidecar-injector"] = {"webhooks": [
        {"name": "namespace.sidecar-injector.sidecar.company.com"}]}  # webhook.podOptIn=false
    fewer = json.loads(run(asked, connect=lambda _: cluster).text)["checked"]
    assert fewer == everything - 1  # the blog pod opted in by its label
    cluster.refuse_webhooks = True
    refused = run(asked, connect=lambda _: cluster)
    assert json.loads(refused.text)["checked"] == everything
    assert refused.notes == ("cannot read MutatingWebhookConfiguration prod-sidecar-injector: "
                             "403 Forbidden: assuming pods may opt in by label",)
