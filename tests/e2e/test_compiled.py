"""`policies compile` through the real apiserver, proven by difference: every pod below is
created (dry run) once with the webhook as the only mutator, once with only the compiled
admission policies, and once with both (`--hybrid`: the compiled policies decide what they can,
the webhook the rest); the stored pods and the warnings must be the same. With `--strict`, the
pods the webhook denies are denied by the compiled policies with the same status code and
message.

Kubernetes 1.36+ serves MutatingAdmissionPolicy in admissionregistration.k8s.io/v1; on an older
apiserver the module checks that it does not, which is what `compile`'s 1.36 floor rests on.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from tests.e2e.conftest import POLICIES, STATUS, Register, Webhook, pod_manifest
from tests.e2e.controlplane import MINOR, ControlPlane
from tests.e2e.engines import DENIED_BY, VAP_WARNING, compile_stream, kubectl, normalized
from tests.e2e.kube import ApiException, Kube, wait_for
from tests.e2e.webhookconfig import (
    CONFIG_NAME,
    INJECT,
    RELEASE_NAMESPACE,
    instead_of_the_suites_webhook,
    wait_retired,
    webhook_configuration,
)
from tests.unit.test_compiled_injection import EXTRA
from webhook.cli import cli
from webhook.compiled import MINIMUM_MINOR
from webhook.compiled_injection import Limits
from webhook.policy import load_policy_dir

pytestmark = pytest.mark.e2e
NAMESPACE_POLICIES = "sidecar.company.com/policies"
@dataclass(frozen=True)
class Case:
    """A pod, and the namespace it is created in."""

    name: str
    annotations: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    opted_in: bool = True
    namespace_annotations: dict[str, str] = field(default_factory=dict)
    namespace: str | None = None  # a fixed namespace instead of a fresh one
    spec: dict[str, Any] = field(default_factory=dict)  # merged into the pod's spec
    namespace_labels: dict[str, str] = field(default_factory=dict)
    generate_name: bool = False  # a generateName instead of a name


#: Pods whose decision the compiled policies make themselves: skipped, or never touched.
DECIDED = [
    Case("opted-out", {INJECT: "false"}),
    Case("opted-out-spelled-loosely", {INJECT: " FALSE "}),
    Case("unknown", {INJECT: "nope"}),
    Case("unknown-among-known", {INJECT: "logging, nope ,nope,other"}),
    Case("unknown-namespace-default", {INJECT: "true"},
         namespace_annotations={NAMESPACE_POLICIES: "nope, logging"}),
    Case("no-policies", {INJECT: " , ,"}),
    Case("bare-pod-unknown-namespace-default",  # the stamp adds the whole annotations map
         namespace_annotations={NAMESPACE_POLICIES: "nope"}),
    Case("pod-label-opt-in", {INJECT: "nope"}, {INJECT: "enabled"}, opted_in=False),
    Case("plain-namespace", {INJECT: "nope"}, opted_in=False),
    Case("pod-label-opt-out", {INJECT: "nope"}, {INJECT: "false"}),
    Case("already-stamped", {INJECT: "nope", STATUS: '{"policies":[]}'}),
    Case("system-namespace", {INJECT: "nope"}, {INJECT: "enabled"}, namespace="kube-public"),
    Case("own-namespace", {INJECT: "nope"}, {INJECT: "enabled"}, namespace=RELEASE_NAMESPACE),
    # named in the warning as the webhook saw it, before the apiserver named it
    Case("generate-name-unknown", {INJECT: "nope"}, generate_name=True),
    # no shipped policy supports Windows: skipped `unsupported-os`, with a warning for each
    Case("windows", {INJECT: "metrics-exporter,logging"}, spec={"os": {"name": "windows"}}),
    Case("windows-by-node-selector", spec={"nodeSelector": {"kubernetes.io/os": "windows"}}),
    # (the apiserver refuses pod-level resources with spec.os windows, not with the selector)
    Case("windows-with-pod-level-resources", generate_name=True, spec={
        "nodeSelector": {"kubernetes.io/os": "windows"}, "resources": {"limits": {"cpu": "1"}}}),
]
OWN_LOGS = {"name": "own-logs", "emptyDir": {}}
SHIPPED = load_policy_dir(POLICIES)
LIMITS = Limits.of(list(SHIPPED.policies.values()))
EVERY_POLICY = ",".join(sorted(SHIPPED.names(), reverse=True))


def large(containers: int, env: int, mounts: int) -> dict[str, Any]:
    """A pod spec with this many containers, each with this many env vars and mounts (the
    service-account token's comes on top)."""
    return {"containers": [
        {"name": f"c{i}", "image": "nginx:1.27",
         "env": [{"name": f"E{j}", "value": "x"} for j in range(env)],
         "volumeMounts": [{"name": "own-logs", "mountPath": f"/own/{j}"} for j in range(mounts)]}
        for i in range(containers)], "volumes": [OWN_LOGS]}


#: Pods the compiled policies inject themselves.
INJECTED = [
    Case("defaults"),
    Case("named", {INJECT: "wait-for-database,logging"}),
    Case("namespace-default", {INJECT: "enabled"},
         namespace_annotations={NAMESPACE_POLICIES: "metrics-exporter"}),
    Case("every-policy", {INJECT: EVERY_POLICY}),
    # as large as the engine policy injects itself (webhook.compiled_injection.Limits): the CEL
    # cost limits hold
    Case("at-the-cost-limits", {INJECT: EVERY_POLICY}, spec=large(
        LIMITS.containers, LIMITS.env // LIMITS.containers,
        LIMITS.mounts // LIMITS.containers - 1)),
    Case("at-the-cost-limits-few-containers", {INJECT: EVERY_POLICY}, spec=large(
        2, LIMITS.env // 2, LIMITS.mounts // 2 - 1)),
    Case("repeated-names", {INJECT: " logging, metrics-exporter ,logging"}),
    Case("generate-name", {INJECT: "wait-for-database,service-registration"},
         generate_name=True),
    Case("own-init-containers", {INJECT: "wait-for-database,migrations"}, spec={
        "initContainers": [{"name": "own-init", "image": "busybox:1.37"}]}),
    Case("own-env-and-mounts-win", {INJECT: "logging,metrics-exporter"}, spec={
        "containers": [
            {"name": "app", "image": "nginx:1.27", "env": [{"name": "LOG_DIR", "value": "/own"}],
             "volumeMounts": [{"name": "own-logs", "mountPath": "/var/log/app/"}]},
            {"name": "second", "image": "nginx:1.27"}],
        "volumes": [OWN_LOGS], "imagePullSecrets": [{"name": "own-secret"}]}),
    # every shipped policy is hardened on its own (webhook.compiled_injection.pod_security)
    Case("pod-security-baseline", namespace_labels={
        "pod-security.kubernetes.io/enforce": "baseline"}),
    Case("pod-security-restricted", {INJECT: "logging,wait-for-database"}, spec={
        "containers": [{"name": "app", "image": "nginx:1.27", "securityContext": {
            "runAsNonRoot": True, "runAsUser": 101, "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}}]},
         namespace_labels={"pod-security.kubernetes.io/enforce": "restricted"}),
    Case("no-token", {INJECT: "logging,auth-proxy"},
         spec={"automountServiceAccountToken": False}),
    # pod-level resources (KEP-2837): the envelope grows as the webhook grows it
    Case("pod-level-limits", spec={"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}),
    Case("pod-level-every-policy", {INJECT: EVERY_POLICY}, spec={
        "resources": {"requests": {"cpu": "1.5", "memory": "1.5Gi"},
                      "limits": {"cpu": "3", "memory": "3Gi"}},
        "initContainers": [{"name": "own-sidecar", "image": "busybox:1.37",
                            "restartPolicy": "Always",
                            "resources": {"requests": {"cpu": "250m", "memory": "100M"}}},
                           {"name": "own-init", "image": "busybox:1.37",
                            "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}],
        "containers": [{"name": "app", "image": "nginx:1.27",
                        "resources": {"requests": {"cpu": "0.5", "memory": "512Mi"}}}]}),
    Case("own-annotations-and-labels-win", {INJECT: "logging,auth-proxy",
                                            "logging.company.com/shipper": "own"},
         labels={"auth.company.com/proxied": "own"}),
]
#: Pods that ask for policies the compiled policies leave to the webhook: the hybrid split's
#: other half (webhook.compiled, webhook.compiled_injection).
LEFT_TO_THE_WEBHOOK = [
    # an amount over webhook.compiled_resources MAX_AMOUNT (one finer than a milli never comes:
    # the apiserver rounds every amount up to whole millis before admission)
    Case("pod-level-over-8ti", spec={"resources": {"requests": {"memory": "9Ti"}}}),
    Case("over-the-cost-limits", {INJECT: EVERY_POLICY}, spec=large(2, LIMITS.env // 2 + 1, 1)),
    Case("huge-annotation", {INJECT: ",".join(["nope"] * 200)}),
    Case("python-only-space", {INJECT: "false\x1f"}),
    Case("quoted-unknown-name", {INJECT: "it's"}),
]
#: Pods `--on-conflict deny` (the default) denies for a name clash.
CLASHES = [
    Case("clash-with-own-container", {INJECT: "metrics-exporter, logging"}, spec={
        "containers": [{"name": "app", "image": "nginx:1.27"},
                       {"name": "logging-agent", "image": "nginx:1.27"}]}),
    Case("clash-with-own-init-container", {INJECT: "wait-for-database"}, spec={
        "initContainers": [{"name": "wait-for-database", "image": "busybox:1.37"}]}),
    Case("clash-with-own-volume", {INJECT: "logging"}, spec={
        "volumes": [{"name": "logging-config", "emptyDir": {}}]}),
]
#: Pods `--strict` denies for naming an unknown policy, and pods it still skips.
STRICT = [
    Case("strict-unknown", {INJECT: "nope"}),
    Case("strict-unknown-among-known", {INJECT: "logging, nope ,nope,other"}),
    Case("strict-unknown-namespace-default", {INJECT: "true"},
         namespace_annotations={NAMESPACE_POLICIES: "nope, logging"}),
    Case("strict-opted-out", {INJECT: "false"}),
    Case("strict-no-policies", {INJECT: " , ,"}),
]


Create = Callable[[Case], tuple[dict[str, Any], list[str]]]


@pytest.fixture(scope="module")
def create(kube: Kube) -> Create:
    """Create a case's pod (dry run) in its namespace; the stored pod (every field the apiserver
    sent, not only those the client models) and the warnings, with the
    ValidatingAdmissionPolicy's wrapper taken off them."""
    namespaces: dict[str, str] = {}

    def run(case: Case) -> tuple[dict[str, Any], list[str]]:
        if case.name not in namespaces:
            namespaces[case.name] = case.namespace or kube.ensure_namespace(
                f"compiled-{case.name}-{uuid.uuid4().hex[:4]}",
                labels={**({INJECT: "enabled"} if case.opted_in else {}),
                        **case.namespace_labels},
                annotations=case.namespace_annotations)
        name = f"pod-{case.name}"
        body = pod_manifest(None if case.generate_name else name, annotations=case.annotations,
                            labels=case.labels, generate_name=f"{name}-" if case.generate_name
                            else None)
        body["spec"].update(copy.deepcopy(case.spec))
        pod, warnings = kube.create_pod(namespaces[case.name], body, dry_run=True, raw=True)
        return normalized(pod), [VAP_WARNING.sub("", w) for w in warnings]

    return run


Outcome = tuple[Any, ...]  # ("admitted", pod, warnings) or ("denied", code, message)


def outcome(create: Create, case: Case, denier: str) -> Outcome:
    """What creating the case's pod gave: the stored pod and warnings, or the denial's status
    code and message, without the apiserver's words naming who denied it (which must begin
    with `denier`)."""
    try:
        return ("admitted", *create(case))
    except ApiException as exc:
        message = json.loads(exc.body or "{}").get("message", "")
        by = DENIED_BY.match(message)
        assert by is not None, message
        assert by["by"].startswith(denier), message
        return "denied", exc.status, message[by.end():]


@contextmanager
def compiled(plane: ControlPlane, kube: Kube, stream: str, *, strict: bool = False,
             clashes: bool = False) -> Iterator[None]:
    """The compiled objects applied (and in effect: with `clashes`, the clash denial too, which
    only shows without the webhook, as the webhook denies first), deleted after."""
    kubectl(plane, "apply", "-f", "-", stdin=stream)
    try:
        # each policy has a binding for opted-in namespaces and one for pods opted in by label,
        # and the apiserver loads every binding on its own refresh: probe both ways in
        probes = [(kube.ensure_namespace("compiled-probe", labels={INJECT: "enabled"}), {}),
                  (kube.ensure_namespace("compiled-probe-plain"), {INJECT: "enabled"})]
        wait_for(lambda: all(
            _denied_by_policy(kube, probe, labels) if strict else (
                _stamped_by_policy(kube, probe, labels)
                and (not clashes or _clash_denied_by_policy(kube, probe, labels)))
            for probe, labels in probes), 60, "the compiled policies to take effect")
        yield
    finally:
        kubectl(plane, "delete", "--ignore-not-found", "-f", "-", stdin=stream)
        wait_retired(plane, kube, [o["metadata"]["name"] for o in yaml.safe_load_all(stream)
                                   if o and o["kind"].endswith("AdmissionPolicy")])


def _stamped_by_policy(kube: Kube, namespace: str, labels: dict[str, str]) -> bool:
    body = pod_manifest(f"probe-{uuid.uuid4().hex[:6]}", annotations={INJECT: "probe-unknown"},
                        labels=labels)
    try:
        pod, warnings = kube.create_pod(namespace, body, dry_run=True)
    except ApiException:
        return False
    # both policies: the apiserver picks each up on its own refresh (the engine policy, the
    # larger, later). While the webhook stamps the pod instead, it warns too: one warning, the
    # warning policy's, says the engine policy stamped it
    return ("unknown-policy" in (pod["metadata"].get("annotations") or {}).get(STATUS, "")
            and len(warnings) == 1 and VAP_WARNING.match(warnings[0]) is not None)


def _clash_denied_by_policy(kube: Kube, namespace: str, labels: dict[str, str]) -> bool:
    clash = pod_manifest(f"probe-{uuid.uuid4().hex[:6]}", annotations={INJECT: "logging"},
                         labels=labels,
                         containers=[{"name": "logging-agent", "image": "nginx:1.27"}])
    try:
        kube.create_pod(namespace, clash, dry_run=True)
    except ApiException as exc:
        return "ValidatingAdmissionPolicy" in str(exc.body)
    return False


def _denied_by_policy(kube: Kube, namespace: str, labels: dict[str, str]) -> bool:
    skipped = pod_manifest(f"probe-{uuid.uuid4().hex[:6]}", annotations={INJECT: "false"},
                           labels=labels)
    unknown = pod_manifest(f"probe-{uuid.uuid4().hex[:6]}", annotations={INJECT: "probe-unknown"},
                           labels=labels)
    try:
        pod, _ = kube.create_pod(namespace, skipped, dry_run=True)
        if "opted-out" not in (pod["metadata"].get("annotations") or {}).get(STATUS, ""):
            return False
        kube.create_pod(namespace, unknown, dry_run=True)
    except ApiException as exc:
        return "ValidatingAdmissionPolicy" in str(exc.body)
    return False


def policy_errors(plane: ControlPlane) -> dict[str, float]:
    """The engine policy's checks that ended in an error, by error type (the apiserver's
    `apiserver_mutating_admission_policy_check_total`)."""
    errors: dict[str, float] = {}
    for line in plane.metrics().splitlines():
        if line.startswith("apiserver_mutating_admission_policy_check_total{"):
            labels, _, count = line.rpartition(" ")
            kind = re.search(r'error_type="([^"]*)"', labels)
            if kind and kind[1] != "no_error" and 'policy="sidecar-injector"' in labels:
                errors[kind[1]] = errors.get(kind[1], 0.0) + float(count)
    return errors


@contextmanager
def without_the_webhook(kube: Kube, register: Register) -> Iterator[None]:
    kube.delete_mutating_webhook(CONFIG_NAME)
    try:
        yield
    finally:
        register("Fail")


if MINOR >= MINIMUM_MINOR:

    EVERY_CASE = DECIDED + INJECTED + LEFT_TO_THE_WEBHOOK

    @pytest.fixture(scope="module")
    def by_webhook(register: Register, webhook: Webhook, create: Create,
                   ) -> dict[str, tuple[dict[str, Any], list[str]]]:
        register("Fail")
        return {case.name: create(case) for case in EVERY_CASE}

    def test_the_compiled_policies_alone_decide_as_the_webhook_does(
        control_plane: ControlPlane, kube: Kube, register: Register, create: Create,
        by_webhook: dict[str, tuple[dict[str, Any], list[str]]],
    ) -> None:
        """Without --hybrid the engine policy fails closed: a CEL error would deny a pod."""
        with without_the_webhook(kube, register), \
                compiled(control_plane, kube, compile_stream()):
            alone = {case.name: create(case) for case in EVERY_CASE}
        for case in DECIDED + INJECTED:
            assert alone[case.name] == by_webhook[case.name], case.name
        stamps = {name: (pod["metadata"].get("annotations") or {}).get(STATUS)
                  for name, (pod, _) in alone.items()}
        assert stamps["unknown"] == '{"policies":[],"skipped":"unknown-policy"}'
        assert stamps["opted-out"] == '{"policies":[],"skipped":"opted-out"}'
        assert stamps["no-policies"] == '{"policies":[],"skipped":"no-policies"}'
        assert stamps["windows"] == '{"policies":[],"skipped":"unsupported-os"}'
        windows = alone["windows"][0]["metadata"]["namespace"]
        assert alone["windows"][1] == [  # in the pod's order
            f"pod {windows}/pod-windows: injection policy '{name}' skipped: it supports linux, "
            "and the pod runs on windows" for name in ("metrics-exporter", "logging")]
        generated = alone["generate-name-unknown"][0]["metadata"]["namespace"]
        assert alone["generate-name-unknown"][1] == [
            f"pod {generated}/pod-generate-name-unknown-* was admitted without injection: unknown "
            f"injection policy 'nope' (check the {INJECT} annotation)"]
        assert by_webhook["unknown-among-known"][1] == [
            f"pod {pod['metadata']['namespace']}/pod-unknown-among-known was admitted without "
            "injection: unknown injection policy 'nope', 'other' (check the "
            f"{INJECT} annotation)" for pod in [alone["unknown-among-known"][0]]]
        every = json.loads(stamps["every-policy"] or "{}")
        assert every["policies"] == EVERY_POLICY.split(",")
        assert json.loads(stamps["at-the-cost-limits"] or "{}")["policies"] == every["policies"]
        for case in LEFT_TO_THE_WEBHOOK:  # not compiled: the compiled policies leave them be
            pod, warnings = alone[case.name]
            assert STATUS not in (pod["metadata"].get("annotations") or {}), case.name
            assert warnings == [], case.name

    def test_hybrid_gives_every_pod_what_the_webhook_alone_gives_it(
        control_plane: ControlPlane, kube: Kube, register: Register, create: Create,
        by_webhook: dict[str, tuple[dict[str, Any], list[str]]],
    ) -> None:
        register("Fail")
        before = policy_errors(control_plane)
        with compiled(control_plane, kube, compile_stream("--hybrid")):
            both = {case.name: create(case) for case in EVERY_CASE}
        for case in EVERY_CASE:
            assert both[case.name] == by_webhook[case.name], case.name
        # with --hybrid the engine policy fails open (the webhook then decides): it never did
        assert policy_errors(control_plane) == before
        injected = json.loads(both["named"][0]["metadata"]["annotations"][STATUS])
        assert injected["policies"] == ["wait-for-database", "logging"]

    @contextmanager
    def serving(plane: ControlPlane, factory: pytest.TempPathFactory, release: str, *args: str,
                policies: Path = POLICIES) -> Iterator[dict[str, Any]]:
        """A webhook of the suite's kind with `args` serving `policies`, running: its webhook
        configuration, named after `release`."""
        server = Webhook(factory.mktemp(f"{release}-webhook"), plane.kubeconfig, plane.logs,
                         *args, log_name=f"{release}-webhook.log", policies=policies)
        server.start()
        try:
            yield webhook_configuration(url=server.mutate_url, ca_bundle=server.ca_bundle,
                                        failure_policy="Fail", release=release)
        finally:
            server.stop()

    @pytest.fixture(scope="module")
    def strict_webhook(control_plane: ControlPlane,
                       tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
        """The suite's webhook with `--strict`, running; its webhook configuration."""
        with serving(control_plane, tmp_path_factory, "strict", "--strict") as configuration:
            yield configuration

    def _denied_by_webhook(kube: Kube, namespace: str) -> bool:
        body = pod_manifest(f"probe-{uuid.uuid4().hex[:6]}", annotations={INJECT: "nope"})
        try:
            kube.create_pod(namespace, body, dry_run=True)
        except ApiException as exc:
            return "admission webhook" in str(exc.body)
        return False

    def test_strict_denies_through_both_engines_alike(
        control_plane: ControlPlane, kube: Kube, register: Register, create: Create,
        strict_webhook: dict[str, Any],
    ) -> None:
        with instead_of_the_suites_webhook(kube, strict_webhook):
            probe = kube.ensure_namespace("strict-probe", labels={INJECT: "enabled"})
            wait_for(lambda: _denied_by_webhook(kube, probe), 60,
                     "the strict webhook to take effect")
            by_webhook = {case.name: outcome(create, case, "admission webhook")
                          for case in STRICT}
        with without_the_webhook(kube, register), compiled(
                control_plane, kube, compile_stream("--hybrid", "--strict"), strict=True):
            alone = {case.name: outcome(create, case, "ValidatingAdmissionPolicy")
                     for case in STRICT}
        for case in STRICT:
            assert alone[case.name] == by_webhook[case.name], case.name
        denied = by_webhook["strict-unknown-among-known"]
        assert denied[:2] == ("denied", 403)
        assert re.fullmatch(r"pod compiled-strict-unknown-among-known-\w+/pod-strict-unknown-among-"
                            r"known: unknown injection policy 'nope', 'other'; known policies: "
                            r".*logging.*", denied[2]), denied
        assert [alone[case.name][0] for case in STRICT] == [
            "denied", "denied", "denied", "admitted", "admitted"]

    def test_clashes_are_denied_through_both_engines_alike(
        control_plane: ControlPlane, kube: Kube, register: Register, create: Create,
    ) -> None:
        register("Fail")
        by_webhook = {case.name: outcome(create, case, "admission webhook") for case in CLASHES}
        with without_the_webhook(kube, register), \
                compiled(control_plane, kube, compile_stream(), clashes=True):
            alone = {case.name: outcome(create, case, "ValidatingAdmissionPolicy")
                     for case in CLASHES}
        for case in CLASHES:
            assert alone[case.name] == by_webhook[case.name], case.name
        assert [result[:2] for result in alone.values()] == [("denied", 403)] * len(CLASHES)
        assert re.fullmatch(
            r"pod compiled-clash-with-own-container-\w+/pod-clash-with-own-container: "
            r"injection policy 'logging' adds container 'logging-agent', which clashes with the "
            r"pod's container 'logging-agent'; rename one of them or leave 'logging' out of the "
            rf"{INJECT} annotation", alone["clash-with-own-container"][2])

    PAYMENTS_AGENT = """\
apiVersion: sidecar.company.com/v1alpha1
kind: InjectionPolicy
metadata: {name: payments-agent}
spec:
  namespaceSelector:
    matchLabels: {team: payments}
    matchExpressions: [{key: env, operator: NotIn, values: [dev]}]
  initContainers: [{name: payments-agent, image: "busybox:1.37"}]
"""
    #: a policy restricted to some namespaces (spec.namespaceSelector), asked for inside them
    #: and outside, alone and beside another
    RESTRICTED = [
        Case("restricted-inside", {INJECT: "payments-agent,logging"},
             namespace_labels={"team": "payments", "env": "prod"}),
        Case("restricted-outside", {INJECT: "payments-agent,logging"},
             namespace_labels={"team": "payments", "env": "dev"}),
        Case("restricted-only-outside", {INJECT: "payments-agent"},
             namespace_labels={"team": "shop"}),
    ]

    #: a Windows pod asking for a policy that supports Windows, and a Linux one: the webhook's
    #: (it injects the first and refuses the second)
    WINDOWS_TOO = [Case("windows-dual", {INJECT: "dual-agent,logging"},
                        spec={"os": {"name": "windows"}})]
    #: classic sidecars sharing a pod's envelope, beside one that grows it (both compiled)
    SHARED = [Case("shared-envelope", {INJECT: "shared-agent,logging"}, spec={
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"},
                      "limits": {"cpu": "2", "memory": "2Gi"}}})]

    @pytest.fixture(scope="module")
    def restricted(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory,
                   ) -> Iterator[tuple[Path, dict[str, Any]]]:
        """The shipped policies, payments-agent, dual-agent and shared-agent, and the webhook
        serving them: its policy directory and webhook configuration."""
        policies = tmp_path_factory.mktemp("restricted-policies")
        shutil.copytree(POLICIES, policies, dirs_exist_ok=True)
        (policies / "payments-agent.yaml").write_text(PAYMENTS_AGENT)
        (policies / "dual-agent.yaml").write_text(EXTRA["dual-agent"])
        (policies / "shared-agent.yaml").write_text(EXTRA["shared-agent"])
        with serving(control_plane, tmp_path_factory, "restricted",
                     policies=policies) as configuration:
            yield policies, configuration

    def _refused_by_webhook(kube: Kube, namespace: str) -> bool:
        body = pod_manifest(f"probe-{uuid.uuid4().hex[:6]}",
                            annotations={INJECT: "payments-agent"})
        pod, _ = kube.create_pod(namespace, body, dry_run=True)
        return "namespace-not-allowed" in (pod["metadata"].get("annotations") or {}).get(
            STATUS, "")

    def test_a_policy_restricted_to_some_namespaces_or_for_windows_too_decides_alike(
        control_plane: ControlPlane, kube: Kube, register: Register, create: Create,
        restricted: tuple[Path, dict[str, Any]],
    ) -> None:
        """Through both engines: hybrid gives what the webhook gives; alone, the compiled
        policies inject where they can and leave the rest unstamped."""
        policies, config = restricted
        cases = RESTRICTED + WINDOWS_TOO + SHARED
        with instead_of_the_suites_webhook(kube, config):
            probe = kube.ensure_namespace("restricted-probe", labels={INJECT: "enabled"})
            wait_for(lambda: _refused_by_webhook(kube, probe), 60,
                     "the webhook with payments-agent to take effect")
            by_webhook = {case.name: create(case) for case in cases}
            with compiled(control_plane, kube, compile_stream("--hybrid", "--policies",
                                                              str(policies))):
                both = {case.name: create(case) for case in cases}
        with without_the_webhook(kube, register), \
                compiled(control_plane, kube, compile_stream("--policies", str(policies))):
            alone = {case.name: create(case) for case in cases}
        assert both == by_webhook
        # every policy asked for refused: skipped and warned of by the compiled policies too
        for name in ("restricted-inside", "shared-envelope", "restricted-only-outside"):
            assert alone[name] == by_webhook[name], name
        shared = json.loads(alone["shared-envelope"][0]["metadata"]["annotations"][STATUS])
        assert shared["podResources"] == {"requests": {"cpu": "1", "memory": "1Gi"},
                                          "limits": {"cpu": "2", "memory": "2Gi"}}
        stamp = json.loads(alone["restricted-inside"][0]["metadata"]["annotations"][STATUS])
        assert stamp["policies"] == ["payments-agent", "logging"]
        for name in ("restricted-outside", "windows-dual"):
            # refused in part, or Windows: the compiled policies leave the pod be
            pod, warnings = alone[name]
            assert STATUS not in (pod["metadata"].get("annotations") or {}), name
            assert warnings == [], name
        dual = by_webhook["windows-dual"]
        stamp = json.loads(dual[0]["metadata"]["annotations"][STATUS])
        assert (stamp["policies"], stamp["refused"]) == (["dual-agent"],
                                                         {"logging": "unsupported-os"})
        assert [w for w in dual[1] if "'logging' skipped: it supports linux" in w], dual[1]
        for name in ("restricted-outside", "restricted-only-outside"):
            # the webhook refuses payments-agent only
            pod, warnings = by_webhook[name]
            assert any("'payments-agent' skipped: it is restricted to namespaces matching "
                       "team=payments,env notin (dev)" in w for w in warnings), warnings
        outside = json.loads(by_webhook["restricted-outside"][0]["metadata"]["annotations"][
            STATUS])
        assert outside["policies"] == ["logging"]
        only = json.loads(by_webhook["restricted-only-outside"][0]["metadata"]["annotations"][
            STATUS])
        assert only["skipped"] == "namespace-not-allowed"

    @pytest.fixture(scope="module")
    def strict_restricted(control_plane: ControlPlane, restricted: tuple[Path, dict[str, Any]],
                          tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
        """The webhook serving `restricted`'s policies with `--strict`: its configuration."""
        with serving(control_plane, tmp_path_factory, "strict-restricted", "--strict",
                     policies=restricted[0]) as configuration:
            yield configuration

    def test_strict_denies_a_policy_restricted_away_through_both_engines_alike(
        control_plane: ControlPlane, kube: Kube, register: Register, create: Create,
        restricted: tuple[Path, dict[str, Any]], strict_restricted: dict[str, Any],
    ) -> None:
        """--strict: a pod asking for a policy its namespace may not use is denied, with the
        webhook's message, whether the others may be used there or not."""
        policies, _ = restricted
        with instead_of_the_suites_webhook(kube, strict_restricted):
            probe = kube.ensure_namespace("strict-restricted-probe",
                                          labels={INJECT: "enabled", "team": "shop"})
            wait_for(lambda: _denied_by_webhook(kube, probe), 60,
                     "the strict webhook with payments-agent to take effect")
            by_webhook = {case.name: outcome(create, case, "admission webhook")
                          for case in RESTRICTED}
        with without_the_webhook(kube, register), compiled(
                control_plane, kube, compile_stream("--strict", "--policies", str(policies)),
                strict=True):
            alone = {case.name: outcome(create, case, "ValidatingAdmissionPolicy")
                     for case in RESTRICTED}
        assert alone == by_webhook
        assert [alone[case.name][0] for case in RESTRICTED] == ["admitted", "denied", "denied"]
        assert {alone[name][1] for name in ("restricted-outside", "restricted-only-outside")} == {
            403}
        assert re.fullmatch(
            r"pod compiled-restricted-only-outside-\w+/pod-restricted-only-outside: injection "
            r"policy 'payments-agent' skipped: it is restricted to namespaces matching "
            r"team=payments,env notin \(dev\), and namespace compiled-restricted-only-outside-"
            r"\w+ is not one of them", alone["restricted-only-outside"][2])

    def test_check_cluster_finds_the_api_served(control_plane: ControlPlane) -> None:
        result = CliRunner().invoke(cli, ["policies", "compile", "--hybrid", "--check-cluster",
                                          "--kubeconfig", str(control_plane.kubeconfig)],
                                    env={"POD_NAMESPACE": RELEASE_NAMESPACE})
        assert result.exit_code == 0, result.output
        assert "kind: MutatingAdmissionPolicy" in result.stdout

else:

    def test_this_apiserver_does_not_serve_mutating_admission_policies(kube: Kube) -> None:
        """`compile` targets 1.36+: below it, admissionregistration.k8s.io/v1 has no
        mutatingadmissionpolicies."""
        resources = kube.admission.get_api_resources()
        names = {resource.name for resource in resources.resources}
        assert "validatingadmissionpolicies" in names  # the group itself is served
        assert "mutatingadmissionpolicies" not in names

    def test_check_cluster_refuses_this_apiserver_and_says_what_is_needed(
        control_plane: ControlPlane,
    ) -> None:
        result = CliRunner().invoke(cli, ["policies", "compile", "--hybrid", "--check-cluster",
                                          "--kubeconfig", str(control_plane.kubeconfig)])
        assert result.exit_code == 1
        assert result.stdout == ""
        assert result.stderr.strip().splitlines() == [
            f"error: {control_plane.url} (Kubernetes 1.{MINOR}) does not serve "
            "MutatingAdmissionPolicy in admissionregistration.k8s.io/v1: compiled policies "
            "need Kubernetes 1.36 or newer; keep the webhook"]
