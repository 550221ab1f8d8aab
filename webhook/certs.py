"""Certificates: the only module that uses `cryptography`.

Makes a CA and leaf certificates (serving, client) for `certs generate`, the dev defaults of
`serve`, and the end-to-end harness; reads a certificate's expiry for the metric.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from webhook.errors import CertificateError
from webhook.policy import DNS1123_LABEL

DEFAULT_DAYS = 365


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A PEM certificate and its PEM private key."""

    cert_pem: bytes
    key_pem: bytes

    def write(self, cert_path: Path, key_path: Path) -> None:
        """Write both files; the key is readable by its owner only."""
        cert_path.write_bytes(self.cert_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(self.key_pem)


def _name(common_name: str, organizations: Sequence[str] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)


def new_ca(common_name: str = "sidecar-injector-ca", days: int = DEFAULT_DAYS) -> KeyPair:
    """A self-signed ECDSA P-256 CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


def issue(
    ca: KeyPair,
    common_name: str,
    *,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    organizations: Sequence[str] = (),
    client: bool = False,
    days: int = DEFAULT_DAYS,
) -> KeyPair:
    """A leaf signed by `ca`: a serving certificate, or a client one when `client`."""
    try:
        ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
        ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    except ValueError as exc:
        raise CertificateError(f"cannot read the CA: {exc}") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise CertificateError("the CA key must be an ECDSA key made by `certs generate`")
    key = ec.generate_private_key(ec.SECP256R1())
    start = _now()
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, organizations))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


def service_dns_names(service: str, namespace: str) -> list[str]:
    """The names a Kubernetes Service is reached by, plus `localhost`."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
        "localhost",
    ]


#: The longest validity `certs generate` makes (X.509 dates end in 9999).
MAX_DAYS = 36_500
#: The longest commonName X.509 allows (RFC 5280's ub-common-name).
MAX_COMMON_NAME = 64


def _check_kube_name(option: str, name: str) -> str:
    """`name` as a Service or namespace name (an RFC 1123 label); CertificateError if not."""
    if len(name) > 63 or not re.match(DNS1123_LABEL, name):
        raise CertificateError(
            f"{option} {name!r} is not a Kubernetes name: use up to 63 lowercase letters, "
            "digits and '-', starting and ending with a letter or digit"
        )
    return name


def _common_name(text: str) -> str:
    """`text`, cut to fit a commonName: clients check the subjectAltNames, never this label, so
    a long Service and namespace (up to 63 characters each) must not stop a certificate."""
    return text[:MAX_COMMON_NAME]


_DNS_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def _check_dns_name(name: str) -> str:
    """`name` as a DNS subjectAltName (a leading `*.` wildcard allowed); CertificateError if not."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        raise CertificateError(f"--dns {name!r} is an IP address: pass it with --ip instead")
    labels = name.removeprefix("*.").split(".")
    if len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise CertificateError(
            f"--dns {name!r} is not a DNS name: use letters, digits, '-' and '.' "
            "(a leading '*.' for a wildcard; punycode for non-ASCII), e.g. webhook.example.com"
        )
    return name


def _check_ip_address(text: str) -> str:
    """`text` as an IP subjectAltName, normalised; CertificateError naming it if it is not one."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        looks_like_a_name = ":" not in text and any(c.isalpha() for c in text)
        hint = "; a host name goes in --dns" if looks_like_a_name else ""
        raise CertificateError(
            f"--ip {text!r} is not an IPv4 or IPv6 address like 10.0.0.5 or fd00::5{hint}"
        ) from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise CertificateError(
            f"--ip {text!r}: a certificate cannot name a zone; drop '%{address.scope_id}'"
        )
    return str(address)


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def generate(
    out: Path,
    *,
    service: str,
    namespace: str,
    days: int = DEFAULT_DAYS,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
) -> str:
    """Write `ca.crt`, `ca.key`, `tls.crt`, `tls.key` into `out`; return the base64 caBundle.

    The serving certificate names the Service (see `service_dns_names`) and 127.0.0.1, then the
    extra `dns_names` and `ip_addresses` (for a webhook reached by URL, outside the cluster).
    """
    if not 1 <= days <= MAX_DAYS:
        raise CertificateError(f"--days must be from 1 to {MAX_DAYS} (100 years), not {days}")
    _check_kube_name("--service", service)
    _check_kube_name("--namespace", namespace)
    dns = _unique([*service_dns_names(service, namespace), *map(_check_dns_name, dns_names)])
    ips = _unique(["127.0.0.1", *map(_check_ip_address, ip_addresses)])
    try:
        out.mkdir(parents=True, exist_ok=True)
        ca = new_ca(_common_name(f"{service}.{namespace} CA"), days=days)
        serving = issue(ca, _common_name(f"{service}.{namespace}.svc"), dns_names=dns,
                        ip_addresses=ips, days=days)
        ca.write(out / "ca.crt", out / "ca.key")
        serving.write(out / "tls.crt", out / "tls.key")
    except OSError as exc:
        raise CertificateError(f"{out}: cannot write certificates: {exc.strerror}") from None
    return base64.b64encode(ca.cert_pem).decode()


def new_signing_key() -> KeyPair:
    """An ECDSA P-256 key pair for signing tokens: `cert_pem` holds the public key (PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return KeyPair(public, _pem_key(key))


def expiry(cert_path: Path) -> datetime.datetime:
    """When the first certificate in `cert_path` expires."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CertificateError(f"{cert_path}: cannot read certificate: {exc}") from None
    return cert.not_valid_after_utc
