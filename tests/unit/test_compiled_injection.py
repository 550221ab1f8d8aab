"""`policies compile` injects as the webhook does, offline: for generated pods and namespaces, the
engine's patch and the compiled policy's patch (its `ops`, evaluated by a real CEL implementation,
tests.celeval) give the same pod, stamp included. The compiled policy injects every pod it does
not leave to the webhook on purpose (webhook.compiled_injection); the apiserver, in
tests/e2e/test_compiled.py, is the final oracle."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.celeval import evaluate, run_variables
from tests.conftest import SHIPPED_POLICIES
from webhook.compiled import Target, compile_policies
from webhook.compiled_injection import INJECT, Limits, value
from webhook.engine import EngineConfig, Outcome, mutate, sample_pod_security
from webhook.k8s_schema import quantity
from webhook.keys import Keys
from webhook.platform import OperatingSystem, pod_os
from webhook.podsecurity import ENFORCE_LABEL, Level, parse_level
from webhook.policy import SERVICE_ACCOUNT_MOUNT_PATH, PolicySet, load_policy_dir
from webhook.render import OnConflict
from webhook.selection import (
    Deny,
    Inject,
    Selection,
    Skip,
    SkipReason,
    parse_policy_list,
    requested_policies,
)

KEYS = Keys()
NAMESPACE = "shop"
OWN = "sidecar-injector"
TOKEN = "kube-api-access-x1y2z"
STATUS_KEY = KEYS.status

#: What the shipped policies do not show: classic sidecars, init containers last, pull
#: secrets, pod labels, mounts for some containers only, placeholders in expanded strings (the
#: `$` of the value doubled) and in volumes, env and mounts two policies both add.
EXTRA = {
    "classic-last": """\
apiVersion: sidecar.company.com/v1alpha1
kind: InjectionPolicy
metadata:
  name: classic-last
spec:
  sidecarMode: classic
  initContainerPosition: last
  initContainers:
    - name: setup
      image: busybox:1.37
      command: ["sh", "-c", "echo ${pod.name} $(HOME) ${pod.labels['app']}"]
      volumeMounts:
        - {name: scratch, mountPath: /scratch}
  containers:
    - name: helper
      image: busybox:1.37
      args: ["${pod.annotations[\\"note\\"]}", "plain"]
      env:
        - {name: WHO, value: "${pod.namespace}/${pod.serviceAccountName}/${pod.generateName}"}
  volumes:
    - {name: scratch, emptyDir: {}}
    - name: settings
      configMap: {name: "${pod.labels['app']}-settings"}
  volumeMounts:
    - {name: scratch, mountPath: /scratch/, containers: [app, web]}
    - {name: settings, mountPath: /etc/settings, subPathExpr: "$(POD)-${pod.name}"}
  env:
    - {name: NOTE, value: "note: ${pod.annotations['note']}"}
    - {name: LOG_DIR, value: /scratch}
  podLabels:
    tier: "${pod.labels['app']}"
    sidecar.company.com/helper: "yes"
  imagePullSecrets:
    - {name: regcred}
    - {name: mirror}
""",
    "dual-agent": """\
apiVersion: sidecar.company.com/v1alpha1
kind: InjectionPolicy
metadata:
  name: dual-agent
spec:
  os: [linux, windows]
  containers:
    - {name: dual-agent, image: "busybox:1.37"}
""",
    "privileged-agent": """\
apiVersion: sidecar.company.com/v1alpha1
kind: InjectionPolicy
metadata:
  name: privileged-agent
spec:
  containers:
    - name: node-agent
      image: "busybox:1.37"
      securityContext: {privileged: true}
""",
    "second-agent": """\
apiVersion: sidecar.company.com/v1alpha1
kind: InjectionPolicy
metadata:
  name: second-agent
spec:
  containers:
    - {name: logging-agent, image: "fluent/fluent-bit:3.2.4"}
  volumes:
    - {name: scratch, emptyDir: {}}
""",
    "native-first": """\
apiVersion: sidecar.company.com/v1alpha1
kind: InjectionPolicy
metadata:
  name: native-first
spec:
  sidecarMode: native
  containers:
    - name: proxy
      image: envoyproxy/envoy:v1.32.3
      ports: [{containerPort: 15001, protocol: TCP}]
      volumeMounts: []
  volumeMounts:
    - {name: proxy-certs, mountPath: /var/log/app/, readOnly: true}
  volumes:
    - {name: proxy-certs, emptyDir: {medium: Memory}}
  podAnnotations:
    proxy.example.com/for: "${pod.namespace}/${pod.name}"
    prometheus.io/scrape: "false"
  imagePullSecrets:
    - {name: regcred}
""",
    # restricted to some namespaces: every selector operator
    "payments-agent": """\
apiVersion: sidecar.company.com/v1alpha1
kind: InjectionPolicy
metadata:
  name: payments-agent
spec:
  namespaceSelector:
    matchLabels: {team: payments}
    matchExpressions:
      - {key: env, operator: NotIn, values: [dev, test]}
  initContainers:
    - {name: payments-agent, image: busybox:1.37}
