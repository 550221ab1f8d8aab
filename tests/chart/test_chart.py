"""The Helm chart: lint and render cleanly in every certificate mode, validate against the strict
Kubernetes schema, and carry SPEC section 2's selectors and section 6's guard."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from tests.chart.helm import CHART, helm, of_kind, render, set_args
from tests.conftest import SHIPPED_POLICIES
from webhook import k8s_schema
from webhook.compiled import object_names
from webhook.policy import load_policy_dir

CA = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").decode()
COMBINATIONS = [
    pytest.param({}, id="generate-defaults"),
    pytest.param({"certificates.mode": "certManager"}, id="cert-manager-self-signed"),
    pytest.param({"certificates.mode": "certManager", "certificates.issuerRef.name": "corp-ca",
                  "certificates.issuerRef.kind": "ClusterIssuer"}, id="cert-manager-issuer"),
    pytest.param({"certificates.mode": "secret", "certificates.secretName": "my-tls",
                  "webhook.caBundle": CA}, id="user-secret"),
    pytest.param({"webhook.url": "https://127.0.0.1:8443/mutate", "webhook.caBundle": CA},
                 id="external-url"),
    pytest.param({"webhook.failurePolicy": "Fail", "guard.enabled": "false"}, id="fail-closed"),
    pytest.param({"prefix": "injector.example.org", "defaultPolicies": "logging",
                  "strict": "true", "onConflict": "skip"}, id="prefix-and-flags"),
    pytest.param({"policies.includeShipped": "false", "replicaCount": "3",
                  "podDisruptionBudget.enabled": "false"}, id="no-shipped-policies"),
    pytest.param({"networkPolicy.enabled": "true", "webhook.podOptIn": "false",
                  "networkPolicy.from[0].ipBlock.cidr": "10.0.0.0/24"}, id="locked-down"),
]
NOT_BUILT_IN = {"Certificate", "Issuer"}  # cert-manager CRDs


@pytest.mark.parametrize("values", COMBINATIONS)
def test_helm_lint_strict_is_clean(values: dict[str, str]) -> None:
    result = helm("lint", "--strict", str(CHART), *set_args(values), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", COMBINATIONS)
def test_every_rendered_object_fits_the_strict_kubernetes_schema(values: dict[str, str]) -> None:
    for obj in render(values):
        if obj["kind"] in NOT_BUILT_IN:
            assert obj["apiVersion"] == "cert-manager.io/v1"
            continue
        validator = k8s_schema.object_validator(obj["kind"], obj["apiVersion"])
        errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
                  for e in validator.iter_errors(obj)]
        assert errors == [], f"{obj['kind']}/{obj['metadata']['name']}"


def webhooks(values: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    (config,) = of_kind(render(values), "MutatingWebhookConfiguration")
    return {hook["name"].split(".")[0]: hook for hook in config["webhooks"]}


def test_the_webhook_configuration_follows_spec_section_2() -> None:
    hooks = webhooks()
    assert set(hooks) == {"namespace", "pod"}
    excluded = {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                "values": ["kube-system", "kube-public", "kube-node-lease", "sidecar-injector"]}
    key = "sidecar.company.com/inject"
    assert hooks["namespace"]["namespaceSelector"]["matchExpressions"] == [
        {"key": key, "operator": "In", "values": ["enabled"]}, excluded]
    assert hooks["namespace"]["objectSelector"]["matchExpressions"] == [
        {"key": key, "operator": "NotIn", "values": ["false"]}]
    assert hooks["pod"]["namespaceSelector"]["matchExpressions"] == [
        {"key": key, "operator": "NotIn", "values": ["enabled"]}, excluded]
    assert hooks["pod"]["objectSelector"]["matchExpressions"] == [
        {"key": key, "operator": "In", "values": ["enabled"]}]
    for hook in hooks.values():
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["sideEffects"] == "None"
        assert hook["reinvocationPolicy"] == "IfNeeded"
        assert hook["matchPolicy"] == "Equivalent"
        assert (hook["failurePolicy"], hook["timeoutSeconds"]) == ("Ignore", 5)
        assert hook["rules"] == [{"operations": ["CREATE"], "apiGroups": [""],
                                  "apiVersions": ["v1"], "resources": ["pods"],
                                  "scope": "Namespaced"}]
        assert hook["clientConfig"]["service"] == {
            "name": "release-sidecar-injector", "namespace": "sidecar-injector",
            "path": "/mutate", "port": 443}


def workload_hooks(values: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    (config,) = of_kind(render(values), "ValidatingWebhookConfiguration")
    return {hook["name"].split(".")[0]: hook for hook in config["webhooks"]}


def test_workload_warnings_have_a_validating_entry_per_pod_entry_with_its_selectors() -> None:
    pods, workloads = webhooks(), workload_hooks()
    assert set(workloads) == {"workload-namespace", "workload-pod"}
    for name, hook in workloads.items():
        pod_hook = pods[name.removeprefix("workload-")]
        assert hook["namespaceSelector"] == pod_hook["namespaceSelector"]
        assert (hook["admissionReviewVersions"], hook["sideEffects"], hook["matchPolicy"]) == (
            ["v1"], "None", "Equivalent")
        assert (hook["failurePolicy"], hook["timeoutSeconds"]) == ("Ignore", 5)
        assert hook["clientConfig"]["service"]["path"] == "/validate"
        assert hook["rules"] == [
            {"operations": ["CREATE", "UPDATE"], "apiGroups": ["apps"], "apiVersions": ["v1"],
             "resources": ["deployments", "statefulsets", "daemonsets", "replicasets"],
             "scope": "Namespaced"},
            {"operations": ["CREATE", "UPDATE"], "apiGroups": ["batch"], "apiVersions": ["v1"],
             "resources": ["jobs", "cronjobs"], "scope": "Namespaced"}]
        conditions = {c["name"]: c["expression"] for c in hook["matchConditions"]}
        assert "ownerReferences" in conditions["not-controlled"]
    assert workloads["workload-namespace"]["objectSelector"] == pods["namespace"]["objectSelector"]
    opted_in = {c["name"]: c["expression"]
                for c in workloads["workload-pod"]["matchConditions"]}["opted-in-by-label"]
    assert "'sidecar.company.com/inject' in m.labels" in opted_in
    assert "object.spec.jobTemplate.spec.template.metadata" in opted_in


@pytest.mark.parametrize(("values", "expected"), [
    pytest.param({"webhook.failurePolicy": "Fail"}, {"workload-namespace", "workload-pod"},
                 id="always-ignore"),
    pytest.param({"webhook.podOptIn": "false"}, {"workload-namespace"}, id="no-pod-opt-in"),
    pytest.param({"webhook.workloadWarnings": "false"}, None, id="turned-off"),
])
def test_the_workload_entries_follow_the_values(values: dict[str, str],
                                                 expected: set[str] | None) -> None:
    configs = of_kind(render(values), "ValidatingWebhookConfiguration")
    if expected is None:
        assert configs == []
        return
    hooks = {hook["name"].split(".")[0]: hook for hook in configs[0]["webhooks"]}
    assert set(hooks) == expected
    assert {hook["failurePolicy"] for hook in hooks.values()} == {"Ignore"}


def test_with_a_url_the_workload_entries_call_its_validate_path() -> None:
    hooks = workload_hooks({"webhook.url": "https://127.0.0.1:9443/mutate",
                            "webhook.caBundle": CA})
    for hook in hooks.values():
        assert hook["clientConfig"] == {"url": "https://127.0.0.1:9443/validate", "caBundle": CA}


def test_the_rbac_grants_only_namespace_reads_and_event_writes() -> None:
    (role,) = of_kind(render(), "ClusterRole")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]}]
    assert of_kind(render(), "Role") == []


def test_without_events_the_server_records_none_and_the_rbac_grants_none() -> None:
    objects = render({"events.enabled": "false"})
    (role,) = of_kind(objects, "ClusterRole")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]}]
    (deployment,) = of_kind(objects, "Deployment")
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    assert "--no-events" in server["args"]
    (default,) = of_kind(render(), "Deployment")
    assert "--no-events" not in default["spec"]["template"]["spec"]["containers"][0]["args"]


def test_failure_policy_timeout_prefix_and_url_are_values() -> None:
    hooks = webhooks({"webhook.failurePolicy": "Fail", "webhook.timeoutSeconds": "3",
                      "prefix": "acme.io", "webhook.url": "https://127.0.0.1:9443/mutate",
                      "webhook.caBundle": CA})
    for hook in hooks.values():
        assert (hook["failurePolicy"], hook["timeoutSeconds"]) == ("Fail", 3)
        assert hook["clientConfig"] == {"url": "https://127.0.0.1:9443/mutate", "caBundle": CA}
        assert hook["objectSelector"]["matchExpressions"][0]["key"] == "acme.io/inject"


def test_an_external_url_renders_no_in_cluster_server() -> None:
    kinds = {obj["kind"] for obj in render({"webhook.url": "https://127.0.0.1:1/mutate",
                                            "webhook.caBundle": CA})}
    assert kinds == {"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
                     "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}


def test_generated_certificates_chain_to_the_ca_bundle() -> None:
    objects = render()
    (secret,) = of_kind(objects, "Secret")
    ca_pem = base64.b64decode(secret["data"]["ca.crt"])
    ca = x509.load_pem_x509_certificate(ca_pem)
    leaf = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    leaf.verify_directly_issued_by(ca)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "release-sidecar-injector.sidecar-injector.svc" in sans.get_values_for_type(
        x509.DNSName)
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        for hook in of_kind(objects, kind)[0]["webhooks"]:
            assert base64.b64decode(hook["clientConfig"]["caBundle"]) == ca_pem


def test_cert_manager_mode_asks_the_cainjector_for_the_bundle() -> None:
    objects = render({"certificates.mode": "certManager"})
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        (config,) = of_kind(objects, kind)
        assert config["metadata"]["annotations"] == {
            "cert-manager.io/inject-ca-from": "sidecar-injector/release-sidecar-injector"}
        assert all("caBundle" not in h["clientConfig"] for h in config["webhooks"])
    assert of_kind(objects, "Secret") == []
    serving = [c for c in of_kind(objects, "Certificate") if not c["spec"].get("isCA")]
    assert serving[0]["spec"]["secretName"] == "release-sidecar-injector-tls"


def test_the_guard_denies_unstamped_opted_in_pods_outside_excluded_namespaces() -> None:
    objects = render()
    (policy,) = of_kind(objects, "ValidatingAdmissionPolicy")
    (binding,) = of_kind(objects, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {"policyName": policy["metadata"]["name"],
                               "validationActions": ["Deny"]}
    spec = policy["spec"]
    assert spec["matchConstraints"]["namespaceSelector"]["matchExpressions"][0]["values"] == [
        "kube-system", "kube-public", "kube-node-lease", "sidecar-injector"]
    variables = {v["name"]: v["expression"] for v in spec["variables"]}
    assert "sidecar.company.com/status" in variables["stamped"]
    assert spec["validations"][0]["expression"] == (
        "!variables.optedIn || variables.optedOut || variables.stamped")
    assert "webhook may be" in spec["validations"][0]["message"]


@pytest.mark.parametrize(("kube_version", "enabled", "rendered"), [
    pytest.param("1.29.0", "auto", False, id="auto-on-1.29"),
    pytest.param("1.30.0", "auto", True, id="auto-on-1.30"),
    pytest.param("1.34.0", "false", False, id="off"),
])
def test_the_guard_follows_the_cluster_version(kube_version: str, enabled: str,
                                               rendered: bool) -> None:
    objects = render({"guard.enabled": enabled}, kube_version=kube_version)
    assert bool(of_kind(objects, "ValidatingAdmissionPolicy")) is rendered


def test_the_policies_configmap_holds_the_shipped_policies_unchanged() -> None:
    (configmap,) = of_kind(render(), "ConfigMap")
    shipped = {p.name: p.read_text() for p in SHIPPED_POLICIES.glob("*.yaml")}
    assert configmap["data"] == shipped


def test_custom_policies_are_added_and_load(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    custom = yaml.safe_load((SHIPPED_POLICIES / "logging.yaml").read_text())
    custom["metadata"]["name"] = "team-logging"
    values.write_text(yaml.safe_dump({"policies": {"custom": {"team-logging": custom}}}))
    (configmap,) = of_kind(render(extra=["--values", str(values)]), "ConfigMap")
    served = tmp_path / "served"
    served.mkdir()
    for name, text in configmap["data"].items():
        (served / name).write_text(text)
    assert "team-logging" in load_policy_dir(served).names()


@pytest.mark.parametrize(("values", "message"), [
    pytest.param({"webhok.url": "x"}, "additional properties 'webhok' not allowed", id="typo"),
    pytest.param({"webhook.failurePolicy": "Sometimes"}, "failurePolicy", id="bad-enum"),
    pytest.param({"certificates.mode": "secret"}, "certificates.secretName is required",
                 id="secret-without-name"),
    pytest.param({"webhook.url": "https://x/mutate"}, "webhook.caBundle", id="url-without-ca"),
])
def test_bad_values_fail_with_a_message(values: dict[str, str], message: str) -> None:
    result = helm("template", "release", str(CHART), *set_args(values), check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_the_deployment_is_hardened_and_probed_over_https() -> None:
    (deployment,) = of_kind(render(), "Deployment")
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["replicas"] == 2
    assert pod["metadata"]["labels"]["sidecar.company.com/inject"] == "false"
    (container,) = pod["spec"]["containers"]
    assert container["securityContext"] == {"allowPrivilegeEscalation": False,
                                            "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "https", "scheme": "HTTPS"}
    assert {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.namespace"}}} in container["env"]
    assert pod["spec"]["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"


def test_without_pod_opt_in_only_opted_in_namespaces_are_served_and_guarded() -> None:
    assert set(webhooks({"webhook.podOptIn": "false"})) == {"namespace"}
    assert set(webhooks()) == {"namespace", "pod"}
    (policy,) = of_kind(render({"webhook.podOptIn": "false"}), "ValidatingAdmissionPolicy")
    opted_in = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}["optedIn"]
    assert "object.metadata.labels" not in opted_in
    assert "namespaceObject.metadata.labels" in opted_in


def test_the_network_policy_admits_only_the_webhook_port() -> None:
    assert not of_kind(render(), "NetworkPolicy")
    (policy,) = of_kind(render({"networkPolicy.enabled": "true", "port": "9443",
                                "networkPolicy.from[0].ipBlock.cidr": "10.0.0.0/24"}),
                        "NetworkPolicy")
    (deployment,) = of_kind(render({"port": "9443"}), "Deployment")
    assert policy["spec"]["podSelector"]["matchLabels"] == (
        deployment["spec"]["selector"]["matchLabels"])
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [{"ports": [{"port": 9443, "protocol": "TCP"}],
                                          "from": [{"ipBlock": {"cidr": "10.0.0.0/24"}}]}]


@pytest.mark.parametrize(("kube_version", "values", "sleep"), [
    pytest.param("1.30.0", {}, 5, id="default-on-1.30"),
    pytest.param("1.29.0", {}, None, id="no-sleep-action-before-1.30"),
    pytest.param("1.37.0", {"shutdownDelaySeconds": "0"}, None, id="turned-off"),
])
def test_a_stopping_pod_keeps_serving_for_the_shutdown_delay(
    kube_version: str, values: dict[str, str], sleep: int | None,
) -> None:
    (deployment,) = of_kind(render(values, kube_version=kube_version), "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    pre_stop = (container.get("lifecycle") or {}).get("preStop")
    assert pre_stop == ({"sleep": {"seconds": sleep}} if sleep else None)
    assert spec["terminationGracePeriodSeconds"] == int(values.get("shutdownDelaySeconds", 5)) + 30


MAP_API = "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy"


def render_engine(engine: str, values: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The chart with `engine`, rendered as for a 1.36+ cluster (which serves the v1 API)."""
    return render({"engine": engine, **(values or {})}, kube_version="1.37.0",
                  extra=["--api-versions", MAP_API])


