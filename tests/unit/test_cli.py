"""The console script as a user meets it: exit codes, one-line errors, YAML on stdout only."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result
from cryptography import x509

from tests.conftest import ROOT, WritePolicies
from tests.unit.test_engine import LOGGING
from tests.unit.test_podsecurity import PRIVILEGED_POLICIES
from webhook.cli import cli

STATUS = "sidecar.company.com/status"

POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
  annotations: {sidecar.company.com/inject: logging}
spec:
  containers: [{name: web, image: "nginx:1.27"}]
"""


def invoke(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=stdin)


@pytest.fixture
def policy_dir(write_policies: WritePolicies) -> Path:
    return write_policies(logging=LOGGING)


def test_inject_reads_stdin_and_writes_only_yaml(policy_dir: Path) -> None:
    result = invoke("inject", "-f", "-", "--policies", str(policy_dir), stdin=POD)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    (pod,) = yaml.safe_load_all(result.stdout)
    assert json.loads(pod["metadata"]["annotations"][STATUS])["policies"] == ["logging"]


def test_workloads_lists_and_multiple_documents_are_injected(policy_dir: Path,
                                                             tmp_path: Path) -> None:
    template = yaml.safe_load(POD)
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                  "spec": {"selector": {}, "template": template}}
    cronjob = {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"},
               "spec": {"schedule": "* * * * *",
                        "jobTemplate": {"spec": {"template": template}}}}
    items = {"apiVersion": "v1", "kind": "List", "items": [deployment, template]}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}
    source = tmp_path / "all.yaml"
    source.write_text(yaml.safe_dump_all([deployment, cronjob, items, service]))
    result = invoke("inject", "-f", str(source), "--policies", str(policy_dir))
    assert result.exit_code == 0, result.stderr
    docs = list(yaml.safe_load_all(result.stdout))
    pods = [docs[0]["spec"]["template"], docs[1]["spec"]["jobTemplate"]["spec"]["template"],
            docs[2]["items"][0]["spec"]["template"], docs[2]["items"][1]]
    assert all(STATUS in p["metadata"]["annotations"] for p in pods)
    assert docs[3] == service


def test_remove_gives_back_the_input(policy_dir: Path) -> None:
    injected = invoke("inject", "-f", "-", "--policies", str(policy_dir), stdin=POD).stdout
    result = invoke("inject", "--remove", "-f", "-", "--policies", str(policy_dir),
                    stdin=injected)
    assert result.exit_code == 0
    assert yaml.safe_load(result.stdout) == yaml.safe_load(POD)


def test_a_clash_exits_1_names_the_object_and_keeps_it(policy_dir: Path) -> None:
    clashing = POD.replace("name: web, image", "name: logging-agent, image")
    result = invoke("inject", "-f", "-", "--policies", str(policy_dir), stdin=clashing)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: <stdin>:1: Pod/web: denied: pod shop/web: ")
    assert len(result.stderr.splitlines()) == 1
    assert yaml.safe_load(result.stdout) == yaml.safe_load(clashing)


def test_an_unknown_policy_warns_and_strict_denies(policy_dir: Path) -> None:
    unknown = POD.replace("inject: logging", "inject: tracing")
    lenient = invoke("inject", "-f", "-", "--policies", str(policy_dir), stdin=unknown)
    assert lenient.exit_code == 0
    assert "unknown injection policy 'tracing'" in lenient.stderr
    strict = invoke("inject", "--strict", "-f", "-", "--policies", str(policy_dir), stdin=unknown)
    assert strict.exit_code == 1


def test_namespace_policies_apply_to_pods_that_name_none(policy_dir: Path) -> None:
    plain = POD.replace("  annotations: {sidecar.company.com/inject: logging}\n", "")
    result = invoke("inject", "-f", "-", "--policies", str(policy_dir),
                    "--namespace-policies", "logging", stdin=plain)
    status = json.loads(yaml.safe_load(result.stdout)["metadata"]["annotations"][STATUS])
    assert status["policies"] == ["logging"]


def test_kube_version_selects_classic_sidecars(policy_dir: Path) -> None:
    result = invoke("inject", "-f", "-", "--policies", str(policy_dir), "--kube-version", "1.28",
                    stdin=POD)
    names = [c["name"] for c in yaml.safe_load(result.stdout)["spec"]["containers"]]
    assert names == ["web", "logging-agent"]