""",
    "audited-agent": """\
apiVersion: sidecar.company.com/v1alpha1
kind: InjectionPolicy
metadata:
  name: audited-agent
spec:
  namespaceSelector:
    matchExpressions:
      - {key: team, operator: In, values: [payments, shop]}
      - {key: audited, operator: Exists}
      - {key: legacy, operator: DoesNotExist}
  containers:
    - {name: audited-agent, image: busybox:1.37}
""",
    # classic sidecars and an init container that share a pod-level envelope (their resources
    # count only in a pod without one)
    "shared-agent": """\
apiVersion: sidecar.company.com/v1alpha1
kind: InjectionPolicy
metadata:
  name: shared-agent
spec:
  sidecarMode: classic
  podResources: share
  initContainers:
    - name: shared-setup
      image: busybox:1.37
      resources: {requests: {cpu: 300m, memory: 32Mi}, limits: {cpu: "1.5", memory: 32Mi}}
  containers:
    - name: shared-agent
      image: busybox:1.37
      resources: {requests: {cpu: 50m, memory: 64Mi}, limits: {cpu: 200m, memory: 1Gi}}
""",
}
RESTRICTED = ["payments-agent", "audited-agent"]
WINDOWS_TOO = "dual-agent"  # the one policy that supports Windows pods too


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> PolicySet:
    directory = tmp_path_factory.mktemp("policies")
    for path in SHIPPED_POLICIES.glob("*.yaml"):
        shutil.copy(path, directory)
    for name, text in EXTRA.items():
        (directory / f"{name}.yaml").write_text(text)
    return load_policy_dir(directory)


_COMPILED: dict[tuple[int, EngineConfig], list[dict[str, Any]]] = {}


def engine_spec(policies: PolicySet, config: EngineConfig,
                name: str = "sidecar-injector") -> dict[str, Any]:
    """The spec of the compiled object `name` (the engine policy, or `...-deny`), compiled
    once per policy set and configuration."""
    key = (id(policies), config)
    if key not in _COMPILED:
        compiled = compile_policies(policies, config, Target(own_namespace=OWN))
        assert compiled.uncompiled == []
        _COMPILED[key] = compiled.objects
    (spec,) = [obj["spec"] for obj in _COMPILED[key] if obj["metadata"]["name"] == name]
    return dict(spec)


def compiled_ops(spec: dict[str, Any], pod: dict[str, Any],
                 namespace: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The compiled policy's decision for `pod` and its patch (none when its matchCondition
    leaves the pod alone)."""
    data = {"object": pod, "namespaceObject": namespace}
    (condition,) = spec["matchConditions"]
    if not evaluate(condition["expression"], data):
        return "", []
    variables = run_variables(spec, data)
    return variables["decision"], variables["ops"]


def engine_outcome(policies: PolicySet, config: EngineConfig, pod: dict[str, Any],
                   namespace: dict[str, Any]) -> Outcome:
    metadata = namespace["metadata"]
    labels = metadata.get("labels", {})
    return mutate(pod, namespace=NAMESPACE, policies=policies, config=config,
                  namespace_policies=parse_policy_list(
                      metadata.get("annotations", {}).get(KEYS.policies, "")),
                  pod_security=parse_level(labels.get(ENFORCE_LABEL)), namespace_labels=labels)


