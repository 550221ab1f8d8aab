"""Both engines for every pod of a test: the compiled admission policies beside the webhook.

A test marked `@pytest.mark.engines("compiled", "hybrid")` (or a module with it in `pytestmark`)
creates each of its pods as usual, through the suite's webhook, and then once more (a dry run)
for each engine named, in a twin of the pod's namespace: same labels and annotations, plus
`ENGINE_LABEL: <engine>`. There the pod meets
- `compiled`: only `policies compile`'s objects (the suite's webhook configuration leaves such
  namespaces out, webhookconfig.webhook_configuration);
- `hybrid`: `policies compile --hybrid`'s objects, and the suite's webhook for what they leave.
The test's own assertions run on the original, as they always did; when the test is over, each
twin must have come out as its original did, after the usual normalisation (the namespace's name
put back): the same stored pod and warnings, or the same denial's status code and message. A
pod created more than once alike (a test waiting for the webhook to see a change) is compared
as it came out the last time. A Deployment is created again in the twins too (not as a dry run),
and the pods its ReplicaSet makes must come out the same. The twin namespace gets the
ServiceAccounts the original has, and loses what the original loses.

`engines` with no engine marks a test that is about the webhook itself (its failure policy,
its reinvocation): its pods meet the webhook only. A namespace the test did not make (a system
namespace, the webhook's own) has no twin. Below Kubernetes 1.36 the apiserver serves no
MutatingAdmissionPolicy, and pods meet the webhook only: test_compiled proves the API is absent.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
import subprocess
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import yaml
from click.testing import CliRunner

from tests.e2e.controlplane import ControlPlane
from tests.e2e.kube import ApiException, Kube, wait_for, warnings_of
from tests.e2e.webhookconfig import (
    ENGINE_LABEL,
    INJECT,
    RELEASE_NAMESPACE,
    wait_in_effect,
    wait_retired,
)
from webhook.cli import cli

ENGINES = ("compiled", "hybrid")
#: what the apiserver puts before a webhook's and a ValidatingAdmissionPolicy's denial message
#: (a Forbidden one: `pods "NAME" is forbidden: ` first)
DENIED_BY = re.compile(r"^(pods \"[^\"]+\" is forbidden: )?(?P<by>admission webhook \"[^\"]+\" "
                       r"denied the request|ValidatingAdmissionPolicy '[^']+' with binding "
                       r"'[^']+' denied request): ")
VAP_WARNING = re.compile(r"^Validation failed for ValidatingAdmissionPolicy '[^']+' with binding "
                         r"'[^']+': ")
#: namespaces no test makes: nothing to twin
NOT_TWINNED = frozenset({"default", "kube-system", "kube-public", "kube-node-lease",
                         RELEASE_NAMESPACE})

Obj = dict[str, Any]
Outcome = tuple[Any, ...]  # ("admitted", pod, warnings), ("denied", code, message, warnings)


def normalized(pod: Obj) -> Obj:
    """The stored pod without what differs between two creations of it."""
    pod = copy.deepcopy(pod)
    metadata = pod["metadata"]
    for key in ("uid", "resourceVersion", "creationTimestamp", "managedFields"):
        metadata.pop(key, None)
    if "generateName" in metadata:
        metadata["name"] = metadata["generateName"] + "(generated)"
    for owner in metadata.get("ownerReferences", []):  # a ReplicaSet's pod: its own ReplicaSet
        owner["uid"] = "(uid)"
    text = re.sub(r"kube-api-access-[a-z0-9]{5}", "kube-api-access", json.dumps(pod))
    normal: Obj = json.loads(text)
    return normal


def kubectl(plane: ControlPlane, *args: str, stdin: str) -> None:
    done = subprocess.run(["kubectl", "--kubeconfig", str(plane.kubeconfig), *args], input=stdin,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"


def compile_stream(*args: str) -> str:
    """`policies compile` in-process, with the suite's webhook's settings."""
    result = CliRunner().invoke(cli, ["policies", "compile", "--default-policies", "logging",
                                      *args], env={"POD_NAMESPACE": RELEASE_NAMESPACE})
    assert result.exit_code == 0, result.output
    return result.stdout


def created(create_pod: Callable[..., tuple[Obj, list[str]]], namespace: str, body: Obj, *,
            dry_run: bool) -> tuple[Obj, list[str]] | ApiException:
    """What `create_pod` (Kube.create_pod) returned for a copy of `body` (the pod as the
    apiserver sent it, every field), or the ApiException it raised."""
    try:
        return create_pod(namespace, copy.deepcopy(body), dry_run=dry_run, raw=True)
    except ApiException as exc:
        return exc


def outcome(result: tuple[Obj, list[str]] | ApiException) -> Outcome:
    """A pod creation's result to compare: the stored pod and its warnings in the order the
    client got them (the VAP's wrapper taken off), or the denial's status code and message
    (without the words naming who denied it), or another failure's code and message."""
    if isinstance(result, ApiException):
        message = json.loads(result.body or "{}").get("message", "") or str(result)
        by = DENIED_BY.match(message)
        warnings = [VAP_WARNING.sub("", w) for w in warnings_of(result.headers)]
        if by is None:
            return "failed", result.status, message, warnings
        return "denied", result.status, message[by.end():], warnings
    pod, warnings = result
    return "admitted", normalized(pod), [VAP_WARNING.sub("", w) for w in warnings]


def _bound_to(stream: str, engine: str) -> str:
    """The compiled objects with every binding narrowed to the namespaces of `engine`'s twins."""
    objects = [o for o in yaml.safe_load_all(stream) if o]
    for obj in objects:
        if obj["kind"].endswith("Binding"):
            selector = obj["spec"]["matchResources"]["namespaceSelector"]
            selector.setdefault("matchExpressions", []).append(
                {"key": ENGINE_LABEL, "operator": "In", "values": [engine]})
    return yaml.safe_dump_all(objects, sort_keys=False)


def _policies(stream: str) -> tuple[list[str], list[str]]:
    """The mutating and the validating admission policies of a stream, by name."""
    objects = [o for o in yaml.safe_load_all(stream) if o]
    return ([o["metadata"]["name"] for o in objects if o["kind"] == "MutatingAdmissionPolicy"],
            [o["metadata"]["name"] for o in objects if o["kind"] == "ValidatingAdmissionPolicy"])


class Twins:
    """The engines' twin namespaces, and what the pods created in them came out as."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.create_pod = kube.create_pod  # the unwrapped calls
        self.create_deployment = kube.create_deployment
        #: per twin made (original, engine): the labels and annotations it was given
        self._made: dict[tuple[str, str], tuple[Mapping[str, str], Mapping[str, str]]] = {}
        #: per pod created (its namespace and body): the webhook's outcome and each engine's
        self._results: dict[str, tuple[Outcome, dict[str, Outcome]]] = {}
        #: Deployments created again in a twin: (namespace, twin, engine, body)
        self._deployments: list[tuple[str, str, str, Obj]] = []

    def namespace(self, namespace: str, engine: str) -> str:
        """The twin of `namespace` for `engine`, made (or brought up to date) now, with the
        ServiceAccounts the pods may name."""
        source = self.kube.plain(self.kube.core.read_namespace(namespace))["metadata"]
        labels = {key: value for key, value in (source.get("labels") or {}).items()
                  if key != "kubernetes.io/metadata.name"}
        labels[ENGINE_LABEL] = engine
        annotations = source.get("annotations") or {}
        twin = f"{namespace}-{engine}"
        made = self._made.get((namespace, engine))
        if made != (labels, annotations):
            self.kube.ensure_namespace(twin, labels=labels, annotations=annotations)
            if made is not None:  # what the original no longer has, its twin loses too
                self.kube.core.patch_namespace(twin, {"metadata": {
                    "labels": dict.fromkeys(made[0].keys() - labels.keys()),
                    "annotations": dict.fromkeys(made[1].keys() - annotations.keys())}})
            self._made[(namespace, engine)] = (labels, annotations)
        accounts = [{account.metadata.name for account in
                     self.kube.core.list_namespaced_service_account(each).items}
                    for each in (namespace, twin)]
        for name in sorted(accounts[0] - accounts[1]):
            self.kube.create_service_account(twin, name)
        return twin

    def wrap(self, engines: tuple[str, ...]) -> Callable[..., tuple[Obj, list[str]]]:
        """`Kube.create_pod` that also creates the pod (a dry run) in its `engines`' twin
        namespaces, and keeps what each gave for `differences`."""

        def create_pod(namespace: str, body: Obj, *, dry_run: bool = False,
                       ) -> tuple[Obj, list[str]]:
            first = created(self.create_pod, namespace, body, dry_run=dry_run)
            if namespace not in NOT_TWINNED:
                twins = {engine: self.namespace(namespace, engine) for engine in engines}
                self._results[json.dumps([namespace, body], sort_keys=True)] = (outcome(first), {
                    engine: _renamed(outcome(created(self.create_pod, twin, body, dry_run=True)),
                                     twin, namespace) for engine, twin in twins.items()})
            if isinstance(first, ApiException):
                raise first
            return first

        return create_pod

    def wrap_deployments(self, engines: tuple[str, ...]) -> Callable[..., list[str]]:
        """`Kube.create_deployment` that also creates the Deployment (unless a dry run) in its
        `engines`' twin namespaces, for `differences` to compare their pods."""

        def create_deployment(namespace: str, body: Obj, *, dry_run: bool = False) -> list[str]:
            warnings = self.create_deployment(namespace, copy.deepcopy(body), dry_run=dry_run)
            if namespace not in NOT_TWINNED and not dry_run:
                for engine in engines:
                    twin = self.namespace(namespace, engine)
                    self.create_deployment(twin, copy.deepcopy(body))
                    self._deployments.append((namespace, twin, engine, body))
            return warnings

        return create_deployment

    def _pods_of(self, namespace: str, body: Obj) -> list[Obj]:
        """The pods of the Deployment `body` in `namespace`, once the controllers made them all,
        normalised and in a stable order."""
        labels = body["spec"]["selector"]["matchLabels"]
        selector = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
        replicas = body["spec"].get("replicas", 1)
        wait_for(lambda: len(self.kube.list_pods(namespace, selector)) == replicas, 90,
                 f"the {replicas} pods of Deployment {namespace}/{body['metadata']['name']}")
        return sorted((normalized(pod) for pod in self.kube.list_pods(namespace, selector,
                                                                       raw=True)),
                      key=lambda pod: json.dumps(pod, sort_keys=True))

    def differences(self) -> list[str]:
        """Each engine's result that is not the webhook's, for the pods created since the last
        call; a pod created more than once alike (a test waiting for a result) counts as it
        came out the last time."""
        found = []
        for key, (expected, got) in self._results.items():
            namespace, body = json.loads(key)
            pod = body["metadata"].get("name") or body["metadata"].get("generateName")
            for engine, outcome_ in got.items():
                if outcome_ != expected:
                    found.append(f"pod {pod} in {namespace}: the {engine} engine's result is not "
                                 "the webhook's:\n" + _diff(expected, outcome_, engine))
        for namespace, twin, engine, body in self._deployments:
            pods = ("pods", self._pods_of(namespace, body))
            twins = _renamed(("pods", self._pods_of(twin, body)), twin, namespace)
            if twins != pods:
                found.append(f"Deployment {body['metadata']['name']} in {namespace}: the "
                             f"{engine} engine's pods are not the webhook's:\n"
                             + _diff(pods, twins, engine))
        self._results.clear()
        self._deployments.clear()
        return found


def _diff(expected: Outcome, got: Outcome, engine: str) -> str:
    """The first lines of a diff from the webhook's result to `engine`'s."""
    lines = difflib.unified_diff(json.dumps(expected, indent=1, sort_keys=True).splitlines(),
                                 json.dumps(got, indent=1, sort_keys=True).splitlines(),
                                 "webhook", engine, lineterm="", n=2)
    return "\n".join(list(lines)[:60])


def _renamed(found: Outcome, twin: str, namespace: str) -> Outcome:
    """`found` with the twin namespace's name put back (it holds the original's as a prefix,
    so the original's own name is never rewritten)."""
    text = json.dumps(found).replace(twin, namespace)
    back: list[Any] = json.loads(text)
    return tuple(back)


@contextmanager
def twin_engines(plane: ControlPlane, kube: Kube) -> Iterator[Twins]:
    """Both engines' compiled objects applied and in effect for their twins, deleted after."""
    streams = {engine: _bound_to(compile_stream(
        "--name", f"e2e-twin-{engine}", *(["--hybrid"] if engine == "hybrid" else [])), engine)
        for engine in ENGINES}
    every = "".join(f"---\n{stream}" for stream in streams.values())
    kubectl(plane, "apply", "-f", "-", stdin=every)
    twins = Twins(kube)
    try:
        for engine, stream in streams.items():
            # each policy and each of its bindings (opted-in namespaces, pods opted in by
            # label) is loaded on its own; the warning policy counts a check when it warns
            mutating, validating = _policies(stream)
            for probe, labels in (
                    (kube.ensure_namespace(f"policy-probe-{engine}", labels={
                        INJECT: "enabled", ENGINE_LABEL: engine}), None),
                    (kube.ensure_namespace(f"policy-probe-{engine}-plain", labels={
                        ENGINE_LABEL: engine}), {INJECT: "enabled"})):
                wait_in_effect(plane, kube, mutating, namespace=probe, labels=labels)
                wait_in_effect(plane, kube, validating, namespace=probe, asks="probe-unknown",
                               labels=labels)
        yield twins
    finally:
        kubectl(plane, "delete", "--ignore-not-found", "-f", "-", stdin=every)
        for engine, stream in streams.items():
            mutating, validating = _policies(stream)
            wait_retired(plane, kube, mutating + validating,
                         namespace=f"policy-probe-{engine}")