@pytest.mark.parametrize(
    ("stdin", "args", "code", "message"),
    [
        pytest.param("a: [b\n", (), 2, "error: <stdin>:2: invalid YAML: ", id="invalid-yaml"),
        pytest.param("- 1\n- 2\n", (), 2, "error: <stdin>:1: document 1 is a list, not a "
                     "Kubernetes object", id="not-an-object"),
        pytest.param(POD, ("--policies", "/nonexistent"), 1,
                     "error: /nonexistent: policies directory does not exist", id="no-policies"),
        pytest.param(POD, ("--kube-version", "new"), 2, "error: invalid option: ",
                     id="bad-kube-version"),
    ],
)
def test_bad_input_is_one_readable_line(policy_dir: Path, stdin: str, args: tuple[str, ...],
                                        code: int, message: str) -> None:
    result = invoke("inject", "-f", "-", "--policies", str(policy_dir), *args, stdin=stdin)
    assert result.exit_code == code
    assert result.stderr.startswith(message), result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert result.stdout == ""


def test_a_missing_file_exits_2() -> None:
    result = invoke("inject", "-f", "/no/such.yaml")
    assert (result.exit_code, result.stderr) == (2, "error: /no/such.yaml: no such file\n")


def test_unknown_kinds_pass_through_unchanged(policy_dir: Path) -> None:
    text = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\nspec: {x: [1, 2]}\n"
    result = invoke("inject", "-f", "-", "--policies", str(policy_dir), stdin=text)
    assert yaml.safe_load(result.stdout) == yaml.safe_load(text)


def test_policies_check_reports_file_line_and_exits_1(write_policies: WritePolicies) -> None:
    directory = write_policies(bad=LOGGING.replace("cpu: 100m", "cpu: lots"))
    result = invoke("policies", "check", str(directory))
    assert result.exit_code == 1
    assert result.stderr == (f"{directory}/bad.yaml:17: spec.resources.limits.cpu: "
                             "'lots' is not a quantity\n")


def test_policies_check_says_ok(policy_dir: Path) -> None:
    result = invoke("policies", "check", str(policy_dir))
    assert (result.exit_code, result.stdout) == (0, f"{policy_dir}: 1 policies OK (logging)\n")


def test_policies_schema_prints_the_published_schema() -> None:
    schema = json.loads(invoke("policies", "schema").stdout)
    assert schema["title"] == "InjectionPolicy"


def test_certs_generate_writes_a_ca_and_a_serving_pair(tmp_path: Path) -> None:
    result = invoke("certs", "generate", "--out", str(tmp_path), "--service", "injector",
                    "--namespace", "platform", "--days", "30")
    assert result.exit_code == 0, result.stderr
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    assert base64.b64decode(result.stdout.strip()) == (tmp_path / "ca.crt").read_bytes()
    leaf = x509.load_pem_x509_certificate((tmp_path / "tls.crt").read_bytes())
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(map(str, sans.get_values_for_type(x509.DNSName))) == sorted([
        "injector", "injector.platform", "injector.platform.svc",
        "injector.platform.svc.cluster.local", "localhost"])
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    leaf.verify_directly_issued_by(ca)
    assert (tmp_path / "tls.key").stat().st_mode & 0o777 == 0o600