def applied(pod: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = jsonpatch.apply_patch(copy.deepcopy(pod), ops)
    return result


# ---------------------------------------------------------------------------------------------
# Generated pods, shaped as the apiserver hands them to admission: no empty lists or maps.

APP_NAMES = ["app", "web", "worker"]
PATHS = ["/var/log/app", "/var/log/app/", "/var/log/application", "/scratch", "/scratch//",
         "/scratchpad", "/data", "/"]
#: the policies whose env vars, mounts, annotations and pull secrets overlap, asked for often
OVERLAPPING = ["logging", "classic-last", "native-first", "metrics-exporter", "second-agent",
               "privileged-agent", "shared-agent"]
ENV_NAMES = ["LOG_DIR", "NOTE", "STATSD_HOST", "OWN"]
TEXT = st.sampled_from(["web", "we$b", "$(HOME)", "a\"b", "ünï", ""])
HARDENED = {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY = st.sampled_from([None, None, HARDENED, {"privileged": True},
                                      {"runAsUser": 0}, {"runAsNonRoot": False}])
POD_SECURITY = st.sampled_from([None, None, {"runAsNonRoot": True}, {"runAsNonRoot": False},
                                {"runAsUser": 0}, {"seccompProfile": {"type": "Unconfined"}},
                                {"seccompProfile": {"type": "RuntimeDefault"},
                                 "runAsNonRoot": True}])


def _without_empties(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v not in ([], {}, None)}
#: amounts in the forms a pod may be written with, and one finer than a milli (`100u`: the
#: apiserver rounds every amount up to whole millis before admission, so only the engine offline
#: meets it; the compiled policy leaves such a pod with pod-level resources to the webhook)
AMOUNTS = {"cpu": st.sampled_from(["100m", "0.5", "1", "250m", "1.5", "2", "100u"]),
           "memory": st.sampled_from(["128Mi", "1.5Gi", "64M", "1Gi", "100", "1536Mi"])}


@st.composite
def resources(draw: st.DrawFn) -> dict[str, dict[str, str]]:
    """Requests and limits of some of `AMOUNTS`, keys sorted as the apiserver's JSON has them."""
    made = {}
    for field in ("limits", "requests"):
        names = draw(st.lists(st.sampled_from(sorted(AMOUNTS)), unique=True, max_size=2))
        made[field] = {name: draw(AMOUNTS[name]) for name in sorted(names)}
    return _without_empties(made)


@st.composite
def containers(draw: st.DrawFn, names: list[str], token: bool,
               init: bool = False) -> list[dict[str, Any]]:
    made = []
    for name in names:
        env = [{"name": n, "value": "own"} for n in draw(st.lists(st.sampled_from(ENV_NAMES),
                                                                  unique=True, max_size=2))]
        mounts: list[dict[str, Any]] = [{"name": "data", "mountPath": p}
                  for p in draw(st.lists(st.sampled_from(PATHS), unique=True, max_size=2))]
        if token:
            mounts.append({"name": TOKEN, "readOnly": True,
                           "mountPath": SERVICE_ACCOUNT_MOUNT_PATH})
        made.append(_without_empties({
            "name": name, "image": f"{name}:1", "env": env, "volumeMounts": mounts,
            "securityContext": draw(CONTAINER_SECURITY),
            "resources": draw(resources()) if draw(st.booleans()) else None,
            "restartPolicy": "Always" if init and draw(st.booleans()) else None}))
    return made


@st.composite
def pods(draw: st.DrawFn, policy_names: list[str]) -> dict[str, Any]:
    token = draw(st.booleans())
    apps = draw(st.lists(st.sampled_from([*APP_NAMES, "logging-agent"]), min_size=1,
                         max_size=3, unique=True))
    inits = draw(st.lists(st.sampled_from(["init-a", "init-b", "setup"]), max_size=2,
                          unique=True))
    volumes = [{"name": "data", "emptyDir": {}}]
    volumes += [{"name": n, "emptyDir": {}} for n in draw(st.lists(
        st.sampled_from(["cache", "scratch"]), max_size=1))]
    if token:
        volumes.append({"name": TOKEN, "projected": {"sources": [{"serviceAccountToken": {
            "path": "token"}}]}})
    requested = draw(st.lists(st.sampled_from(OVERLAPPING) | st.sampled_from(RESTRICTED)
                              | st.sampled_from(policy_names), min_size=1, max_size=4))
    annotations = {KEYS.inject: ", ".join(requested)} if draw(st.integers(0, 3)) else {}
    if draw(st.booleans()):
        annotations["note"] = draw(TEXT)
    if draw(st.booleans()):
        annotations["prometheus.io/scrape"] = "own"
    labels = {"app": draw(TEXT)} if draw(st.booleans()) else {}
    if draw(st.booleans()):
        labels["tier"] = "own"
    named = draw(st.sampled_from(["name", "generateName", "both"]))
    metadata = _without_empties({
        "name": "web" if named != "generateName" else None,
        "generateName": "web-7d9f-" if named != "name" else None,
        "namespace": NAMESPACE, "labels": labels, "annotations": annotations})
    spec = _without_empties({
        "serviceAccountName": draw(st.sampled_from([None, "default", "orders"])),
        "automountServiceAccountToken": draw(st.sampled_from([None, True, False])),
        "initContainers": draw(containers(inits, token, init=True)),
        "containers": draw(containers(apps, token)),
        "volumes": volumes,
        "imagePullSecrets": [{"name": "regcred"}] if draw(st.booleans()) else [],
        "securityContext": draw(POD_SECURITY),
        "os": {"name": "windows"} if draw(st.integers(0, 9)) == 0 else None,
        "nodeSelector": {"kubernetes.io/os": "windows"} if draw(st.integers(0, 19)) == 0
        else None,
        "resources": draw(resources()) if draw(st.integers(0, 2)) == 0 else None,
    })
    return {"metadata": metadata, "spec": spec}


@st.composite
def namespaces(draw: st.DrawFn, policy_names: list[str]) -> dict[str, Any]:
    labels = {KEYS.inject: "enabled"}
    for key, values in (("team", ["payments", "shop"]), ("env", ["dev", "prod"]),
                        ("audited", [""]), ("legacy", ["yes"])):
        value = draw(st.sampled_from([None, *values]))
        if value is not None:
            labels[key] = value
    level = draw(st.sampled_from([None, None, None, "privileged", "baseline", "restricted"]))
    if level is not None:
        labels[ENFORCE_LABEL] = level
    annotations = {}
    if draw(st.booleans()):
        annotations[KEYS.policies] = ",".join(draw(st.lists(st.sampled_from(policy_names),
                                                            min_size=1, max_size=2)))
    return {"metadata": _without_empties({"name": NAMESPACE, "labels": labels,
                                          "annotations": annotations})}


def kept_by_the_webhook(pod: dict[str, Any], namespace: dict[str, Any],
                        policies: PolicySet, config: EngineConfig) -> bool:
    """The pods webhook.compiled_injection leaves to the webhook on purpose: pod-level
    resources with an amount finer than a milli or over 8Ti, Windows pods asking for a policy
    that supports Windows, a Pod Security level one of the requested policies may break, and a
    namespace a requested policy's namespaceSelector excludes while another requested policy
    may be used there."""
    spec = pod["spec"]
    level = parse_level(namespace["metadata"].get("labels", {}).get(ENFORCE_LABEL))
    requested = requested_policies(pod["metadata"], namespace=NAMESPACE,
                                   settings=config.selection,
                                   namespace_policies=parse_policy_list(namespace["metadata"].get(
                                       "annotations", {}).get(KEYS.policies, "")))
    if isinstance(requested, Skip):
        requested = ()
    risky = level in (Level.BASELINE, Level.RESTRICTED) and any(
        sample_pod_security(policies, name, level) for name in requested if name in policies)
    labels = namespace["metadata"].get("labels", {})
    excluded = [name in policies and (selector := policies[name].namespaces) is not None
                and not selector.matches(labels) for name in requested]
    windows = pod_os(spec) is OperatingSystem.WINDOWS and WINDOWS_TOO in requested
    return not envelope_fits(spec) or windows or risky or (any(excluded) and not all(excluded))


def envelope_fits(spec: dict[str, Any]) -> bool:
    """No pod-level resources, or every amount of a resource set at pod level is a whole
    number of millis up to 8Ti (webhook.compiled_resources `envelopeFits`)."""
    own = spec.get("resources", {})
    names = {name for field in own.values() for name in field}
    found = [own, *(c.get("resources", {}) for c in [*spec.get("initContainers", []),
                                                    *spec["containers"]])]
    return all((q := quantity(amount)) is not None and q * 1000 % 1 == 0 and q <= 8 * 2**40
               for resources in found
               for field in resources.values() for name, amount in field.items()
               if name in names)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), on_conflict=st.sampled_from(["deny", "skip"]))
