"""The MutatingWebhookConfiguration the suite registers: the Helm chart's own, rendered with
`webhook.url` pointing at the local `serve` process (and without the guard, which its own tests
install)."""

from __future__ import annotations

from typing import Any

from tests.chart.helm import of_kind, render

RELEASE = "e2e"
CONFIG_NAME = f"{RELEASE}-sidecar-injector"
RELEASE_NAMESPACE = "sidecar-injector"
INJECT = "sidecar.company.com/inject"


def webhook_configuration(*, url: str, ca_bundle: str, failure_policy: str) -> dict[str, Any]:
    """The chart's webhook configuration for a webhook at `url`."""
    objects = render({"webhook.url": url, "webhook.caBundle": ca_bundle,
                      "webhook.failurePolicy": failure_policy, "guard.enabled": "false"},
                     namespace=RELEASE_NAMESPACE, release=RELEASE)
    (config,) = of_kind(objects, "MutatingWebhookConfiguration")
    assert config["metadata"]["name"] == CONFIG_NAME
    return config
