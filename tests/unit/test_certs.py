"""`certs generate` and the key pair given to `serve`: extra SANs, one-line errors naming input."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography import x509

from webhook.cli import cli

SERVICE_NAMES = ["injector", "injector.platform", "injector.platform.svc",
                 "injector.platform.svc.cluster.local", "localhost"]


def generate(out: Path, *extra: str) -> Result:
    return CliRunner().invoke(cli, ["certs", "generate", "--out", str(out), "--service",
                                    "injector", "--namespace", "platform", *extra])


def sans(cert: Path) -> tuple[list[str], list[str]]:
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ([str(n) for n in names.get_values_for_type(x509.DNSName)],
            [str(ip) for ip in names.get_values_for_type(x509.IPAddress)])


def test_dns_and_ip_add_subject_alt_names_to_the_service_ones(tmp_path: Path) -> None:
    result = generate(tmp_path, "--dns", "webhook.dev.example.com", "--dns", "*.example.org",
                      "--ip", "10.0.0.5", "--ip", "2001:DB8::1")
    assert result.exit_code == 0, result.stderr
    dns, ips = sans(tmp_path / "tls.crt")
    assert dns == [*SERVICE_NAMES, "webhook.dev.example.com", "*.example.org"]
    assert ips == ["127.0.0.1", "10.0.0.5", "2001:db8::1"]


def test_names_already_present_are_not_repeated(tmp_path: Path) -> None:
    result = generate(tmp_path, "--dns", "localhost", "--ip", "127.0.0.1")
    assert result.exit_code == 0, result.stderr
    assert sans(tmp_path / "tls.crt") == (SERVICE_NAMES, ["127.0.0.1"])


def test_the_extra_sans_verify_against_the_ca(tmp_path: Path) -> None:
    generate(tmp_path, "--ip", "10.0.0.5")
    leaf = x509.load_pem_x509_certificate((tmp_path / "tls.crt").read_bytes())
    leaf.verify_directly_issued_by(x509.load_pem_x509_certificate((tmp_path / "ca.crt")
                                                                  .read_bytes()))
    ips = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("10.0.0.5") in ips.get_values_for_type(x509.IPAddress)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(("--ip", "10.0.0.300"), "error: --ip '10.0.0.300' is not an IPv4 or IPv6 "
                     "address like 10.0.0.5 or fd00::5\n", id="bad-ip"),
        pytest.param(("--ip", "webhook.example.com"), "error: --ip 'webhook.example.com' is not "
                     "an IPv4 or IPv6 address like 10.0.0.5 or fd00::5; a host name goes in "
                     "--dns\n", id="name-as-ip"),
        pytest.param(("--ip", "10.0.0.0/24"), "error: --ip '10.0.0.0/24' is not an IPv4 or IPv6 "
                     "address like 10.0.0.5 or fd00::5\n", id="network-as-ip"),
        pytest.param(("--dns", "10.0.0.5"), "error: --dns '10.0.0.5' is an IP address: pass it "
                     "with --ip instead\n", id="ip-as-dns"),
        pytest.param(("--dns", "bad name"), "error: --dns 'bad name' is not a DNS name: ",
                     id="bad-dns"),
        pytest.param(("--dns", "bücher.example"), "error: --dns 'bücher.example' is not a DNS "
                     "name: ", id="non-ascii-dns"),
    ],
)
def test_a_bad_san_exits_2_with_one_line_naming_it(tmp_path: Path, args: tuple[str, ...],
                                                    message: str) -> None:
    out = tmp_path / "certs"
    result = generate(out, "--dns", "ok.example.com", *args)
    assert result.exit_code == 2
    assert result.stderr.startswith(message), result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert result.stdout == ""
    assert not out.exists()  # nothing half-written


def test_a_long_service_and_namespace_still_get_a_certificate(tmp_path: Path) -> None:
    service, namespace = "s" * 63, "n" * 63  # the longest names Kubernetes allows
    result = CliRunner().invoke(cli, ["certs", "generate", "--out", str(tmp_path), "--service",
                                      service, "--namespace", namespace])
    assert result.exit_code == 0, result.stderr
    dns, _ = sans(tmp_path / "tls.crt")
    assert f"{service}.{namespace}.svc.cluster.local" in dns


@pytest.mark.parametrize(("option", "value"), [("--service", "Injector"),
                                                ("--namespace", "n" * 64),
                                                ("--namespace", "platform.prod")])
def test_a_name_kubernetes_would_refuse_exits_2_naming_it(tmp_path: Path, option: str,
                                                          value: str) -> None:
    names = {"--service": "injector", "--namespace": "platform", option: value}
    result = CliRunner().invoke(cli, ["certs", "generate", "--out", str(tmp_path / "certs"),
                                      *(part for pair in names.items() for part in pair)])
    assert result.exit_code == 2
    assert result.stderr == (f"error: {option} {value!r} is not a Kubernetes name: use up to 63 "
                             "lowercase letters, digits and '-', starting and ending with a "
                             "letter or digit\n")
    assert not (tmp_path / "certs").exists()


@pytest.mark.parametrize("days", ["0", "36501", "999999999"])
def test_a_validity_x509_cannot_hold_exits_2_naming_it(tmp_path: Path, days: str) -> None:
    result = generate(tmp_path / "certs", "--days", days)
    assert result.exit_code == 2
    assert result.stderr == f"error: --days must be from 1 to 36500 (100 years), not {days}\n"


def test_help_describes_dns_and_ip() -> None:
    text = CliRunner().invoke(cli, ["certs", "generate", "--help"]).stdout
    assert "--dns NAME" in text
    assert "--ip ADDRESS" in text
    assert "webhook.url" in text


# ---------------------------------------------------------------------------------------------
# serve --tls-cert/--tls-key: the process, as a user starts it


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    """`serve` that is expected to stop at once; a server that starts fails the timeout."""
    return subprocess.run([sys.executable, "-m", "webhook", "serve", "--host", "127.0.0.1",
                           "--port", "1", *args],
                          capture_output=True, text=True, check=False, timeout=30)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two unrelated key pairs from `certs generate`."""
    first, second = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    for out in (first, second):
        assert generate(out).exit_code == 0
    return first, second