def test_the_compiled_policy_injects_as_the_engine(
    policies: PolicySet, data: st.DataObject, on_conflict: OnConflict,
) -> None:
    names = policies.names()
    config = EngineConfig(selection=Selection(keys=KEYS, default_policies=("logging",),
                                              own_namespace=OWN), on_conflict=on_conflict)
    pod = data.draw(pods(names))
    namespace = data.draw(namespaces(names))
    decision, ops = compiled_ops(engine_spec(policies, config), pod, namespace)
    outcome = engine_outcome(policies, config, pod, namespace)
    if decision == INJECT:
        assert isinstance(outcome.decision, Inject)
        assert applied(pod, ops) == applied(pod, outcome.patch)
    elif decision in (SkipReason.UNSUPPORTED_OS.value, SkipReason.NAMESPACE_NOT_ALLOWED.value):
        # a Windows pod asking for Linux policies only, or a pod asking only for policies
        # restricted away from its namespace
        assert isinstance(outcome.decision, Skip), outcome
        assert outcome.decision.reason.value == decision
        assert applied(pod, ops) == applied(pod, outcome.patch)
        assert warned(policies, config, applied(pod, ops), namespace) == list(outcome.warnings)
    elif isinstance(outcome.decision, Skip) and (
            outcome.decision.reason is SkipReason.NAMESPACE_NOT_ALLOWED):
        raise AssertionError(f"a namespace-not-allowed skip left to the webhook: {decision!r}")
    elif (isinstance(outcome.decision, Inject) and not outcome.warnings) or (
            isinstance(outcome.decision, Skip)
            and outcome.decision.reason is SkipReason.UNSUPPORTED_OS):
        # the engine injects with nothing to say, or skips a Windows pod: only a pod kept on
        # purpose is not compiled's
        assert decision == ""
        assert kept_by_the_webhook(pod, namespace, policies, config)


def warned(policies: PolicySet, config: EngineConfig, stored: dict[str, Any],
           namespace: dict[str, Any]) -> list[str]:
    """The warning policy's warnings for `stored` (the pod after the engine policy; named by
    the apiserver if it had only a generateName)."""
    warn = engine_spec(policies, config, "sidecar-injector-warn")
    metadata = stored["metadata"]
    if "name" not in metadata:
        metadata = {**metadata, "name": metadata["generateName"] + "x7b2q"}
    data = {"object": {**stored, "metadata": metadata}, "namespaceObject": namespace}
    data["variables"] = run_variables(warn, data)
    return [evaluate(validation["messageExpression"], data)
            for validation in warn["validations"] if not evaluate(validation["expression"], data)]


#: what the webhook injects in a namespace with these labels (payments-agent: team=payments,
#: env notin (dev,test); audited-agent: team in (payments,shop), audited, !legacy)
ALLOWED = [
    ({"team": "payments", "audited": ""}, ("logging", "payments-agent", "audited-agent")),
    ({"team": "shop", "audited": ""}, ("logging", "audited-agent")),
    ({"team": "payments", "env": "dev", "audited": ""}, ("logging", "audited-agent")),
    ({"team": "payments"}, ("logging", "payments-agent")),
    ({"team": "payments", "audited": "", "legacy": "yes"}, ("logging", "payments-agent")),
    ({}, ("logging",)),
]


