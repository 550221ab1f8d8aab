"""The part of a kubelet the image check needs: run one container of a Pod stored in the
apiserver with podman, as a kubelet would.

From the stored Pod (after admission, so with the ServiceAccount plugin's projected token
volume): its image (never pulled: no registry here), command and args with `$(VAR)` expansion,
env (values and downward-API fieldRefs) plus the `KUBERNETES_SERVICE_*` variables, the pod's and
container's securityContext (user, group, fsGroup, read-only root with no writable tmpfs of
podman's own, capabilities, no-new-privileges), and its volumes laid out as the kubelet lays them
out: ConfigMap, Secret and projected volumes as directories of `..data` symlinks (the
service-account token from the TokenRequest API, bound to the pod), emptyDir as a writable dir.
Anything else in the spec raises `Unsupported`: the check must not pass on a spec it did not run.
The host network is shared (the container listens where the apiserver can call it), as with
`hostNetwork: true`; resource limits are not applied; a `preStop` sleep is waited out before
SIGTERM, as the kubelet does.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.controlplane import ROOT
from tests.e2e.kube import Kube

Obj = dict[str, Any]
CONTAINERS_CONF = ROOT / "tools" / "image" / "containers.conf"
PODMAN_ENV = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


class Unsupported(ValueError):  # noqa: N818 - reads as "this spec is unsupported"
    """The Pod uses something this kubelet does not emulate."""


def podman(*args: str, check: bool = True, timeout: float = 120,
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check,
                          timeout=timeout, env=PODMAN_ENV)


@dataclass
class Container:
    """A running container; `stop` runs its preStop sleep, then sends SIGTERM and waits up to
    the rest of the pod's grace period."""

    name: str
    grace_seconds: int
    pre_stop_sleep: int = 0

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def running(self) -> bool:
        state = podman("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return state.stdout.strip() == "true"

    def stop(self) -> tuple[int, float]:
        """SIGTERM, then SIGKILL after the grace period (as the kubelet does): the exit code and
        the seconds it took."""
        started = time.monotonic()
        time.sleep(self.pre_stop_sleep)  # the kubelet's sleep action; still serving meanwhile
        left = max(1, self.grace_seconds - self.pre_stop_sleep)
        podman("stop", "--time", str(left), self.name, timeout=left + 30)
        elapsed = time.monotonic() - started
        code = podman("inspect", "--format", "{{.State.ExitCode}}", self.name).stdout.strip()
        return int(code), elapsed

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", self.name, check=False)


class Kubelet:
    """Runs containers of stored Pods; volumes live under `workdir`."""

    def __init__(self, kube: Kube, workdir: Path, *, apiserver_port: int, ca_pem: bytes) -> None:
        self.kube = kube
        self.workdir = workdir
        self.apiserver_port = apiserver_port
        self.ca_pem = ca_pem

    def run(self, pod: Obj, container_name: str) -> Container:
        spec = pod["spec"]
        (container,) = [c for c in spec["containers"] if c["name"] == container_name]
        name = f"kubelet-{pod['metadata']['name']}-{container_name}"
        env = self._env(pod, container)
        argv = ["run", "--detach", "--name", name, "--network", "host", "--pull", "never",
                *self._security(spec, container), *self._mounts(pod, container)]
        for key, value in env.items():
            argv += ["--env", f"{key}={value}"]
        if container.get("workingDir"):
            argv += ["--workdir", container["workingDir"]]
        if container.get("command"):
            argv += ["--entrypoint", json.dumps(_expand(container["command"], env))]
        argv += [self._image(container), *_expand(container.get("args") or [], env)]
        podman("rm", "--force", "--time", "0", name, check=False)
        podman(*argv)
        pre_stop = ((container.get("lifecycle") or {}).get("preStop") or {})
        if set(pre_stop) - {"sleep"}:
            raise Unsupported(f"preStop {sorted(pre_stop)}")
        return Container(name, int(spec.get("terminationGracePeriodSeconds", 30)),
                         int((pre_stop.get("sleep") or {}).get("seconds", 0)))

    @staticmethod
    def _image(container: Obj) -> str:
        policy = container.get("imagePullPolicy", "IfNotPresent")
        if policy == "Always":
            raise Unsupported("imagePullPolicy: Always needs a registry; none is reachable here")
        image: str = container["image"]
        if podman("image", "exists", image, check=False).returncode != 0:
            raise Unsupported(f"image {image} is not in podman's storage: run `make image-local`")
        return image

    def _env(self, pod: Obj, container: Obj) -> dict[str, str]:
        env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1",
               "KUBERNETES_SERVICE_PORT": str(self.apiserver_port),
               "KUBERNETES_SERVICE_PORT_HTTPS": str(self.apiserver_port),
               "KUBERNETES_PORT": f"tcp://127.0.0.1:{self.apiserver_port}"}
        if container.get("envFrom"):
            raise Unsupported("envFrom")
        for var in container.get("env") or []:
            if "value" in var or "valueFrom" not in var:
                env[var["name"]] = "".join(_expand([var.get("value", "")], env))
            elif "fieldRef" in var["valueFrom"]:
                env[var["name"]] = _field(pod, var["valueFrom"]["fieldRef"]["fieldPath"])
            else:
                raise Unsupported(f"env {var['name']}: valueFrom {sorted(var['valueFrom'])}")
        return env

    @staticmethod
    def _security(spec: Obj, container: Obj) -> list[str]:
        pod_context = spec.get("securityContext") or {}
        context = {**pod_context, **(container.get("securityContext") or {})}
        if context.get("privileged"):
            raise Unsupported("privileged containers")
        user, group = context.get("runAsUser"), context.get("runAsGroup")
        if context.get("runAsNonRoot") and user in (None, 0):
            raise Unsupported("runAsNonRoot without a non-zero runAsUser: the kubelet would check "
                              "the image's user; set runAsUser")
        args = ["--read-only" if context.get("readOnlyRootFilesystem") else "--read-only=false",
                "--read-only-tmpfs=false"]  # the kubelet gives no writable /tmp of its own
        if user is not None:
            args += ["--user", f"{user}:{group}" if group is not None else str(user)]
        for extra in [pod_context.get("fsGroup"), *(pod_context.get("supplementalGroups") or [])]:
            if extra is not None:
                args += ["--group-add", str(extra)]
        capabilities = context.get("capabilities") or {}
        args += [f"--cap-drop={c}" for c in capabilities.get("drop") or []]
        args += [f"--cap-add={c}" for c in capabilities.get("add") or []]
        if context.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        profile = (context.get("seccompProfile") or {}).get("type", "RuntimeDefault")
        if profile != "RuntimeDefault":
            raise Unsupported(f"seccompProfile {profile}")
        return args

    def _mounts(self, pod: Obj, container: Obj) -> list[str]:
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        args = []
        for mount in container.get("volumeMounts") or []:
            if mount.get("subPath") or mount.get("subPathExpr"):
                raise Unsupported(f"volumeMount {mount['name']}: subPath")
            source = self._volume(pod, volumes[mount["name"]])
            mode = "ro" if mount.get("readOnly") else "rw"
            args += ["--volume", f"{source}:{mount['mountPath']}:{mode}"]
        return args

    def _volume(self, pod: Obj, volume: Obj) -> Path:
        namespace: str = pod["metadata"]["namespace"]
        target: Path = self.workdir / pod["metadata"]["name"] / volume["name"]
        if target.exists():
            return target
        if "emptyDir" in volume:
            target.mkdir(parents=True)
            target.chmod(0o777)  # the kubelet makes emptyDirs world-writable
            return target
        if "configMap" in volume:
            files = self._config_map(namespace, volume["configMap"]["name"])
            return _atomic_dir(target, _items(files, volume["configMap"]),
                               volume["configMap"].get("defaultMode", 0o644))
        if "secret" in volume:
            files = self._secret(namespace, volume["secret"]["secretName"])
            return _atomic_dir(target, _items(files, volume["secret"]),
                               volume["secret"].get("defaultMode", 0o644))
        if "projected" in volume:
            files = {}
            for source in volume["projected"]["sources"]:
                files.update(self._projection(pod, source))
            return _atomic_dir(target, files, volume["projected"].get("defaultMode", 0o644))
        raise Unsupported(f"volume {volume['name']}: {sorted(set(volume) - {'name'})}")

    def refresh(self, pod: Obj, volume_name: str) -> None:
        """Show a running container the ConfigMap of its volume `volume_name` as it is now, as
        the kubelet's periodic sync does: the AtomicWriter's swap of `..data` to a new
        timestamped directory, then the top-level links of new keys, old ones removed."""
        (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == volume_name]
        source = volume["configMap"]
        target: Path = self.workdir / pod["metadata"]["name"] / volume_name
        files = _items(self._config_map(pod["metadata"]["namespace"], source["name"]), source)
        old = (target / "..data").readlink()
        stamp = _write_timestamped(target, files, source.get("defaultMode", 0o644))
        (target / "..data_tmp").symlink_to(stamp)
        (target / "..data_tmp").rename(target / "..data")  # rename(2): atomic
        tops = {path.split("/", 1)[0] for path in files}
        for entry in target.iterdir():
            if not entry.name.startswith("..") and entry.name not in tops:
                entry.unlink()
        for top in tops - {entry.name for entry in target.iterdir()}:
            (target / top).symlink_to(f"..data/{top}")
        shutil.rmtree(target / old)

    def _config_map(self, namespace: str, name: str) -> dict[str, bytes]:
        found = self.kube.plain(self.kube.core.read_namespaced_config_map(name, namespace))
        return {k: v.encode() for k, v in (found.get("data") or {}).items()}

    def _secret(self, namespace: str, name: str) -> dict[str, bytes]:
        found = self.kube.plain(self.kube.core.read_namespaced_secret(name, namespace))
        return {k: base64.b64decode(v) for k, v in (found.get("data") or {}).items()}

    def _projection(self, pod: Obj, source: Obj) -> dict[str, bytes]:
        metadata = pod["metadata"]
        if "serviceAccountToken" in source:
            token = source["serviceAccountToken"]
            request = {"spec": {
                "audiences": [token["audience"]] if token.get("audience") else None,
                "expirationSeconds": token.get("expirationSeconds", 3600),
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                                   "name": metadata["name"], "uid": metadata["uid"]}}}
            answer = self.kube.plain(self.kube.core.create_namespaced_service_account_token(
                pod["spec"]["serviceAccountName"], metadata["namespace"], request))
            return {token["path"]: answer["status"]["token"].encode()}
        if "configMap" in source:
            name = source["configMap"]["name"]
            # the root CA ConfigMap's publisher needs the controller manager's --root-ca-file;
            # its content is the apiserver's CA, which is what we have
            files = ({"ca.crt": self.ca_pem} if name == "kube-root-ca.crt"
                     else self._config_map(metadata["namespace"], name))
            return _items(files, source["configMap"])
        if "downwardAPI" in source:
            return {item["path"]: _field(pod, item["fieldRef"]["fieldPath"]).encode()
                    for item in source["downwardAPI"]["items"]}
        raise Unsupported(f"projected source {sorted(source)}")


