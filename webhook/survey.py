"""`sidecar-injector drift` against a cluster: load the server's policies (a directory, or the
chart's ConfigMap), survey the pods, restart the drifted workloads, render the report.

The cluster is reached only through a `Source` (`kube.Cluster` in the CLI, a fake in tests);
what drifted and why is `drift`'s, and it is pure.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from webhook.drift import (
    Namespace,
    Output,
    Report,
    Restart,
    classify,
    group,
    in_scope,
    not_restartable,
    parents_to_read,
    render,
    restart_patch,
    rollout_note,
)
from webhook.engine import EngineConfig
from webhook.errors import ClusterError, PolicyError
from webhook.keys import OPT_IN
from webhook.policy import PolicySet, load_policy_dir
from webhook.settings import Settings

#: the chart's name, as `_helpers.tpl`'s `sidecar-injector.fullname` uses it
CHART_NAME = "sidecar-injector"


# ---------------------------------------------------------------------------------------------
# Against a cluster


class Source(Protocol):
    """The cluster calls drift makes (`kube.Cluster`); each raises `ClusterError`."""

    def version(self) -> tuple[int, int] | None: ...

    def namespaces(self) -> list[dict[str, Any]]: ...

    def namespace(self, name: str) -> dict[str, Any] | None: ...

    def pods(self, namespace: str | None = None, *,
             label_selector: str | None = None) -> list[dict[str, Any]]: ...

    def read(self, namespace: str, kind: str, name: str) -> dict[str, Any] | None: ...

    def config_map(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def deployment(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def mutating_webhooks(self, name: str) -> dict[str, Any] | None: ...

    def restart(self, namespace: str, kind: str, name: str, body: dict[str, Any], *,
                dry_run: bool) -> dict[str, Any]: ...


def survey(source: Source, *, namespace: str | None, policies: PolicySet,
           config: EngineConfig, pod_opt_in: bool = True) -> Report:
    """Check the pods of `namespace`, or of every opted-in namespace and (with `pod_opt_in`,
    the chart's `webhook.podOptIn`) those opted in by label elsewhere, against `policies`."""
    keys = config.selection.keys
    if namespace is not None:
        found = source.namespace(namespace)
        if found is None:
            raise ClusterError(f"namespace {namespace} not found")
        spaces = {namespace: Namespace.of(found)}
        pods = source.pods(namespace)
    else:
        spaces = {ns.name: ns for ns in map(Namespace.of, source.namespaces())}
        pods = (source.pods(label_selector=f"{keys.inject}={OPT_IN}")  # opted in by label
                if pod_opt_in else [])
        for ns in spaces.values():
            if ns.opted_in(keys) and not config.selection.untouched(ns.name):
                pods += [p for p in source.pods(ns.name)
                         if (p["metadata"].get("labels") or {}).get(keys.inject) != OPT_IN]
    checked, drifts = 0, []
    for pod in pods:
        space = spaces.get(str(pod["metadata"].get("namespace") or ""))
        if space is None or not in_scope(pod, space, config.selection, pod_opt_in=pod_opt_in):
            continue
        checked += 1
        drift = classify(pod, namespace=space, policies=policies, config=config)
        if drift is not None:
            drifts.append(drift)
    parents = {key: source.read(*key) for key in sorted(parents_to_read(drifts))}
    return Report(checked, group(drifts, parents))


def restart(source: Source, report: Report, *, dry_run: bool, now: datetime) -> list[str]:
    """Restart each drifted workload that can be rolled; record what happened on each group.
    The errors (a refused patch), one line each."""
    body = restart_patch(now)
    errors = []
    for item in report.groups:
        why_not = not_restartable(item)
        if why_not is not None:
            item.restart = Restart("not-restarted", why_not)
            continue
        workload = item.workload
        try:
            patched = source.restart(workload.namespace, workload.kind, workload.name,
                                     copy.deepcopy(body), dry_run=dry_run)
        except ClusterError as exc:
            item.restart = Restart("failed", str(exc))
            errors.append(str(exc))
            continue
        item.restart = Restart("would-restart" if dry_run else "restarted",
                               rollout_note(workload.kind, patched))
    return errors


def with_cluster_version(config: EngineConfig, version: tuple[int, int] | None) -> EngineConfig:
    """`config` with the cluster's version for `sidecarMode: auto`, unless one was configured
    (what the server learns the same way)."""
    if config.kube_version is not None or version is None:
        return config
    return replace(config, kube_version=version)


# ---------------------------------------------------------------------------------------------
# The chart's policies


def chart_fullname(release: str) -> str:
    """`sidecar-injector.fullname` of the chart's `_helpers.tpl` for a release name."""
    name = release if CHART_NAME in release else f"{release}-{CHART_NAME}"
    return name[:63].removesuffix("-")


def policies_config_map(release: str) -> str:
    """The name of the ConfigMap holding the policies the chart's server serves."""
    return f"{chart_fullname(release)}-policies"


def load_config_map_policies(config_map: Mapping[str, Any], where: str) -> PolicySet:
    """Load a ConfigMap's policy files as the server loads its mounted directory, so problems
    are the same `file:line: message` lines, the file named `where/KEY`."""
    data = config_map.get("data") or {}
    with tempfile.TemporaryDirectory(prefix="sidecar-injector-policies-") as tmp:
        root = Path(tmp)
        for key, text in data.items():
            if isinstance(text, str) and not key.startswith(".") and "/" not in key:
                (root / key).write_text(text, encoding="utf-8")
        try:
            return load_policy_dir(root)
        except PolicyError as exc:
            raise PolicyError([problem.replace(str(root), where)
                               for problem in exc.problems]) from None


# ---------------------------------------------------------------------------------------------
# The command

#: exit codes: nothing drifted, something did, bad usage or a cluster error
CLEAN, DRIFTED, FAILED = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Request:
    """What `sidecar-injector drift` was asked."""

    settings: Settings
    namespace: str | None = None
    policies_dir: Path | None = None
    release: str | None = None
    release_namespace: str = CHART_NAME
    output: Output = "table"
    restart: bool = False
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class Result:
    """What to print on stdout, the error lines for stderr, and the exit code."""

    text: str
    errors: list[str]
    exit_code: int
    notes: tuple[str, ...] = ()  # for stderr, whatever the exit code


def run(request: Request, *, connect: Callable[[Path | None], Source],
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        server_flags: ServerFlags | None = None) -> Result:
    """The whole command: load the server's policies, survey, restart if asked, render.
    With `--release`, the server's own settings (`server_flags` reads them from its Deployment's
    arguments) fill in those not given, and its webhook configuration says whether pods opt in
    by label. PolicyError (invalid policies) and ClusterError (no access, a refused read)
    propagate."""
    policies = load_policy_dir(request.policies_dir) if request.policies_dir else None
    cluster = connect(request.settings.kubeconfig)
    settings, pod_opt_in = request.settings, True
    notes: list[str] = []
    if request.release is not None:
        settings, pod_opt_in, notes = release_settings(cluster, request, server_flags)
    if policies is None:
        release, where = request.release or CHART_NAME, request.release_namespace
        name = policies_config_map(release)
        found = cluster.config_map(where, name)
        if found is None:
            raise ClusterError(f"ConfigMap {where}/{name} not found: is {release} the Helm "
                               f"release (--release) and {where} its namespace "
                               "(--release-namespace)?")
        policies = load_config_map_policies(found, f"configmap/{where}/{name}")
    config = settings.engine_config()
    if config.selection.own_namespace is None:  # POD_NAMESPACE unset: the release's is the one
        config = replace(config, selection=replace(config.selection,
                                                   own_namespace=request.release_namespace))
    config = with_cluster_version(config, cluster.version())
    report = survey(cluster, namespace=request.namespace, policies=policies, config=config,
                    pod_opt_in=pod_opt_in)
    errors = []
    if request.restart or request.dry_run:
        errors = restart(cluster, report, dry_run=request.dry_run, now=now())
    code = FAILED if errors else DRIFTED if report.groups else CLEAN
    return Result(render(report, request.output), errors, code, tuple(notes))


#: reads a `serve` command line into Settings fields (the CLI parses it with its own options)
ServerFlags = Callable[[list[str]], Mapping[str, Any]]
#: the settings that shape an injection, which a release's Deployment may set
SHAPING = ("default_policies", "prefix", "strict", "on_conflict", "kube_version")


def release_settings(cluster: Source, request: Request, server_flags: ServerFlags | None,
                     ) -> tuple[Settings, bool, list[str]]:
    """The settings to judge pods by: those given, then for the others the release's
    Deployment's `serve` arguments; whether the release's webhook has the pod-label entry; and
    notes that say where each came from (or why it could not be read)."""
    assert request.release is not None
    fullname, where = chart_fullname(request.release), request.release_namespace
    settings, notes = request.settings, []
    try:
        deployment = cluster.deployment(where, fullname)
    except ClusterError as exc:
        deployment = None
        notes.append(f"{exc}: judging by the settings given")
    if deployment is not None and server_flags is not None:
        containers = ((deployment.get("spec") or {}).get("template") or {}).get(
            "spec", {}).get("containers") or []
        args = next((c.get("args") or [] for c in containers if "serve" in (c.get("args") or [])),
                    [])
        found = server_flags([a for a in args if a != "serve"]) if args else {}
        taken = {key: value for key, value in found.items()
                 if key in SHAPING and value is not None and key not in settings.model_fields_set}
        if taken:
            settings = settings.model_copy(update=taken)
            notes.append(f"settings from Deployment {where}/{fullname}: " + ", ".join(
                f"{key.replace('_', '-')}={value}" for key, value in sorted(taken.items())))
    pod_opt_in = True
    try:
        configuration = cluster.mutating_webhooks(fullname)
    except ClusterError as exc:
        configuration = None
        notes.append(f"{exc}: assuming pods may opt in by label")
    if configuration is not None:
        names = [str(w.get("name") or "") for w in configuration.get("webhooks") or []]
        pod_opt_in = any(name.startswith("pod.") for name in names)
    return settings, pod_opt_in, notes