@pytest.mark.parametrize("engine", ["admission-policy", "hybrid"])
def test_the_compiled_engines_fit_the_strict_kubernetes_schema(engine: str) -> None:
    # (`helm lint` takes no --api-versions, so it cannot render these engines)
    for obj in render_engine(engine):
        validator = k8s_schema.object_validator(obj["kind"], obj["apiVersion"])
        assert [e.message for e in validator.iter_errors(obj)] == [], obj["kind"]


def test_with_engine_admission_policy_nothing_is_on_the_pod_path() -> None:
    objects = render_engine("admission-policy")
    assert of_kind(objects, "MutatingWebhookConfiguration") == []
    # what the apiserver runs comes from the server's sync, never from the chart
    assert of_kind(objects, "MutatingAdmissionPolicy") == []
    (deployment,) = of_kind(objects, "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--engine=admission-policy" in args
    assert "--engine-name=release-sidecar-injector" in args
    assert "--engine-owner=release-sidecar-injector" in args  # the ClusterRole
    assert "--no-pod-opt-in" not in args
    (guard,) = of_kind(objects, "ValidatingAdmissionPolicy")
    assert "compiled admission policy did not inject it" in guard["spec"]["validations"][0][
        "message"]


def test_with_engine_hybrid_the_webhook_gets_only_pods_the_policies_did_not_stamp() -> None:
    (config,) = of_kind(render_engine("hybrid"), "MutatingWebhookConfiguration")
    hooks = {hook["name"].split(".")[0]: hook for hook in config["webhooks"]}
    assert set(hooks) == {"namespace", "pod"}
    for hook in hooks.values():
        (condition,) = hook["matchConditions"]
        assert condition["name"] == "not-stamped"
        assert "'sidecar.company.com/status' in object.metadata.annotations" in (
            condition["expression"])
    assert "matchConditions" not in webhooks()["pod"]


@pytest.mark.parametrize("values", [{}, {"events.enabled": "false"}])
def test_the_compiled_engines_may_write_only_the_objects_the_server_owns(
    values: dict[str, str],
) -> None:
    (role,) = of_kind(render_engine("admission-policy", values), "ClusterRole")
    granted = {rule["resources"][0]: rule for rule in role["rules"]
               if rule["apiGroups"] == ["admissionregistration.k8s.io"]}
    resources = {"MutatingAdmissionPolicy": "mutatingadmissionpolicies",
                 "MutatingAdmissionPolicyBinding": "mutatingadmissionpolicybindings",
                 "ValidatingAdmissionPolicy": "validatingadmissionpolicies",
                 "ValidatingAdmissionPolicyBinding": "validatingadmissionpolicybindings"}
    owned = object_names("release-sidecar-injector")
    assert set(granted) == {resources[kind] for kind in owned}
    for kind, names in owned.items():
        rule = granted[resources[kind]]
        assert rule["resourceNames"] == names
        assert rule["verbs"] == ["create", "patch", "delete"]
    # their owner, whose deletion (helm uninstall) deletes them: the uid read from this role
    assert [r for r in role["rules"] if r["apiGroups"] == ["rbac.authorization.k8s.io"]] == [
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"],
         "resourceNames": [role["metadata"]["name"]], "verbs": ["get"]}]
    (webhook_role,) = of_kind(render(values), "ClusterRole")
    assert [r for r in webhook_role["rules"] if "resourceNames" in r] == []


def test_without_pod_opt_in_the_server_compiles_none() -> None:
    (deployment,) = of_kind(render_engine("admission-policy", {"webhook.podOptIn": "false"}),
                            "Deployment")
    assert "--no-pod-opt-in" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]


@pytest.mark.parametrize("engine", ["admission-policy", "hybrid"])
def test_a_cluster_without_the_v1_api_refuses_the_compiled_engines(engine: str) -> None:
    result = helm("template", "release", str(CHART), "--set", f"engine={engine}",
                  "--kube-version", "1.35.4", check=False)
    assert result.returncode != 0
    assert (f"engine: {engine} needs Kubernetes 1.36 or newer (MutatingAdmissionPolicy in "
            "admissionregistration.k8s.io/v1), and this cluster (Kubernetes v1.35.4)") in (
        result.stderr)


def test_an_unknown_engine_is_refused_by_the_schema() -> None:
    result = helm("template", "release", str(CHART), "--set", "engine=cel", check=False)
    assert result.returncode != 0
    assert "engine" in result.stderr
