"""`engine.workload_warnings`: what the webhook warns about when a workload is applied (the opt-in
annotation or label on the workload instead of its pod template, unknown policies, policies
restricted away from the namespace, name clashes), and the same from the offline `inject`."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.conftest import SHIPPED_POLICIES, WritePolicies
from tests.unit.test_engine_cluster_rules import VAULT
from webhook.engine import EngineConfig, workload_warnings
from webhook.offline import inject_text
from webhook.policy import PolicySet, load_policy_dir
from webhook.selection import Selection
from webhook.yamlsource import dump_documents

KEY = "sidecar.company.com/inject"
STATUS = "sidecar.company.com/status"


@pytest.fixture
def policies(write_policies: WritePolicies) -> PolicySet:
    logging = (SHIPPED_POLICIES / "logging.yaml").read_text()
    return load_policy_dir(write_policies(**{"payments-secrets": VAULT, "logging": logging}))


def workload(kind: str = "Deployment", *, own: dict[str, str] | None = None,
             template: dict[str, str] | None = None, own_labels: dict[str, str] | None = None,
             template_labels: dict[str, str] | None = None,
             containers: tuple[str, ...] = ("app",)) -> dict[str, Any]:
    pod = {"metadata": {"labels": {"app": "web", **(template_labels or {})},
                        "annotations": template or {}},
           "spec": {"containers": [{"name": n, "image": "app:1"} for n in containers]}}
    spec: dict[str, Any] = {"template": pod}
    if kind == "CronJob":
        spec = {"schedule": "* * * * *", "jobTemplate": {"spec": spec}}
    api = "batch/v1" if kind in ("Job", "CronJob") else "apps/v1"
    return {"apiVersion": api, "kind": kind,
            "metadata": {"name": "web", "annotations": own or {}, "labels": own_labels or {}},
            "spec": spec}


def warn(obj: dict[str, Any], policies: PolicySet, *, namespace: str = "shop",
         labels: dict[str, str] | None = None, strict: bool = False,
         on_conflict: str = "deny") -> tuple[str, ...]:
    config = EngineConfig(selection=Selection(strict=strict), on_conflict=on_conflict)  # type: ignore[arg-type]
    return workload_warnings(obj, namespace=namespace, policies=policies, config=config,
                             namespace_labels=labels)


@pytest.mark.parametrize(("kind", "path"), [
    pytest.param("Deployment", "spec.template.metadata.annotations", id="deployment"),
    pytest.param("StatefulSet", "spec.template.metadata.annotations", id="statefulset"),
    pytest.param("DaemonSet", "spec.template.metadata.annotations", id="daemonset"),
    pytest.param("ReplicaSet", "spec.template.metadata.annotations", id="replicaset"),
    pytest.param("Job", "spec.template.metadata.annotations", id="job"),
    pytest.param("CronJob", "spec.jobTemplate.spec.template.metadata.annotations", id="cronjob"),
])
def test_the_annotation_on_the_workload_instead_of_its_template_is_warned_about(
    policies: PolicySet, kind: str, path: str,
) -> None:
    (warning,) = warn(workload(kind, own={KEY: "logging"}), policies)
    assert warning.startswith(f"{kind} shop/web: annotation {KEY}='logging' is on the "
                              "workload's own metadata")
    assert warning.endswith(f"move the annotation to {path}")


def test_the_annotation_in_both_places_is_fine(policies: PolicySet) -> None:
    assert warn(workload(own={KEY: "logging"}, template={KEY: "logging"}), policies) == ()


@pytest.mark.parametrize(("labels", "warned"), [
    pytest.param({}, True, id="plain-namespace"),
    pytest.param({KEY: "enabled"}, False, id="opted-in-namespace"),
    pytest.param(None, False, id="namespace-labels-unknown"),
])
def test_the_opt_in_label_on_the_workload_matters_only_in_a_plain_namespace(
    policies: PolicySet, labels: dict[str, str] | None, warned: bool,
) -> None:
    found = warn(workload(own_labels={KEY: "enabled"}), policies, labels=labels)
    assert bool(found) is warned
    if warned:
        assert "move the label to spec.template.metadata.labels" in found[0]


def test_the_opt_in_label_on_both_is_fine(policies: PolicySet) -> None:
    obj = workload(own_labels={KEY: "enabled"}, template_labels={KEY: "enabled"})
    assert warn(obj, policies, labels={}) == ()


@pytest.mark.parametrize(("strict", "fate"), [
    pytest.param(False, "its pods will be admitted without injection", id="default"),
    pytest.param(True, "its pods will be denied", id="strict"),
])
def test_an_unknown_policy_in_the_template_is_named(policies: PolicySet, strict: bool,
                                                    fate: str) -> None:
    (warning,) = warn(workload(template={KEY: "logging,nope"}), policies, strict=strict)
    assert warning.startswith("Deployment shop/web: its pod template asks for unknown "
                              "injection policy 'nope' (known policies: logging, "
                              "payments-secrets)")
    assert fate in warning


@pytest.mark.parametrize(("labels", "text"), [
    pytest.param({"team": "web"}, "namespace shop is not one of them", id="other-namespace"),
    pytest.param(None, "the labels of namespace shop are not known (no cluster access): "
                       "not applied", id="labels-unknown-fail-closed"),
])
def test_a_policy_restricted_away_from_the_namespace_is_named(
    policies: PolicySet, labels: dict[str, str] | None, text: str,
) -> None:
    (warning,) = warn(workload(template={KEY: "payments-secrets,logging"}), policies,
                      labels=labels)
    assert warning.startswith("Deployment shop/web: pod template: injection policy "
                              "'payments-secrets' skipped: it is restricted to namespaces "
                              "matching team=payments")
    assert warning.endswith(text)


def test_a_restricted_policy_in_a_namespace_it_selects_is_fine(policies: PolicySet) -> None:
    assert warn(workload(template={KEY: "payments-secrets"}), policies,
                labels={"team": "payments"}) == ()


@pytest.mark.parametrize(("on_conflict", "fate"), [
    pytest.param("deny", "its pods will be denied", id="deny"),
    pytest.param("skip", "its pods will be admitted without 'logging'", id="skip"),
])
def test_a_policy_whose_names_clash_with_the_template_is_named(
    policies: PolicySet, on_conflict: str, fate: str,
) -> None:
    obj = workload(template={KEY: "logging"}, containers=("app", "logging-agent"))
    (warning,) = warn(obj, policies, on_conflict=on_conflict)
    assert warning.startswith("Deployment shop/web: pod template: injection policy 'logging' "
                              "adds container 'logging-agent', which clashes with the pod's "
                              "container 'logging-agent'")
    assert fate in warning


def test_every_problem_is_reported_at_once(policies: PolicySet) -> None:
    obj = workload(own_labels={KEY: "enabled"}, template={KEY: "nope,payments-secrets,logging"},
                   containers=("app", "logging-agent"))
    found = warn(obj, policies, labels={})
    assert [w.split(": ", 2)[1].split(" ")[0] for w in found] == [
        "label", "its", "pod", "pod"]
    assert ["'nope'" in found[1], "'payments-secrets'" in found[2], "'logging'" in found[3]] == [
        True, True, True]


def test_a_template_without_problems_gets_no_warning(policies: PolicySet) -> None:
    assert warn(workload(template={KEY: "logging"}), policies) == ()
    assert warn(workload(), policies) == ()  # the defaults: none here


@pytest.mark.parametrize("obj", [
    pytest.param({"apiVersion": "v1", "kind": "Pod", "metadata": {"annotations": {KEY: "x"}},
                  "spec": {"containers": []}}, id="a-pod"),
    pytest.param({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}, id="a-configmap"),
    pytest.param({"kind": "Deployment", "metadata": {"annotations": {KEY: "x"}}, "spec": {}},
                 id="no-template"),
    pytest.param([], id="not-an-object"),
])
def test_other_objects_get_no_warning(policies: PolicySet, obj: Any) -> None:
    assert warn(obj, policies) == ()


def test_a_workload_a_controller_owns_is_not_checked(policies: PolicySet) -> None:
    obj = workload("ReplicaSet", own={KEY: "logging"}, template={KEY: "nope"})
    obj["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "Deployment",
                                           "name": "web", "uid": "u1", "controller": True}]
    assert warn(obj, policies) == ()


def test_system_namespaces_and_opted_out_templates_are_not_checked(policies: PolicySet) -> None:
    assert warn(workload(own={KEY: "x"}, template={KEY: "nope"}), policies,
                namespace="kube-system") == ()
    opted_out = workload(template={KEY: "nope"}, template_labels={KEY: "false"})
    assert warn(opted_out, policies) == ()


def test_checking_never_changes_the_workload(policies: PolicySet) -> None:
    obj = workload(own={KEY: "logging"}, template={KEY: "nope,logging"},
                   containers=("app", "logging-agent"))
    before = copy.deepcopy(obj)
    assert warn(obj, policies, labels={})
    assert obj == before


def test_offline_inject_reports_the_misplaced_annotation_beside_the_templates_warnings(
    policies: PolicySet,
) -> None:
    obj = workload(own={KEY: "logging"})  # its pods get the namespace's defaults: unknown
    report = inject_text(dump_documents([obj]), source="app.yaml", policies=policies,
                         config=EngineConfig(), namespace_policies=["nope"])
    misplaced, unknown = report.warnings
    assert misplaced.startswith(f"app.yaml:2: Deployment/web: Deployment web: annotation "
                                f"{KEY}='logging' is on the workload's own metadata")
    assert unknown.startswith("app.yaml:2: Deployment/web: pod ")
    assert "unknown injection policy 'nope'" in unknown
    assert not report.denied


def test_offline_inject_of_a_well_placed_workload_says_nothing_new(policies: PolicySet) -> None:
    report = inject_text(dump_documents([workload(template={KEY: "logging"})]),
                         source="app.yaml", policies=policies, config=EngineConfig())
    assert report.warnings == []
    assert STATUS in report.output