@pytest.mark.parametrize(("labels", "injected"), ALLOWED)
def test_a_namespace_a_policy_is_restricted_away_from_leaves_the_pod_to_the_webhook(
    policies: PolicySet, labels: dict[str, str], injected: tuple[str, ...],
) -> None:
    config = EngineConfig(selection=Selection(keys=KEYS, own_namespace=OWN))
    pod = {"metadata": {"name": "web", "namespace": NAMESPACE, "annotations": {
        KEYS.inject: "logging,payments-agent,audited-agent"}},
           "spec": {"containers": [{"name": "app", "image": "app:1"}]}}
    namespace = {"metadata": {"name": NAMESPACE, "labels": {KEYS.inject: "enabled", **labels}}}
    decision, ops = compiled_ops(engine_spec(policies, config), pod, namespace)
    outcome = engine_outcome(policies, config, pod, namespace)
    assert isinstance(outcome.decision, Inject)  # the webhook refuses only what is restricted
    assert outcome.decision.policies == injected
    if len(injected) == 3:  # nothing refused: the compiled policy injects, as the webhook does
        assert decision == INJECT
        assert applied(pod, ops) == applied(pod, outcome.patch)
    else:  # left to the webhook, which warns of each refusal
        assert (decision, ops) == ("", [])
        assert len([w for w in outcome.warnings if "is restricted to namespaces matching" in w]
                   ) == 3 - len(injected)


def denials(policies: PolicySet, config: EngineConfig, pod: dict[str, Any],
            namespace: dict[str, Any]) -> list[str]:
    """The deny policy's messages for `pod`, which the engine policy left unstamped."""
    deny = engine_spec(policies, config, "sidecar-injector-deny")
    scope = {"object": pod, "namespaceObject": namespace}
    scope["variables"] = run_variables(deny, scope)
    assert {v["reason"] for v in deny["validations"]} == {"Forbidden"}  # 403, as the webhook's
    return [evaluate(v["messageExpression"], scope) for v in deny["validations"]
            if not evaluate(v["expression"], scope)]


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize(("labels", "asked", "refused"), [
    ({}, "payments-agent, audited-agent", ["payments-agent", "audited-agent"]),
    ({"team": "shop", "audited": ""}, "payments-agent", ["payments-agent"]),
    ({"team": "payments", "env": "dev"}, "audited-agent,payments-agent,audited-agent",
     ["audited-agent", "payments-agent"]),
    # refused only in part: the webhook injects the rest (left to it), or denies with --strict
    ({"team": "payments"}, "logging, audited-agent", ["audited-agent"]),
])
def test_a_pod_asking_for_policies_restricted_away_is_skipped_or_denied_as_by_the_webhook(
    policies: PolicySet, labels: dict[str, str], asked: str, refused: list[str], strict: bool,
) -> None:
    config = EngineConfig(selection=Selection(keys=KEYS, own_namespace=OWN, strict=strict))
    pod = {"metadata": {"name": "web", "namespace": NAMESPACE,
                        "annotations": {KEYS.inject: asked}},
           "spec": {"containers": [{"name": "app", "image": "app:1"}]}}
    namespace = {"metadata": {"name": NAMESPACE, "labels": {KEYS.inject: "enabled", **labels}}}
    decision, ops = compiled_ops(engine_spec(policies, config), pod, namespace)
    outcome = engine_outcome(policies, config, pod, namespace)
    texts = [f"pod {NAMESPACE}/web: injection policy '{name}' skipped: it is restricted to "
             f"namespaces matching {selector.describe()}, and namespace {NAMESPACE} is not one "
             "of them" for name in refused if (selector := policies[name].namespaces)]
    assert len(texts) == len(refused)
    if strict:  # the deny policy denies the unstamped pod, with the webhook's message
        assert isinstance(outcome.decision, Deny)
        assert outcome.message == "; ".join(texts)
        assert (decision, ops) == ("", [])
        assert denials(policies, config, pod, namespace) == [outcome.message]
    elif "logging" in asked:
        assert isinstance(outcome.decision, Inject)
        assert (decision, ops) == ("", [])
    else:  # skipped and stamped as the webhook does, and warned of in its words
        assert isinstance(outcome.decision, Skip)
        assert outcome.decision.reason is SkipReason.NAMESPACE_NOT_ALLOWED
        assert decision == SkipReason.NAMESPACE_NOT_ALLOWED.value
        assert applied(pod, ops) == applied(pod, outcome.patch)
        assert warned(policies, config, applied(pod, ops), namespace) == list(
            outcome.warnings) == texts


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_deny_policy_denies_as_the_engine_with_strict(
    policies: PolicySet, data: st.DataObject,
) -> None:
    """--strict: the deny policy judges the pods the engine policy left unstamped, and denies
    those the engine denies for an unknown policy, a policy restricted away from the namespace
    or a name clash, with its message; the engine denies none of the pods the engine policy
    stamped."""
    names = policies.names()
    config = EngineConfig(selection=Selection(keys=KEYS, default_policies=("logging",),
                                              own_namespace=OWN, strict=True))
    pod = data.draw(pods([*names, "missing"]))
    pod["metadata"].setdefault("name", "web-7d9f-x1y2z")  # as validating admission sees it
    namespace = data.draw(namespaces(names))
    decision, _ = compiled_ops(engine_spec(policies, config), pod, namespace)
    outcome = engine_outcome(policies, config, pod, namespace)
    if decision != "":
        assert not isinstance(outcome.decision, Deny), outcome
        return  # stamped by the engine policy: the deny policy's matchCondition leaves it
    denied = denials(policies, config, pod, namespace)
    if denied:
        assert isinstance(outcome.decision, Deny)
        assert denied == [outcome.message]
    elif isinstance(outcome.decision, Deny):
        assert kept_by_the_webhook(pod, namespace, policies, config)  # the webhook's to deny