def _items(files: Mapping[str, bytes], source: Obj) -> dict[str, bytes]:
    """A volume's `items` (key -> path) or every key."""
    if not source.get("items"):
        return dict(files)
    return {item["path"]: files[item["key"]] for item in source["items"]}


def _atomic_dir(target: Path, files: Mapping[str, bytes], mode: int) -> Path:
    """The kubelet's AtomicWriter layout: `..<timestamp>/` holds the files, `..data` links to
    it, and each top-level name links through `..data`."""
    stamp = _write_timestamped(target, files, mode)
    (target / "..data").symlink_to(stamp)
    for top in {path.split("/", 1)[0] for path in files}:
        (target / top).symlink_to(f"..data/{top}")
    return target


def _write_timestamped(target: Path, files: Mapping[str, bytes], mode: int) -> str:
    """`files` in a new `..<timestamp>` directory of `target`; its name."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("..%Y_%m_%d_%H_%M_%S.%f")
    (target / stamp).mkdir(parents=True)
    for path, content in files.items():
        file = target / stamp / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(content)
        file.chmod(mode)
    return stamp


def _field(pod: Obj, path: str) -> str:
    fields: dict[str, str] = {"metadata.name": pod["metadata"]["name"],
              "metadata.namespace": pod["metadata"]["namespace"],
              "metadata.uid": pod["metadata"]["uid"],
              "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
              "spec.nodeName": "kubelet-e2e", "status.podIP": "127.0.0.1",
              "status.hostIP": "127.0.0.1"}
    if path not in fields:
        raise Unsupported(f"fieldRef {path}")
    return fields[path]


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def _expand(values: list[str], env: Mapping[str, str]) -> list[str]:
    """The kubelet's `$(VAR)` expansion: defined names are replaced, `$$` is a literal `$`,
    anything else is left as written."""
    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))
    return [_REFERENCE.sub(one, value) for value in values]
