"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager.

envtest-style: binaries come from `KUBEBUILDER_ASSETS` when it names a folder holding them, else
from `bin/` (built from Go modules by `make tools`), for the Kubernetes version `K8S_VERSION`
selects (default: the newest of tools/versions.env). Certificates are made with `webhook.certs`.
Each component logs to `<artifacts>/<name>.log`; the fixture keeps them when a test fails.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.serverproc import free_port
from webhook import certs

ROOT = Path(__file__).resolve().parents[2]
CONTROLLERS = (
    "deployment-controller", "replicaset-controller", "serviceaccount-controller",
    "garbage-collector-controller", "namespace-controller",
)


class ControlPlaneError(RuntimeError):
    """A component could not be found or started; the message says which and where its log is."""


def _versions_env() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "tools" / "versions.env").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            pins[key.strip()] = value.strip().strip('"')
    return pins


K8S_VERSIONS = tuple(_versions_env()["K8S_VERSIONS"].split())
# `make e2e K8S_VERSION=v1.35.4` picks one of tools/versions.env's; the first is the default
K8S_VERSION = os.environ.get("K8S_VERSION") or K8S_VERSIONS[0]
MINOR = int(K8S_VERSION.lstrip("v").split(".")[1])  # of K8S_VERSION
PAIR = ("etcd", "kube-apiserver")


def binary(name: str) -> Path:
    """Where `name` comes from: `KUBEBUILDER_ASSETS` if it holds it (etcd and kube-apiserver
    only as a pair, as envtest ships them), else `bin/` as `make tools` builds it (Kubernetes'
    binaries under `bin/k8s/K8S_VERSION/`); fail naming both places if neither has it."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    candidates = []
    if assets and all((Path(assets) / n).is_file() for n in (PAIR if name in PAIR else (name,))):
        candidates.append(Path(assets) / name)
    kubernetes = name.startswith("kube-") or name == "agnhost"
    candidates.append(ROOT / "bin" / "k8s" / K8S_VERSION / name if kubernetes
                      else ROOT / "bin" / name)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ControlPlaneError(f"{name} not found at {candidates[-1]}: run `make tools "
                            f"K8S_VERSION={K8S_VERSION}` (or set KUBEBUILDER_ASSETS)")


@dataclass
class Process:
    """A started component and its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self, timeout: float = 15) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            tail = self.log.read_text(errors="replace").splitlines()[-15:]
            raise ControlPlaneError(f"{self.name} exited with {self.popen.returncode}; "
                                    f"log {self.log}:\n" + "\n".join(tail))


def start(name: str, argv: Sequence[str], logs: Path, env: dict[str, str] | None = None) -> Process:
    log = logs / f"{name}.log"
    handle = log.open("wb")
    popen = subprocess.Popen(list(argv), stdout=handle, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    handle.close()
    return Process(name, popen, log)


@dataclass
class ControlPlane:
    """etcd + kube-apiserver (+ kube-controller-manager) with an admin kubeconfig."""

    workdir: Path
    logs: Path
    processes: list[Process] = field(default_factory=list)
    apiserver_port: int = 0
    ca: certs.KeyPair | None = None

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    def start(self, *, controller_manager: bool = True) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.logs, ignore_errors=True)  # logs kept by a failed run are stale now
        self.logs.mkdir(parents=True)
        pki = self.workdir / "pki"
        pki.mkdir(exist_ok=True)
        self._etcd()
        self._apiserver(pki)
        if controller_manager:
            self._controller_manager()

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()

    def _etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        process = start("etcd", [
            str(binary("etcd")), "--name=e2e", f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={self.etcd_url}", f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=e2e=http://127.0.0.1:{peer}", "--unsafe-no-fsync=true",
            "--log-level=warn",
        ], self.logs)
        self.processes.append(process)
        _wait(process, lambda: _http_ok(f"{self.etcd_url}/health"), 60)

    def _apiserver(self, pki: Path) -> None:
        self.ca = ca = certs.new_ca("e2e-apiserver-ca")
        ca.write(pki / "ca.crt", pki / "ca.key")
        serving = certs.issue(ca, "localhost", dns_names=["localhost"], ip_addresses=["127.0.0.1"])
        serving.write(pki / "apiserver.crt", pki / "apiserver.key")
        admin = certs.issue(ca, "admin", organizations=["system:masters"], client=True)
        admin.write(pki / "admin.crt", pki / "admin.key")
        signing = certs.new_signing_key()
        signing.write(pki / "sa.pub", pki / "sa.key")
        self.apiserver_port = port = free_port()
        process = start("kube-apiserver", [
            str(binary("kube-apiserver")), f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={port}",
            # 1.37 refuses a loopback advertise address for the endpoint reconciler of the
            # `kubernetes` Service; nothing here reaches the apiserver through that Service
            "--endpoint-reconciler-type=none",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}", "--service-cluster-ip-range=10.0.0.0/24",
            f"--service-account-issuer=https://127.0.0.1:{port}/",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--authorization-mode=RBAC", "--allow-privileged=true",
            f"--cert-dir={pki}",
        ], self.logs)
        self.processes.append(process)
        self._write_kubeconfig(pki)
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        _wait(process, lambda: _http_ok(f"{self.url}/readyz", context), 180)

    def _controller_manager(self) -> None:
        process = start("kube-controller-manager", [
            str(binary("kube-controller-manager")), f"--kubeconfig={self.kubeconfig}",
            "--leader-elect=false", f"--controllers={','.join(CONTROLLERS)}",
            "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
            f"--cert-dir={self.workdir / 'kcm'}",
        ], self.logs)
        self.processes.append(process)
        process.check_alive()  # readiness: the caller waits for a ServiceAccount it creates

    def _write_kubeconfig(self, pki: Path) -> None:
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "e2e",
            "clusters": [{"name": "e2e", "cluster": {
                "server": self.url, "certificate-authority": str(pki / "ca.crt")}}],
            "users": [{"name": "admin", "user": {
                "client-certificate": str(pki / "admin.crt"),
                "client-key": str(pki / "admin.key")}}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "admin"}}],
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))

    def metrics(self) -> str:
        """The apiserver's Prometheus text (`/metrics`), read as the admin."""
        pki = self.workdir / "pki"
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10,
                                    context=context) as response:
            text: str = response.read().decode()
            return text

    def keep_logs(self, keep: bool) -> None:
        if not keep:
            shutil.rmtree(self.logs, ignore_errors=True)


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _wait(process: Process, ready: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        process.check_alive()
        if ready():
            return
        if time.monotonic() > deadline:
            raise ControlPlaneError(f"{process.name} not ready after {timeout:.0f}s; "
                                    f"log {process.log}")
        time.sleep(0.25)
