"""Selection: which policies a pod gets, or why it gets none (SPEC section 2)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from webhook.keys import Keys
from webhook.selection import (
    Deny,
    Inject,
    Selection,
    Skip,
    SkipReason,
    parse_policy_list,
    select,
)

KNOWN = {"logging", "metrics", "auth"}
KEY = "sidecar.company.com/inject"


def decide(annotations: dict[str, str] | None = None, labels: dict[str, str] | None = None, *,
           namespace: str = "shop", ns_policies: Sequence[str] | None = None,
           settings: Selection | None = None) -> object:
    metadata = {"name": "web", "annotations": annotations or {}, "labels": labels or {}}
    return select(metadata, namespace=namespace, settings=settings or Selection(), known=KNOWN,
                  namespace_policies=ns_policies)


def test_policy_lists_are_trimmed_ordered_and_deduplicated() -> None:
    assert parse_policy_list(" metrics, logging ,metrics,, auth ") == ("metrics", "logging", "auth")


def test_an_annotation_list_is_applied_in_its_order() -> None:
    assert decide({KEY: "metrics, logging,metrics"}) == Inject(("metrics", "logging"))


@pytest.mark.parametrize("value", ["true", "enabled", "True", " ", None])
def test_true_enabled_or_absent_take_the_namespace_defaults(value: str | None) -> None:
    annotations = {KEY: value} if value is not None else {}
    assert decide(annotations, ns_policies=["auth"]) == Inject(("auth",))


def test_without_namespace_defaults_the_global_defaults_apply() -> None:
    settings = Selection(default_policies=("logging",))
    assert decide({KEY: "true"}, ns_policies=None, settings=settings) == Inject(("logging",))
    assert decide({}, ns_policies=[], settings=settings) == Inject(("logging",))


def test_no_defaults_anywhere_is_a_stamped_skip() -> None:
    assert decide({}) == Skip(SkipReason.NO_POLICIES)
    assert SkipReason.NO_POLICIES.stamped


@pytest.mark.parametrize(
    ("annotations", "labels"),
    [
        pytest.param({KEY: "false"}, {}, id="annotation"),
        pytest.param({KEY: " FALSE "}, {}, id="annotation-any-case"),
        pytest.param({KEY: "logging"}, {KEY: "false"}, id="label-wins-over-a-list"),
    ],
)
def test_opted_out_pods_are_never_injected(annotations: dict[str, str],
                                           labels: dict[str, str]) -> None:
    assert decide(annotations, labels, ns_policies=["logging"]) == Skip(SkipReason.OPTED_OUT)


@pytest.mark.parametrize("namespace", ["kube-system", "kube-public", "kube-node-lease", "injector"])
def test_system_and_own_namespaces_are_untouched_and_unstamped(namespace: str) -> None:
    decision = decide({KEY: "logging"}, namespace=namespace,
                      settings=Selection(own_namespace="injector"))
    assert decision == Skip(SkipReason.SYSTEM_NAMESPACE)
    assert not SkipReason.SYSTEM_NAMESPACE.stamped


def test_an_already_stamped_pod_is_left_alone() -> None:
    decision = decide({KEY: "logging", "sidecar.company.com/status": "{}"})
    assert decision == Skip(SkipReason.ALREADY_INJECTED)
    assert not SkipReason.ALREADY_INJECTED.stamped


def test_an_unknown_policy_admits_uninjected_with_a_warning_naming_it() -> None:
    decision = decide({KEY: "logging,tracing"})
    assert isinstance(decision, Skip)
    assert decision.reason is SkipReason.UNKNOWN_POLICY
    assert decision.warnings == (
        "pod shop/web was admitted without injection: unknown injection policy 'tracing' "
        f"(check the {KEY} annotation)",
    )


def test_strict_mode_denies_an_unknown_policy() -> None:
    decision = decide({KEY: "tracing"}, settings=Selection(strict=True))
    assert decision == Deny("pod shop/web: unknown injection policy 'tracing'; "
                            "known policies: auth, logging, metrics")


def test_the_prefix_is_configurable() -> None:
    settings = Selection(keys=Keys("example.org"))
    assert decide({"example.org/inject": "auth", KEY: "logging"}, settings=settings) == Inject(
        ("auth",))