def test_the_console_script_never_prints_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\xff\xfe not utf-8")
    done = subprocess.run([sys.executable, "-m", "webhook", "inject", "-f", str(bad)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(f"error: {bad}: cannot read: ")


def _unreadable_entries(directory: Path) -> list[str]:
    """A directory named like a policy file and a dangling symlink: neither can be read (as root,
    chmod 000 would not do)."""
    (directory / "bad.yaml").mkdir()
    (directory / "gone.yml").symlink_to("missing.yaml")
    return [f"{directory}/bad.yaml: is a directory, not a policy file; remove or rename it",
            f"{directory}/gone.yml: cannot read: a broken symbolic link to missing.yaml; fix or "
            "remove it"]


def test_policies_check_names_every_unreadable_policy_file(policy_dir: Path) -> None:
    expected = _unreadable_entries(policy_dir)
    result = invoke("policies", "check", str(policy_dir))
    assert result.exit_code == 1
    assert result.stderr.splitlines() == expected


def test_inject_names_an_unreadable_policy_file(policy_dir: Path) -> None:
    expected = _unreadable_entries(policy_dir)
    result = invoke("inject", "-f", "-", "--policies", str(policy_dir), stdin=POD)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [f"error: {line}" for line in expected]


def test_a_policy_file_without_permission_is_named(policy_dir: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    denied = policy_dir / "logging.yaml"
    real_read_text = Path.read_text

    def read_text(self: Path, *args: object, **kwargs: object) -> str:
        if self == denied:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", read_text)
    result = invoke("policies", "check", str(policy_dir))
    assert (result.exit_code, result.stderr) == (
        1, f"{denied}: cannot read: Permission denied; fix or remove it\n")


def test_serve_names_an_unreadable_policy_file_and_exits_1(policy_dir: Path) -> None:
    expected = _unreadable_entries(policy_dir)
    done = subprocess.run([sys.executable, "-m", "webhook", "serve", "--policies",
                           str(policy_dir), "--host", "127.0.0.1", "--port", "1"],
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"error: {line}" for line in expected]


def test_serve_names_a_missing_policies_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    done = subprocess.run([sys.executable, "-m", "webhook", "serve", "--policies", str(missing),
                           "--host", "127.0.0.1", "--port", "1"],
                          capture_output=True, text=True, check=False, timeout=60)
    assert (done.returncode, done.stderr) == (
        1, f"error: {missing}: policies directory does not exist (pass --policies DIR)\n")


@pytest.mark.parametrize("level", ["baseline", "restricted"])
def test_policies_check_finds_the_shipped_policies_hardened_for_pod_security(
        level: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    result = invoke("policies", "check", "policies", "--pod-security", level)
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout.startswith("policies: 11 policies OK (adapter, ")


PSA_BREAKS = {
    "baseline": [
        ("node-exporter", 'hostPathVolumes: hostPath volumes (volume "proc")'),
        ("node-exporter", 'hostPathVolumes: hostPath volumes (volume "sys")'),
        ("security-scanner", 'privileged: container "security-scanner" must not set '
                             "securityContext.privileged=true"),
    ],
    "restricted": [
        ("node-exporter", 'restrictedVolumes: volume "proc" uses restricted volume type '
                          '"hostPath"'),
        ("node-exporter", 'restrictedVolumes: volume "sys" uses restricted volume type '
                          '"hostPath"'),
        ("security-scanner", 'privileged: container "security-scanner" must not set '
                             "securityContext.privileged=true"),
        ("security-scanner", 'allowPrivilegeEscalation: container "security-scanner" must set '
                             "securityContext.allowPrivilegeEscalation=false"),
        ("security-scanner", 'capabilities_restricted: container "security-scanner" must set '
                             'securityContext.capabilities.drop=["ALL"]'),
        ("security-scanner", 'runAsNonRoot: pod or container "security-scanner" must set '
                             "securityContext.runAsNonRoot=true"),
        ("security-scanner", 'seccompProfile_restricted: pod or container "security-scanner" '
                             'must set securityContext.seccompProfile.type to "RuntimeDefault" '
                             'or "Localhost"'),
    ],
}


@pytest.mark.parametrize("level", sorted(PSA_BREAKS))
def test_policies_check_names_file_line_and_check_of_a_policy_that_breaks_pod_security(
        level: str, write_policies: WritePolicies) -> None:
    hardened = (ROOT / "policies" / "logging.yaml").read_text(encoding="utf-8")
    directory = write_policies(logging=hardened, **PRIVILEGED_POLICIES)
    result = invoke("policies", "check", str(directory), "--pod-security", level)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"{directory}/{name}.yaml:4: policy {name} breaks Pod Security level {level}: {message}"
        for name, message in PSA_BREAKS[level]]
    assert result.stdout == ""


def test_policies_check_without_pod_security_ignores_it(write_policies: WritePolicies) -> None:
    result = invoke("policies", "check", str(write_policies(**PRIVILEGED_POLICIES)))
    assert result.exit_code == 0, result.stderr


def test_policies_check_help_names_pod_security() -> None:
    assert "--pod-security [baseline|restricted]" in invoke("policies", "check", "-h").stdout


def test_inject_takes_the_namespace_labels_for_restricted_policies(tmp_path: Path) -> None:
    from tests.unit.test_engine_cluster_rules import VAULT  # noqa: PLC0415

    (tmp_path / "payments-secrets.yaml").write_text(VAULT)
    pod = POD.replace("sidecar.company.com/inject: logging",
                      "sidecar.company.com/inject: payments-secrets")
    allowed = invoke("inject", "-f", "-", "--policies", str(tmp_path),
                     "--namespace-labels", "team=payments", stdin=pod)
    assert allowed.exit_code == 0
    assert "payments-secrets" in yaml.safe_load(allowed.stdout)["spec"]["initContainers"][0][
        "name"]
    unknown = invoke("inject", "-f", "-", "--policies", str(tmp_path), stdin=pod)
    assert unknown.exit_code == 0
    assert "not known" in unknown.stderr
    bad = invoke("inject", "-f", "-", "--policies", str(tmp_path),
                 "--namespace-labels", "team", stdin=pod)
    assert bad.exit_code == 2
    assert bad.stderr.strip() == "error: --namespace-labels: 'team' is not KEY=VALUE"