def assert_one_error_line(done: subprocess.CompletedProcess[str], *names: Path) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("error: ")
    for name in names:
        assert str(name) in done.stderr


def test_a_missing_certificate_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.crt"
    done = serve("--tls-cert", str(missing), "--tls-key", str(missing))
    assert_one_error_line(done, missing)
    assert "No such file or directory" in done.stderr


def test_a_missing_key_file_is_named(pairs: tuple[Path, Path], tmp_path: Path) -> None:
    missing = tmp_path / "nope.key"
    done = serve("--tls-cert", str(pairs[0] / "tls.crt"), "--tls-key", str(missing))
    assert_one_error_line(done, missing)
    assert done.stderr.startswith(
        f"error: cannot load the key pair {pairs[0] / 'tls.crt'}, {missing}: ")


def test_a_key_that_does_not_match_the_certificate_names_both(pairs: tuple[Path, Path]) -> None:
    cert, key = pairs[0] / "tls.crt", pairs[1] / "tls.key"
    done = serve("--tls-cert", str(cert), "--tls-key", str(key))
    assert_one_error_line(done, cert, key)
    assert "key values mismatch" in done.stderr


@pytest.mark.parametrize("given", ["--tls-cert", "--tls-key"])
def test_a_lone_cert_or_key_is_refused_not_replaced_by_dev_certificates(
    pairs: tuple[Path, Path], given: str,
) -> None:
    path = pairs[0] / ("tls.crt" if given == "--tls-cert" else "tls.key")
    done = serve(given, str(path))
    assert_one_error_line(done, path)
    other = "--tls-key" if given == "--tls-cert" else "--tls-cert"
    assert done.stderr == (f"error: {given} {path} is set but {other} is not: pass both, or "
                           "neither to serve with self-signed development certificates\n")
