"""A dict-in, dict-out face on the official `kubernetes` client for the end-to-end tests."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, cast

from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client import ApiException

Obj = dict[str, Any]

__all__ = ["ApiException", "Kube", "wait_for", "warnings_of"]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until it holds; TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.3)


class Kube:
    """The calls the suite makes, on plain dicts; admission warnings come back with pods."""

    def __init__(self, kubeconfig: str) -> None:
        loader = cast(Any, kube_config).new_client_from_config
        self.api: Any = loader(config_file=kubeconfig)
        self.core: Any = client.CoreV1Api(self.api)
        self.apps: Any = client.AppsV1Api(self.api)
        self.admission: Any = client.AdmissionregistrationV1Api(self.api)
        self.rbac: Any = client.RbacAuthorizationV1Api(self.api)

    def plain(self, obj: object) -> Obj:
        result: Obj = self.api.sanitize_for_serialization(obj)
        return result

    def create_pod(self, namespace: str, body: Obj, *, dry_run: bool = False, raw: bool = False,
                   ) -> tuple[Obj, list[str]]:
        """Create a pod; the stored pod and the admission warnings the client received. `raw`:
        the pod as the apiserver sent it, with the fields this client's models do not know."""
        kwargs = {"dry_run": "All"} if dry_run else {}
        if raw:
            response = self.core.create_namespaced_pod_with_http_info(
                namespace, body, _preload_content=False, **kwargs)
            stored: Obj = json.loads(response.data)
            return stored, warnings_of(response.headers)
        pod, _, headers = self.core.create_namespaced_pod_with_http_info(namespace, body, **kwargs)
        return self.plain(pod), warnings_of(headers)

    def list_pods(self, namespace: str, selector: str = "", *, raw: bool = False) -> list[Obj]:
        """The pods in `namespace` (with these labels); `raw`: as the apiserver sent them."""
        if raw:
            response = self.core.list_namespaced_pod(namespace, label_selector=selector,
                                                     _preload_content=False)
            pods: list[Obj] = json.loads(response.data)["items"]
            return pods
        found = self.core.list_namespaced_pod(namespace, label_selector=selector)
        return [self.plain(p) for p in found.items]

    def create_service_account(self, namespace: str, name: str) -> None:
        self.core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})

    def create_deployment(self, namespace: str, body: Obj, *, dry_run: bool = False,
                          ) -> list[str]:
        """Create a Deployment; the admission warnings the client received."""
        kwargs = {"dry_run": "All"} if dry_run else {}
        _, _, headers = self.apps.create_namespaced_deployment_with_http_info(
            namespace, body, **kwargs)
        return warnings_of(headers)

    def ensure_namespace(self, name: str, *, labels: dict[str, str] | None = None,
                         annotations: dict[str, str] | None = None) -> str:
        body = {"metadata": {"name": name, "labels": labels or {},
                             "annotations": annotations or {}}}
        try:
            self.core.create_namespace(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            self.core.patch_namespace(name, body)
        wait_for(lambda: self.exists(
            lambda: self.core.read_namespaced_service_account("default", name)),
            90, f"serviceaccount {name}/default")
        return name

    def apply_mutating_webhook(self, body: Obj) -> None:
        self._apply_configuration("mutating", body)

    def delete_mutating_webhook(self, name: str) -> None:
        self._delete_configuration("mutating", name)

    def apply_validating_webhook(self, body: Obj) -> None:
        self._apply_configuration("validating", body)

    def delete_validating_webhook(self, name: str) -> None:
        self._delete_configuration("validating", name)

    def _apply_configuration(self, kind: str, body: Obj) -> None:
        """Create or replace a `kind` ("mutating", "validating") webhook configuration."""
        name = body["metadata"]["name"]
        try:
            current = getattr(self.admission, f"read_{kind}_webhook_configuration")(name)
        except ApiException as exc:
            if exc.status != 404:
                raise
            getattr(self.admission, f"create_{kind}_webhook_configuration")(body)
            return
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        getattr(self.admission, f"replace_{kind}_webhook_configuration")(name, body)

    def _delete_configuration(self, kind: str, name: str) -> None:
        try:
            getattr(self.admission, f"delete_{kind}_webhook_configuration")(name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    @staticmethod
    def exists(read: Callable[[], object]) -> bool:
        try:
            read()
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True


def warnings_of(headers: Any) -> list[str]:
    """The texts of the `Warning` response headers (`299 - "text"`)."""
    return [w.split('"', 1)[1].rsplit('"', 1)[0] if '"' in w else w
            for w in _header_values(headers, "Warning")]


def _header_values(headers: Any, name: str) -> list[str]:
    if headers is None:
        return []
    getlist = getattr(headers, "getlist", None)
    if callable(getlist):
        return [str(v) for v in getlist(name)]
    value = headers.get(name)
    return [value] if isinstance(value, str) else []
