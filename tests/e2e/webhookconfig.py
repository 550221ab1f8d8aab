"""The webhook configurations the suite registers: the Helm chart's own, rendered with
`webhook.url` pointing at the local `serve` process (and without the guard, which its own tests
install): the MutatingWebhookConfiguration for pods, and the ValidatingWebhookConfiguration of
the workload warnings (at the same address, path `/validate`)."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.chart.helm import of_kind, render
from tests.e2e.controlplane import ControlPlane
from tests.e2e.kube import ApiException, Kube, wait_for
from webhook.compiled import object_names
from webhook.kube import ADMISSION_KINDS

RELEASE = "e2e"
CONFIG_NAME = f"{RELEASE}-sidecar-injector"
RELEASE_NAMESPACE = "sidecar-injector"
INJECT = "sidecar.company.com/inject"
#: the label of the namespaces where the compiled engines meet a test's pods (tests/e2e/engines)
ENGINE_LABEL = "e2e.sidecar.company.com/engine"


MUTATING = "MutatingWebhookConfiguration"
VALIDATING = "ValidatingWebhookConfiguration"


def webhook_configuration(*, url: str, ca_bundle: str, failure_policy: str,
                          release: str = RELEASE, namespace: str = RELEASE_NAMESPACE,
                          kind: str = MUTATING) -> dict[str, Any]:
    """The chart's webhook configuration of `kind` for a webhook whose `/mutate` is `url`."""
    objects = render({"webhook.url": url, "webhook.caBundle": ca_bundle,
                      "webhook.failurePolicy": failure_policy, "guard.enabled": "false"},
                     namespace=namespace, release=release)
    (config,) = of_kind(objects, kind)
    assert config["metadata"]["name"] == f"{release}-sidecar-injector"
    if kind == MUTATING:  # the compiled engine's twin namespaces are the compiled policies' only
        for webhook in config["webhooks"]:
            webhook["namespaceSelector"]["matchExpressions"].append(
                {"key": ENGINE_LABEL, "operator": "NotIn", "values": ["compiled"]})
    return config


@contextmanager
def without_the_suites_webhook(kube: Kube) -> Iterator[None]:
    """Take the suite's own webhook configuration away while the block runs; put it back after,
    if it was registered."""
    saved: dict[str, Any] | None = None
    try:
        current = kube.plain(kube.admission.read_mutating_webhook_configuration(CONFIG_NAME))
    except ApiException as exc:
        if exc.status != 404:
            raise
    else:
        kube.delete_mutating_webhook(CONFIG_NAME)
        metadata = current["metadata"]
        saved = {**current, "metadata": {"name": metadata["name"],
                                         "labels": metadata.get("labels") or {}}}
    try:
        yield
    finally:
        if saved is not None:
            kube.apply_mutating_webhook(saved)


@contextmanager
def instead_of_the_suites_webhook(kube: Kube, config: dict[str, Any]) -> Iterator[None]:
    """Register `config` as the only webhook while the block runs; put the suite's own
    configuration back after, if it was registered."""
    with without_the_suites_webhook(kube):
        kube.apply_mutating_webhook(config)
        try:
            yield
        finally:
            kube.delete_mutating_webhook(config["metadata"]["name"])


def stored(kube: Kube, name: str) -> dict[str, list[str]]:
    """The objects `serve --engine --engine-name NAME` may apply that are in the cluster, by
    kind."""
    found: dict[str, list[str]] = {}
    for kind, names in object_names(name).items():
        read: Callable[[str], object] = getattr(kube.admission,
                                                f"read_{ADMISSION_KINDS[kind]}")
        found_here = [each for each in names if kube.exists(functools.partial(read, each))]
        if found_here:
            found[kind] = found_here
    return found


def policy_names(name: str) -> list[str]:
    """The admission policies (not their bindings) `serve --engine --engine-name NAME` may
    apply: what the apiserver's check counters name."""
    owned = object_names(name)
    return [*owned["MutatingAdmissionPolicy"], *owned["ValidatingAdmissionPolicy"]]


POLICY_CHECKS = ("apiserver_mutating_admission_policy_check_total",
                 "apiserver_validating_admission_policy_check_total")


def policy_checks(plane: ControlPlane, policies: Collection[str]) -> float:
    """How often the apiserver has evaluated any of the admission `policies` (by name)."""
    return sum(sample.value for family in text_string_to_metric_families(plane.metrics())
               for sample in family.samples
               if sample.name in POLICY_CHECKS and sample.labels.get("policy") in policies)


def checked_by(plane: ControlPlane, kube: Kube, policies: Collection[str],
               namespace: str | None = None, asks: str = "logging",
               labels: dict[str, str] | None = None) -> bool:
    """Whether the apiserver checks a pod asking for injection (of `asks`) in an opted-in
    namespace (created as a dry run; in `namespace` if given, with `labels`) with any of the
    admission `policies`: whether it applies them now. It loads and drops a policy (and each of
    its bindings) when its informer sees the change, not when the API call returns. (A
    ValidatingAdmissionPolicy's check counts only when it warns, denies or fails: ask for an
    unknown policy to see the warning one.)"""
    namespace = namespace or kube.ensure_namespace("policy-probe", labels={INJECT: "enabled"})
    before = policy_checks(plane, policies)
    body = {"metadata": {"name": f"probe-{uuid.uuid4().hex[:6]}", "labels": labels or {},
                         "annotations": {INJECT: asks}},
            "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}}
    try:
        kube.create_pod(namespace, body, dry_run=True)
    except ApiException as exc:  # one of them denying is in effect; anything else is a failure
        if not any(f"ValidatingAdmissionPolicy '{name}'" in str(exc.body) for name in policies):
            raise
        return True
    return policy_checks(plane, policies) != before


def wait_in_effect(plane: ControlPlane, kube: Kube, policies: Collection[str],
                   namespace: str | None = None, asks: str = "logging",
                   labels: dict[str, str] | None = None) -> None:
    """After the admission `policies` were applied, wait until the apiserver applies them (to
    pods in `namespace`, if given, with `labels`, asking for `asks`)."""
    wait_for(lambda: checked_by(plane, kube, policies, namespace, asks, labels), 60,
             f"the apiserver to apply {', '.join(sorted(policies))}")


def wait_retired(plane: ControlPlane, kube: Kube, policies: Collection[str],
                 namespace: str | None = None) -> None:
    """After the admission `policies` were deleted, wait until the apiserver stops applying them
    (until then they would stamp the next test's pods; in `namespace`, if given)."""
    wait_for(lambda: not checked_by(plane, kube, policies, namespace), 60,
             f"the apiserver to stop applying {', '.join(sorted(policies))}")