def test_a_pod_asking_for_every_policy_gets_what_the_webhook_gives(policies: PolicySet) -> None:
    """Every policy but second-agent, whose names clash with logging's and classic-last's."""
    every = [name for name in reversed(policies.names()) if name != "second-agent"]
    config = EngineConfig(selection=Selection(keys=KEYS, own_namespace=OWN))
    pod = {"metadata": {"generateName": "web-7d9f-", "namespace": NAMESPACE,
                        "labels": {"app": "a$(HOME)"},
                        "annotations": {KEYS.inject: ",".join(every),
                                        "note": "$x"}},
           "spec": {"serviceAccountName": "orders", "containers": [
               {"name": "app", "image": "app:1", "volumeMounts": [
                   {"name": TOKEN, "readOnly": True, "mountPath": SERVICE_ACCOUNT_MOUNT_PATH}]}],
               "volumes": [{"name": TOKEN, "projected": {"sources": []}}]}}
    namespace = {"metadata": {"name": NAMESPACE, "labels": {
        KEYS.inject: "enabled", "team": "payments", "env": "prod", "audited": "yes"}}}
    decision, ops = compiled_ops(engine_spec(policies, config), pod, namespace)
    outcome = engine_outcome(policies, config, pod, namespace)
    assert decision == INJECT
    after = applied(pod, ops)
    assert after == applied(pod, outcome.patch)
    status = json.loads(after["metadata"]["annotations"][KEYS.status])
    assert status["policies"] == every
    helper = next(c for c in after["spec"]["containers"] if c["name"] == "helper")
    assert helper["args"][0] == "$$x"  # expanded by the kubelet: the pod's `$` stays literal
    assert {"name": TOKEN, "readOnly": True, "mountPath": SERVICE_ACCOUNT_MOUNT_PATH} in (
        helper["volumeMounts"])


@pytest.mark.parametrize("requested", [
    "logging, native-first, classic-last, metrics-exporter",
    "metrics-exporter, classic-last, native-first, logging, logging",
])
def test_what_several_policies_both_add_goes_in_once_the_first_policys(
    policies: PolicySet, requested: str,
) -> None:
    """env vars (LOG_DIR), mount paths (/var/log/app and /var/log/app/), annotations
    (prometheus.io/scrape) and pull secrets (regcred) that two policies add, into containers
    that have some of them already or are selected by name."""
    config = EngineConfig(selection=Selection(keys=KEYS, own_namespace=OWN))
    apps = [{"name": "app", "image": "app:1", "env": [{"name": "NOTE", "value": "own"}]},
            {"name": "web", "image": "web:1",
             "volumeMounts": [{"name": "data", "mountPath": "/scratch//"}]},
            {"name": "worker", "image": "worker:1",
             "volumeMounts": [{"name": "data", "mountPath": "/var/log/application"}]}]
    pod = {"metadata": {"name": "web", "namespace": NAMESPACE,
                        "annotations": {KEYS.inject: requested}},
           "spec": {"containers": apps, "volumes": [{"name": "data", "emptyDir": {}}],
                    "imagePullSecrets": [{"name": "mirror"}]}}
    namespace = {"metadata": {"name": NAMESPACE, "labels": {KEYS.inject: "enabled"}}}
    decision, ops = compiled_ops(engine_spec(policies, config), pod, namespace)
    assert decision == INJECT
    assert applied(pod, ops) == applied(pod, injected_by_the_engine(policies, config, pod,
                                                                    namespace))


def injected_by_the_engine(policies: PolicySet, config: EngineConfig, pod: dict[str, Any],
                        namespace: dict[str, Any]) -> list[dict[str, Any]]:
    outcome = engine_outcome(policies, config, pod, namespace)
    assert isinstance(outcome.decision, Inject)
    return outcome.patch


def test_constants_are_dyn_wrapped_cel_values() -> None:
    data = {"a": [1, 2.5, True, None, "x\n\"y\""], "b": {}, "c": []}
    assert evaluate(value(data), {}) == data
    assert value([1, "a"]) == '[dyn(1), dyn("a")]'


