"""High availability under faults, through the real apiserver: two `serve` replicas behind HAProxy
(a real load balancer, health-checking `/readyz`) as the apiserver's webhook URL, with
`failurePolicy: Fail`, while pods are created at a steady rate and each replica is restarted in
turn, the serving certificate is rotated twice, and the policy set is replaced by a good one, a
bad one (refused: the last good set keeps serving) and a good one again.

Used by tests/e2e/test_ha.py (a short run in `make e2e`) and `make soak` (3 minutes).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.kube import ApiException, Kube
from tests.serverproc import ServerProcess, free_port
from webhook import certs
from webhook.policy import load_policy_dir, revision

POLICY = "logging"


@dataclass
class Creations:
    """What the pod-creating loop saw."""

    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


def haproxy_config(port: int, replicas: list[ServerProcess]) -> str:
    servers = "\n".join(f"  server r{i} 127.0.0.1:{r.port}" for i, r in enumerate(replicas))
    return f"""global
  maxconn 4096
defaults
  mode tcp
  timeout connect 2s
  # longer than the apiserver keeps an idle connection (90 s), as the server's keep-alive is:
  # whoever closes an idle connection first races the client's next request on it
  timeout client 150s
  timeout server 150s
  retries 3
  option redispatch
frontend webhook
  bind 127.0.0.1:{port}
  default_backend replicas
backend replicas
  balance roundrobin
  option httpchk GET /readyz
  http-check expect status 200
  # a replica marked down gets no new connections; those it has are left to it to drain (as
  # kube-proxy leaves established connections to a terminating endpoint)
  default-server check check-ssl verify none inter 200ms fall 1 rise 2
{servers}
"""


@contextmanager
def haproxy(workdir: Path, replicas: list[ServerProcess], log: Path) -> Iterator[int]:
    """HAProxy in front of `replicas` (TLS passed through: the apiserver checks the replicas'
    own certificate); the port it listens on."""
    binary = shutil.which("haproxy")
    if binary is None:
        raise RuntimeError("haproxy is not installed: `make e2e` installs it (apt-get install "
                           "haproxy)")
    port = free_port()
    config = workdir / "haproxy.cfg"
    config.write_text(haproxy_config(port, replicas))
    with log.open("wb") as handle:
        process = subprocess.Popen([binary, "-f", str(config), "-db"], stdout=handle,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        if process.poll() is not None:
            raise RuntimeError(f"haproxy exited with {process.returncode}: {log.read_text()}")
        yield port
    finally:
        process.terminate()
        process.wait(10)


def replicas(workdir: Path, policies: Path, kubeconfig: Path, logs: Path,
             count: int = 2) -> list[ServerProcess]:
    """`count` serve processes on one policies folder, with one serving pair (the first's)."""
    made: list[ServerProcess] = []
    for index in range(count):
        replica = ServerProcess(workdir / f"replica-{index}", policies=policies,
                                log=logs / f"replica-{index}.log",
                                args=["--kubeconfig", str(kubeconfig), "--reload-interval", "0.2"],
                                env={"POD_NAMESPACE": "sidecar-injector-ha"})
        if made:
            for name in ("ca.crt", "ca.key", "tls.crt", "tls.key"):
                shutil.copy(made[0].certs / name, replica.certs / name)
        made.append(replica)
    return made


def rotate(replicas: list[ServerProcess]) -> None:
    """A new serving pair from the same CA, written where every replica reads it."""
    first = replicas[0].certs
    ca = certs.KeyPair((first / "ca.crt").read_bytes(), (first / "ca.key").read_bytes())
    pair = certs.issue(ca, "sidecar-injector", dns_names=["localhost"],
                       ip_addresses=["127.0.0.1"])
    for replica in replicas:
        staged = replica.certs / "staged"
        staged.mkdir(exist_ok=True)
        pair.write(staged / "tls.crt", staged / "tls.key")
        # the key first, then the certificate (the server checks a pair before it loads it)
        (staged / "tls.key").replace(replica.certs / "tls.key")
        (staged / "tls.crt").replace(replica.certs / "tls.crt")


def policy_sets(shipped: Path) -> tuple[str, str, str, str]:
    """Four versions of the logging policy: the shipped one, two good changes, one bad."""
    text = (shipped / f"{POLICY}.yaml").read_text()
    good = [text, text.replace("value: elasticsearch.logging.svc.cluster.local",
                               "value: logs-v2.logging.svc.cluster.local"),
            text.replace("value: elasticsearch.logging.svc.cluster.local",
                         "value: logs-v3.logging.svc.cluster.local")]
    assert len(set(good)) == 3, "the logging policy no longer has the line the soak changes"
    return good[0], good[1], "spec: [this is: not a policy", good[2]


def revision_of(text: str, workdir: Path) -> str:
    directory = workdir / f"revision-{abs(hash(text))}"
    directory.mkdir(exist_ok=True)
    (directory / f"{POLICY}.yaml").write_text(text)
    return revision([load_policy_dir(directory)[POLICY]])


def create_pods(kube: Kube, namespace: str, stop: threading.Event, rate: float,
                result: Creations) -> None:
    """Create a pod every 1/rate seconds until `stop`; record latencies and failures."""
    interval, index = 1 / rate, 0
    next_at = time.monotonic()
    while not stop.is_set():
        body = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"soak-{index}", "labels": {"app": "soak"},
                             "annotations": {"sidecar.company.com/inject": POLICY}},
                "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}}
        started = time.monotonic()
        try:
            kube.create_pod(namespace, body)
        except ApiException as exc:
            result.failures.append(f"soak-{index}: {exc.status} {exc.reason}: {exc.body}")
        else:
            result.names.append(f"soak-{index}")
        result.latencies.append(time.monotonic() - started)
        index += 1
        next_at += interval
        stop.wait(max(0.0, next_at - time.monotonic()))


@dataclass
class Fault:
    at: float  # share of the run
    what: str
    do: Callable[[], None]


def run_faults(faults: list[Fault], seconds: float, started: float,
               done: list[str], errors: list[str]) -> None:
    for fault in faults:
        wait = started + fault.at * seconds - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        try:
            fault.do()
        except Exception as exc:  # reported as a failed fault, not a crash
            errors.append(f"{fault.what}: {exc}")
        else:
            done.append(f"{time.monotonic() - started:5.1f}s {fault.what}")


def restart(replica: ServerProcess) -> Callable[[], None]:
    def do() -> None:
        code = replica.stop()
        if code != 0:
            raise RuntimeError(f"exited {code} on SIGTERM")
        replica.start()
    return do
