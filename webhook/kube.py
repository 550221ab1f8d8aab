"""The only user of the Kubernetes client: a watch on Namespaces for their default policies,
the Events on pods' owners (`ApiEventSink`, for events.py), and the one-shot reads and restarts
of `drift` (`Cluster`).

Keeps `namespace -> P/policies` in memory. Without cluster access (no kubeconfig, no in-cluster
config, or the apiserver refuses) the server still serves: `lookup` answers None ("unknown") and
the engine falls back to the global defaults; the reason is logged once and shown on /readyz.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from webhook.errors import ClusterError
from webhook.events import EventSinkError
from webhook.podsecurity import ENFORCE_LABEL, Level, parse_level
from webhook.selection import parse_policy_list

log = logging.getLogger("sidecar_injector.kube")

WATCH_SECONDS = 300
MAX_BACKOFF = 30.0
#: a namespace the watch has not shown yet is read once, within this (connect, answer) time; a
#: failed read is not tried again for FETCH_RETRY_SECONDS
FETCH_TIMEOUT = (1, 2)
FETCH_RETRY_SECONDS = 10.0


class NamespaceDefaults:
    """Namespace default policies, from a background list+watch of Namespaces."""

    def __init__(self, annotation: str, kubeconfig: Path | None,
                 on_version: Callable[[tuple[int, int]], None] | None = None) -> None:
        self.annotation = annotation
        self.kubeconfig = kubeconfig
        self.on_version = on_version
        self.status = "not started"
        self._policies: dict[str, tuple[str, ...]] = {}
        self._levels: dict[str, Level] = {}
        self._labels: dict[str, dict[str, str]] = {}
        self._invalid_levels: set[tuple[str, str]] = set()  # logged once each
        self._failed_reads: dict[str, float] = {}  # namespace -> monotonic time of the failure
        self._api: Any = None
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def lookup(self, namespace: str) -> tuple[str, ...] | None:
        """The namespace's default policies; None while they cannot be known."""
        if not self._synced.is_set():
            return None
        return self._policies.get(namespace, ())

    def pod_security(self, namespace: str) -> Level | None:
        """The Pod Security level the namespace enforces; None without a label, or unknown."""
        if not self._synced.is_set():
            return None
        return self._levels.get(namespace)

    def labels(self, namespace: str) -> dict[str, str] | None:
        """The namespace's labels; None while they cannot be known."""
        if not self._synced.is_set():
            return None
        return self._labels.get(namespace, {})

    @property
    def connected(self) -> bool:
        return self._synced.is_set()

    def missing(self, namespace: str) -> bool:
        """Whether `namespace` is one the watch has not shown yet (a namespace created a moment
        ago), worth a `fetch` before deciding for one of its pods."""
        if not self._synced.is_set() or not namespace or namespace in self._labels:
            return False
        failed = self._failed_reads.get(namespace)
        return failed is None or time.monotonic() - failed > FETCH_RETRY_SECONDS

    def fetch(self, namespace: str) -> None:
        """Read `namespace` now (blocking, bounded by FETCH_TIMEOUT) and remember it, so that
        its first pods get its default policies and labels; on failure, the watch will tell."""
        try:
            self._remember(self._api.read_namespace(namespace, _request_timeout=FETCH_TIMEOUT))
        except Exception as exc:  # the watch stays the source; this read is only a shortcut
            self._failed_reads[namespace] = time.monotonic()
            log.warning("cannot read a namespace the watch has not shown yet: deciding without "
                        "it", extra={"namespace": namespace, "reason": _reason(exc)})
        else:
            self._failed_reads.pop(namespace, None)

    def start(self) -> None:
        """Connect and start watching; without cluster access, say so once and serve without."""
        try:
            if self.kubeconfig is None and "KUBERNETES_SERVICE_HOST" not in os.environ:
                raise RuntimeError("not running in a cluster and no --kubeconfig given")
            api = self._client()
        except Exception as exc:  # any config problem means "no cluster access"
            self.status = f"unavailable: {exc}"
            log.warning("no cluster access: namespace default policies are not known, the "
                        "global defaults apply", extra={"reason": str(exc)})
            return
        self.status = "connecting"
        self._api = api
        self._thread = threading.Thread(target=self._run, args=(api,), name="namespace-watch",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _client(self) -> Any:
        from kubernetes import client  # noqa: PLC0415 - only when serving
        from kubernetes import config as kube_config  # noqa: PLC0415

        loader: Any = kube_config
        if self.kubeconfig is not None:
            api_client = loader.new_client_from_config(config_file=str(self.kubeconfig))
        else:
            loader.load_incluster_config()
            api_client = client.ApiClient()
        self._version_api = client.VersionApi(api_client)
        return client.CoreV1Api(api_client)

    def _report_version(self) -> None:
        """Tell `on_version` the cluster's version (for sidecarMode: auto), once."""
        if self.on_version is None:
            return
        info = self._version_api.get_code(_request_timeout=10)
        try:
            version = int(info.major), int(str(info.minor).rstrip("+"))
        except (TypeError, ValueError):
            log.warning("cannot read the cluster version", extra={"version": str(info)})
        else:
            self.on_version(version)
            log.info("cluster version", extra={"version": f"{version[0]}.{version[1]}"})
        self.on_version = None

    def _run(self, api: Any) -> None:
        from kubernetes import watch  # noqa: PLC0415

        backoff = 1.0
        while not self._stop.is_set():
            try:
                self._report_version()
                listed = api.list_namespace(_request_timeout=30)
                self._policies, self._levels, self._labels = {}, {}, {}
                for namespace in listed.items:
                    self._remember(namespace)
                self._synced.set()
                if self.status != "connected":
                    log.info("watching namespaces", extra={"namespaces": len(self._policies)})
                self.status = "connected"
                watcher: Any = cast(Any, watch).Watch()
                stream = watcher.stream(api.list_namespace,
                                              resource_version=listed.metadata.resource_version,
                                              timeout_seconds=WATCH_SECONDS)
                for event in stream:
                    if self._stop.is_set():
                        return
                    self._apply(event)
                backoff = 1.0  # a watch that ran its course: the next list+watch is routine
            except Exception as exc:  # keep watching whatever the apiserver does
                reason = _reason(exc)
                self.status = f"reconnecting: {reason}"
                log.warning("namespace watch failed; retrying", extra={"reason": reason,
                                                                       "retry_seconds": backoff})
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _apply(self, event: dict[str, Any]) -> None:
        namespace = event["object"]
        name = namespace.metadata.name
        if event["type"] == "DELETED":
            self._policies.pop(name, None)
            self._levels.pop(name, None)
            self._labels.pop(name, None)
        else:
            self._remember(namespace)

    def _remember(self, namespace: Any) -> None:
        name = namespace.metadata.name
        annotations = namespace.metadata.annotations or {}
        self._policies[name] = parse_policy_list(annotations.get(self.annotation, ""))
        self._labels[name] = dict(namespace.metadata.labels or {})
        label: str | None = self._labels[name].get(ENFORCE_LABEL)
        level = parse_level(label)
        if level is None or label is None:
            self._levels.pop(name, None)
            return
        self._levels[name] = level
        if label != level.value and (name, label) not in self._invalid_levels:
            self._invalid_levels.add((name, label))
            log.warning("namespace has an invalid Pod Security level: enforced as restricted, "
                        "as the apiserver does", extra={"namespace": name, "label": ENFORCE_LABEL,
                                                        "value": label})


def _reason(exc: Exception) -> str:
    """One line: an API error's status and reason (its message), not its response headers."""
    status = getattr(exc, "status", None)
    if status is not None:
        return f"{status} {getattr(exc, 'reason', '')}: {getattr(exc, 'body', '') or ''}".strip()
    return str(exc)


# ---------------------------------------------------------------------------------------------
# Events on pods' owners (the recorder and its queue are in events.py)

EVENT_CALL_TIMEOUT = (5, 10)  # seconds to connect, then to answer
MERGE_PATCH = "application/merge-patch+json"


class ApiEventSink:
    """`events.EventSink` on core/v1 Events; every failure is an `EventSinkError`."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client  # noqa: PLC0415 - only when serving

        self._core: Any = client.CoreV1Api(api_client)

    @classmethod
    def connect(cls, kubeconfig: Path | None) -> ApiEventSink | None:
        """A sink with the same cluster access as the Namespace watch; None without any."""
        if kubeconfig is None and "KUBERNETES_SERVICE_HOST" not in os.environ:
            return None
        try:
            from kubernetes import client  # noqa: PLC0415
            from kubernetes import config as kube_config  # noqa: PLC0415

            loader: Any = kube_config
            if kubeconfig is not None:
                return cls(loader.new_client_from_config(config_file=str(kubeconfig)))
            loader.load_incluster_config()
            return cls(client.ApiClient())
        except Exception as exc:  # any config problem means "no cluster access"
            log.warning("no cluster access: no Events are recorded", extra={"reason": str(exc)})
            return None

    def create(self, namespace: str, body: dict[str, Any]) -> None:
        self._call(self._core.create_namespaced_event, namespace, body)

    def patch(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        self._call(self._core.patch_namespaced_event, name, namespace, body,
                   _content_type=MERGE_PATCH)

    @staticmethod
    def _call(method: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        try:
            method(*args, _preload_content=False, _request_timeout=EVENT_CALL_TIMEOUT, **kwargs)
        except Exception as exc:  # the client raises many types; each becomes one line
            raise EventSinkError(getattr(exc, "status", None), _reason(exc)) from None


# ---------------------------------------------------------------------------------------------
# drift: one-shot reads and rollout restarts, on the apiserver's JSON as it is


#: how long a call may take to connect, then to answer (seconds)
CALL_TIMEOUT = (10, 60)
PAGE = 500
STRATEGIC_MERGE = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
#: the field manager of the admission policies `serve --engine` applies
FIELD_MANAGER = "sidecar-injector"
#: admissionregistration.k8s.io/v1 kinds -> the client's method suffix
ADMISSION_KINDS = {"MutatingAdmissionPolicy": "mutating_admission_policy",
                   "MutatingAdmissionPolicyBinding": "mutating_admission_policy_binding",
                   "ValidatingAdmissionPolicy": "validating_admission_policy",
                   "ValidatingAdmissionPolicyBinding": "validating_admission_policy_binding"}


class Cluster:
    """The calls `sidecar-injector drift` makes, on plain dicts; every failure is a one-line
    `ClusterError` that names the call (no kubeconfig, unreachable, forbidden, ...)."""

    def __init__(self, kubeconfig: Path | None) -> None:
        if kubeconfig is None and "KUBERNETES_SERVICE_HOST" not in os.environ:
            raise ClusterError("no cluster access: not running in a cluster and no "
                               "--kubeconfig given")
        if kubeconfig is not None and not kubeconfig.is_file():
            raise ClusterError(f"no cluster access: {kubeconfig}: no such kubeconfig file")
        try:
            from kubernetes import client  # noqa: PLC0415 - only for the cluster commands
            from kubernetes import config as kube_config  # noqa: PLC0415

            loader: Any = kube_config
            if kubeconfig is not None:
                api = loader.new_client_from_config(config_file=str(kubeconfig))
            else:
                loader.load_incluster_config()
                api = client.ApiClient()
        except Exception as exc:  # any config problem means "no cluster access"
            raise ClusterError(f"no cluster access: {_one_line(exc)}") from None
        self.host = str(api.configuration.host)
        self._core: Any = client.CoreV1Api(api)
        self._apps: Any = client.AppsV1Api(api)
        self._batch: Any = client.BatchV1Api(api)
        self._version: Any = client.VersionApi(api)
        self._admission: Any = client.AdmissionregistrationV1Api(api)
        self._rbac: Any = client.RbacAuthorizationV1Api(api)

    def version(self) -> tuple[int, int] | None:
        """The cluster's Kubernetes minor, None when it does not say."""
        info = self._call("read the cluster version", self._version.get_code) or {}
        try:
            return int(info["major"]), int(str(info["minor"]).rstrip("+"))
        except (KeyError, TypeError, ValueError):
            return None

    def namespaces(self) -> list[dict[str, Any]]:
        return self._list("list namespaces", self._core.list_namespace)

    def namespace(self, name: str) -> dict[str, Any] | None:
        return self._call(f"read namespace {name}", self._core.read_namespace, name,
                          missing_ok=True)

    def pods(self, namespace: str | None = None, *,
             label_selector: str | None = None) -> list[dict[str, Any]]:
        """The pods of `namespace` (None: of every namespace), optionally by label."""
        if namespace is None:
            return self._list("list pods", self._core.list_pod_for_all_namespaces,
                              label_selector=label_selector)
        return self._list(f"list pods in namespace {namespace}",
                          self._core.list_namespaced_pod, namespace,
                          label_selector=label_selector)

    def read(self, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
        """A pod's ReplicaSet or Job (to find its Deployment or CronJob); None when gone."""
        method = {"ReplicaSet": self._apps.read_namespaced_replica_set,
                  "Job": self._batch.read_namespaced_job}[kind]
        return self._call(f"read {kind} {namespace}/{name}", method, name, namespace,
                          missing_ok=True)

    def config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._call(f"read ConfigMap {namespace}/{name}",
                          self._core.read_namespaced_config_map, name, namespace,
                          missing_ok=True)

    def admission_resources(self) -> set[str]:
        """The resources admissionregistration.k8s.io/v1 serves (empty when it is not served)."""
        found = self._call("discover admissionregistration.k8s.io/v1",
                           self._admission.get_api_resources, missing_ok=True) or {}
        return {str(r.get("name")) for r in found.get("resources") or []}

    def apply_admission(self, obj: dict[str, Any]) -> None:
        """Server-side apply an admission policy or binding (created when missing), taking
        over fields another manager changed: what `serve --engine` compiled is the truth."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        method = getattr(self._admission, f"patch_{ADMISSION_KINDS[kind]}")
        self._call(f"apply {kind} {name}", method, name, obj, field_manager=FIELD_MANAGER,
                   force=True, _content_type=APPLY_PATCH)

    def cluster_role(self, name: str) -> dict[str, Any] | None:
        return self._call(f"read ClusterRole {name}", self._rbac.read_cluster_role, name,
                          missing_ok=True)

    def delete_admission(self, kind: str, name: str) -> bool:
        """Delete an admission policy or binding; False when there was none."""
        method = getattr(self._admission, f"delete_{ADMISSION_KINDS[kind]}")
        return self._call(f"delete {kind} {name}", method, name, missing_ok=True) is not None

    def deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._call(f"read Deployment {namespace}/{name}",
                          self._apps.read_namespaced_deployment, name, namespace,
                          missing_ok=True)

    def mutating_webhooks(self, name: str) -> dict[str, Any] | None:
        return self._call(f"read MutatingWebhookConfiguration {name}",
                          self._admission.read_mutating_webhook_configuration, name,
                          missing_ok=True)

    def restart(self, namespace: str, kind: str, name: str, body: dict[str, Any], *,
                dry_run: bool) -> dict[str, Any]:
        """Patch a Deployment's, StatefulSet's or DaemonSet's pod template (`kubectl rollout
        restart`); with `dry_run`, the apiserver checks the patch and stores nothing."""
        method = {"Deployment": self._apps.patch_namespaced_deployment,
                  "StatefulSet": self._apps.patch_namespaced_stateful_set,
                  "DaemonSet": self._apps.patch_namespaced_daemon_set}[kind]
        extra: dict[str, Any] = {"dry_run": "All"} if dry_run else {}
        patched = self._call(f"restart {kind} {namespace}/{name}", method, name, namespace, body,
                             _content_type=STRATEGIC_MERGE, **extra)
        return patched or {}  # never None: without missing_ok a 404 raises

    def _list(self, what: str, method: Callable[..., Any], *args: Any,
              **kwargs: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = self._call(what, method, *args, limit=PAGE, _continue=token, **kwargs) or {}
            items += page.get("items") or []
            token = (page.get("metadata") or {}).get("continue") or None
            if token is None:
                return items

    def _call(self, what: str, method: Callable[..., Any], *args: Any,
              missing_ok: bool = False, **kwargs: Any) -> dict[str, Any] | None:
        try:
            response = method(*args, _preload_content=False, _request_timeout=CALL_TIMEOUT,
                              **kwargs)
            result: dict[str, Any] = json.loads(response.data)
        except Exception as exc:  # the client raises many types; each becomes one line
            if missing_ok and getattr(exc, "status", None) == 404:
                return None
            raise ClusterError(f"cannot {what}: {_one_line(exc, self.host)}") from None
        return result


#: how urllib3 names the connection at the start of its errors, which says nothing new
_CONNECTION = re.compile(r"^<?[\w.]*Connection\w*(?:\(.*?\))?(?: object)?(?: at 0x[0-9a-f]+)?>?: ")


def _one_line(exc: Exception, host: str = "") -> str:
    """An API error as `403 Forbidden: <the apiserver's message>`; a connection error as what
    went wrong reaching `host`; anything else as its text, on one line."""
    status = getattr(exc, "status", None)
    if status is not None and hasattr(exc, "body"):
        message = ""
        try:
            body = json.loads(getattr(exc, "body", "") or "")
            message = str(body.get("message") or "") if isinstance(body, dict) else ""
        except ValueError:
            pass
        text = f"{status} {getattr(exc, 'reason', '') or ''}".strip()
        return f"{text}: {message}" if message else text
    reason = getattr(exc, "reason", None)  # urllib3's MaxRetryError wraps the real cause
    if isinstance(reason, Exception):
        cause = _CONNECTION.sub("", str(reason))  # drop "HTTPSConnection(host=..): "
        return " ".join(f"cannot reach {host}: {cause}".split())
    return " ".join(str(exc).split()) or type(exc).__name__