def test_policies_that_cannot_be_compiled_are_named_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "big.yaml").write_text(EXTRA["native-first"].replace(
        "      volumeMounts: []", f"      securityContext: {{runAsUser: {2**60}}}"))
    compiled = compile_policies(load_policy_dir(tmp_path), EngineConfig(), Target())
    (left,) = compiled.uncompiled
    assert str(left) == (f"{tmp_path / 'big.yaml'}:4: policy 'native-first': the integer "
                         f"{2**60} is beyond 2**53, which a JSON patch value in the apiserver "
                         "(a float64) cannot hold exactly")


@pytest.mark.parametrize(("amount", "shown"), [("100u", "0.0001"), ("9Ti", "9Ti")])
def test_a_policy_whose_amounts_are_not_whole_millis_is_not_compiled(
    tmp_path: Path, amount: str, shown: str,
) -> None:
    """The compiled pod-level arithmetic adds int64 millis up (webhook.compiled_resources)."""
    (tmp_path / "fine.yaml").write_text(EXTRA["shared-agent"].replace("cpu: 50m",
                                                                      f"cpu: {amount}"))
    compiled = compile_policies(load_policy_dir(tmp_path), EngineConfig(), Target())
    (left,) = compiled.uncompiled
    assert str(left) == (f"{tmp_path / 'fine.yaml'}:4: policy 'shared-agent': container "
                         f"'shared-agent' has requests cpu: {shown}, which is not a whole number "
                         "of millis up to 8Ti (the compiled pod-level resources add millis up)")


def test_a_pod_with_pod_level_amounts_finer_than_a_milli_is_the_webhooks(
    policies: PolicySet,
) -> None:
    config = EngineConfig(selection=Selection(keys=KEYS, own_namespace=OWN))
    namespace = {"metadata": {"name": NAMESPACE, "labels": {KEYS.inject: "enabled"}}}
    for amount, kept in (("100u", True), ("2000u", False), ("0.0015", True), ("9Ti", True)):
        pod = {"metadata": {"name": "web", "namespace": NAMESPACE,
                            "annotations": {KEYS.inject: "logging"}},
               "spec": {"containers": [{"name": "app", "image": "app:1"}],
                        "resources": {"requests": {"cpu": amount}}}}
        decision, ops = compiled_ops(engine_spec(policies, config), pod, namespace)
        assert (decision == "") is kept, amount
        assert kept_by_the_webhook(pod, namespace, policies, config) is kept, amount
        if not kept:
            assert applied(pod, ops) == applied(pod, injected_by_the_engine(
                policies, config, pod, namespace))


@pytest.mark.parametrize(("part", "over"), [
    (part, over) for part in ("containers", "env", "mounts") for over in (False, True)])
def test_a_pod_too_large_for_the_cel_cost_limits_is_the_webhooks(
    policies: PolicySet, part: str, over: bool,
) -> None:
    """Limits, measured through a 1.37 apiserver (tests/e2e/test_compiled.py): past them, the
    engine policy could run out of CEL cost and fail the pod (or, with --hybrid, leave it late).
    `part` of the pod is at its limit, or one over it."""
    limits = Limits.of(list(policies.policies.values()))
    apps = limits.containers - (part != "containers") + (part == "containers" and over)
    wanted = {key: getattr(limits, key) + over if key == part else 0 for key in ("env", "mounts")}

    def spread(total: int, index: int) -> int:  # `total` over the containers, the rest to c0
        return total // apps + (total % apps if index == 0 else 0)

    spec = {"containers": [
        _without_empties({"name": f"c{i}", "image": "app:1",
                          "env": [{"name": f"E{j}", "value": "x"}
                                  for j in range(spread(wanted["env"], i))],
                          "volumeMounts": [{"name": "data", "mountPath": f"/own/{j}"}
                                           for j in range(spread(wanted["mounts"], i))]})
        for i in range(apps)], "volumes": [{"name": "data", "emptyDir": {}}]}
    pod = {"metadata": {"name": "web", "namespace": NAMESPACE,
                        "annotations": {KEYS.inject: "logging"}}, "spec": spec}
    namespace = {"metadata": {"name": NAMESPACE, "labels": {KEYS.inject: "enabled"}}}
    config = EngineConfig(selection=Selection(keys=KEYS, own_namespace=OWN))
    variables = run_variables(engine_spec(policies, config),
                              {"object": pod, "namespaceObject": namespace}, ("decision",))
    assert variables["decision"] == ("" if over else INJECT)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_deny_policy_denies_what_clashes_as_the_engine(
    policies: PolicySet, data: st.DataObject,
) -> None:
    """--on-conflict deny: the deny policy judges the pods the engine policy left unstamped,
    and denies those the engine denies for a name clash, with its message."""
    names = policies.names()
    config = EngineConfig(selection=Selection(keys=KEYS, default_policies=("logging",),
                                              own_namespace=OWN))
    pod = data.draw(pods(names))
    # validating admission sees the generated name of a generateName pod, the webhook does not
    pod["metadata"].setdefault("name", "web-7d9f-x1y2z")
    namespace = data.draw(namespaces(names))
    _, ops = compiled_ops(engine_spec(policies, config), pod, namespace)
    outcome = engine_outcome(policies, config, pod, namespace)
    if ops or STATUS_KEY in pod["metadata"].get("annotations", {}):
        return  # stamped by the engine policy: the deny policy's matchCondition leaves it
    deny = engine_spec(policies, config, "sidecar-injector-deny")
    scope = {"object": pod, "namespaceObject": namespace}
    variables = run_variables(deny, scope)
    (validation,) = deny["validations"]
    admitted = evaluate(validation["expression"], {**scope, "variables": variables})
    if not admitted:
        assert isinstance(outcome.decision, Deny)
        assert evaluate(validation["messageExpression"], {**scope, "variables": variables}) == (
            outcome.message)
    elif isinstance(outcome.decision, Deny):
        assert kept_by_the_webhook(pod, namespace, policies, config)  # the webhook's to deny


