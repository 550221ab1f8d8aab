"""The MutatingWebhookConfiguration the suite registers: the two entries of SPEC section 2."""

from __future__ import annotations

from typing import Any

CONFIG_NAME = "sidecar-injector"
INJECT = "sidecar.company.com/inject"
SYSTEM = ["kube-system", "kube-public", "kube-node-lease"]


def webhook_configuration(*, url: str, ca_bundle: str, failure_policy: str,
                          release_namespace: str) -> dict[str, Any]:
    """Namespace opt-in entry and pod-label opt-in entry, system and own namespaces excluded."""
    excluded = {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                "values": [*SYSTEM, release_namespace]}
    not_opted_out = {"key": INJECT, "operator": "NotIn", "values": ["false"]}
    common = {
        "admissionReviewVersions": ["v1"], "sideEffects": "None",
        "reinvocationPolicy": "IfNeeded", "matchPolicy": "Equivalent", "timeoutSeconds": 5,
        "failurePolicy": failure_policy, "clientConfig": {"url": url, "caBundle": ca_bundle},
        "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                   "resources": ["pods"], "scope": "Namespaced"}],
    }
    return {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": CONFIG_NAME},
        "webhooks": [
            {**common, "name": "namespace.sidecar-injector.company.com",
             "namespaceSelector": {"matchExpressions": [
                 {"key": INJECT, "operator": "In", "values": ["enabled"]}, excluded]},
             "objectSelector": {"matchExpressions": [not_opted_out]}},
            {**common, "name": "pod.sidecar-injector.company.com",
             "namespaceSelector": {"matchExpressions": [
                 {"key": INJECT, "operator": "NotIn", "values": ["enabled"]}, excluded]},
             "objectSelector": {"matchExpressions": [
                 {"key": INJECT, "operator": "In", "values": ["enabled"]}]}},
        ],
    }
