"""The webhook configurations the suite registers: the Helm chart's own, rendered with
`webhook.url` pointing at the local `serve` process (and without the guard, which its own tests
install): the MutatingWebhookConfiguration for pods, and the ValidatingWebhookConfiguration of
the workload warnings (at the same address, path `/validate`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.chart.helm import of_kind, render
from tests.e2e.kube import ApiException, Kube

RELEASE = "e2e"
CONFIG_NAME = f"{RELEASE}-sidecar-injector"
RELEASE_NAMESPACE = "sidecar-injector"
INJECT = "sidecar.company.com/inject"


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