@pytest.mark.parametrize(("requested", "apps", "inits", "volumes", "clash"), [
    ("logging", ["app", "logging-agent"], [], [], "container 'logging-agent', which clashes "
     "with the pod's container 'logging-agent'"),
    ("classic-last", ["app"], ["setup"], [], "container 'setup', which clashes with the pod's "
     "init container 'setup'"),
    ("logging,classic-last", ["app"], [], ["scratch"], "volume 'scratch', which clashes with "
     "the pod's volume 'scratch'"),
    ("logging,second-agent", ["app"], [], [], "container 'logging-agent', which clashes with "
     "container 'logging-agent' of injection policy 'logging'"),
    ("classic-last,second-agent", ["app"], [], [], "volume 'scratch', which clashes with volume "
     "'scratch' of injection policy 'classic-last'"),
])
def test_each_kind_of_clash_is_denied_with_the_webhooks_words(
    policies: PolicySet, requested: str, apps: list[str], inits: list[str],
    volumes: list[str], clash: str,
) -> None:
    config = EngineConfig(selection=Selection(keys=KEYS, own_namespace=OWN))
    spec: dict[str, Any] = {"containers": [{"name": n, "image": "app:1"} for n in apps]}
    if inits:
        spec["initContainers"] = [{"name": n, "image": "init:1"} for n in inits]
    if volumes:
        spec["volumes"] = [{"name": n, "emptyDir": {}} for n in volumes]
    pod = {"metadata": {"name": "web", "namespace": NAMESPACE,
                        "annotations": {KEYS.inject: requested}}, "spec": spec}
    namespace = {"metadata": {"name": NAMESPACE, "labels": {KEYS.inject: "enabled"}}}
    outcome = engine_outcome(policies, config, pod, namespace)
    assert outcome.message is not None
    assert clash in outcome.message
    assert compiled_ops(engine_spec(policies, config), pod, namespace) == ("", [])
    deny = engine_spec(policies, config, "sidecar-injector-deny")
    scope = {"object": pod, "namespaceObject": namespace}
    variables = run_variables(deny, scope)
    (validation,) = deny["validations"]
    assert not evaluate(validation["expression"], {**scope, "variables": variables})
    assert evaluate(validation["messageExpression"], {**scope, "variables": variables}) == (
        outcome.message)


@pytest.mark.parametrize("named", ["name", "generateName"])
@pytest.mark.parametrize("windows", [
    {"os": {"name": "windows"}}, {"nodeSelector": {"kubernetes.io/os": "windows"}},
    # skipped before anything is rendered: pod-level resources do not matter
    {"os": {"name": "windows"}, "resources": {"limits": {"cpu": "2"}}}])
def test_a_windows_pod_asking_for_linux_policies_is_skipped_as_the_webhook_skips_it(
    policies: PolicySet, windows: dict[str, Any], named: str,
) -> None:
    config = EngineConfig(selection=Selection(keys=KEYS, default_policies=("logging",),
                                              own_namespace=OWN))
    metadata = {"name" if named == "name" else "generateName": "web-7d9f-", "namespace": NAMESPACE,
                "annotations": {KEYS.inject: "metrics-exporter, logging"}}
    pod = {"metadata": metadata,
           "spec": {"containers": [{"name": "app", "image": "app:1"}], **windows}}
    namespace = {"metadata": {"name": NAMESPACE, "labels": {KEYS.inject: "enabled"}}}
    decision, ops = compiled_ops(engine_spec(policies, config), pod, namespace)
    outcome = engine_outcome(policies, config, pod, namespace)
    assert decision == SkipReason.UNSUPPORTED_OS.value
    assert applied(pod, ops) == applied(pod, outcome.patch)
    shown = "web-7d9f-" if named == "name" else "web-7d9f-*"
    assert warned(policies, config, applied(pod, ops), namespace) == list(outcome.warnings) == [
        f"pod {NAMESPACE}/{shown}: injection policy '{name}' skipped: it supports linux, and the "
        "pod runs on windows" for name in ("metrics-exporter", "logging")]  # the pod's order
    # one policy that supports Windows too, and the pod is the webhook's
    pod["metadata"]["annotations"][KEYS.inject] = f"logging, {WINDOWS_TOO}"
    assert compiled_ops(engine_spec(policies, config), pod, namespace)[0] == ""
