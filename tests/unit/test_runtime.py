"""The server's serving state: what a review becomes, and facts learned from the cluster."""

from __future__ import annotations

from webhook.engine import EngineConfig
from webhook.policy import PolicySet
from webhook.review import Review
from webhook.runtime import Runtime


def test_the_cluster_version_is_learned_when_none_was_configured() -> None:
    runtime = Runtime(PolicySet(), EngineConfig())
    runtime.learn_kube_version((1, 28))
    assert runtime.config.kube_version == (1, 28)


def test_a_configured_kube_version_wins_over_the_clusters() -> None:
    runtime = Runtime(PolicySet(), EngineConfig(kube_version=(1, 31)))
    runtime.learn_kube_version((1, 28))
    assert runtime.config.kube_version == (1, 31)


def test_a_non_pod_review_is_allowed_and_counted_as_passthrough() -> None:
    runtime = Runtime(PolicySet(), EngineConfig())
    review = Review(uid="u", operation="UPDATE", kind="Pod", group="", namespace="ns", name="p",
                    sub_resource="", dry_run=False, object={})
    assert runtime.decide(review)["response"] == {"uid": "u", "allowed": True}
    sample = runtime.metrics.registry.get_sample_value(
        "sidecar_injector_requests_total", {"result": "passthrough", "policy": ""})
    assert sample == 1.0
