"""The only user of the Kubernetes client: a watch on Namespaces for their default policies.

Keeps `namespace -> P/policies` in memory. Without cluster access (no kubeconfig, no in-cluster
config, or the apiserver refuses) the server still serves: `lookup` answers None ("unknown") and
the engine falls back to the global defaults; the reason is logged once and shown on /readyz.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from webhook.podsecurity import ENFORCE_LABEL, Level, parse_level
from webhook.selection import parse_policy_list

log = logging.getLogger("sidecar_injector.kube")

WATCH_SECONDS = 300
MAX_BACKOFF = 30.0


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
