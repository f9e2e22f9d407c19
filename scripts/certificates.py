"""Certificates and keys of a secured federation: TLS for the SuperLink, a key pair per SuperNode.

Made with the ``cryptography`` library (a dependency of Flower) for the process
launcher (:mod:`scripts.flower_run`, :mod:`scripts.deploy`), so a secured
deployment needs no ``openssl`` on the machine. The files are what Flower 1.41
reads: a PEM CA certificate and a server certificate and key for the
SuperLink's one port (``--ssl-ca-certfile``, ``--ssl-certfile``,
``--ssl-keyfile``; SuperNodes and the ``flwr`` CLI trust ``ca.crt``), and per
SuperNode an EC P-384 key pair in OpenSSH format (``--auth-supernode-private-key``
on the SuperNode, ``flwr supernode register <public key>`` on the SuperLink).
``docker/certs/make_certs.sh`` makes the same layout with ``openssl`` for
container deployments.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 30


@dataclass(frozen=True)
class TlsFiles:
    """The SuperLink's TLS files (and the CA every client of it trusts)."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class NodeKeys:
    """One SuperNode's authentication key pair (OpenSSH format)."""

    private: Path
    public: Path


def _write_private(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    pkcs8, plain = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, pkcs8, plain)


def _subject_names(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(["localhost", "127.0.0.1", *hosts]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def make_tls(
    folder: Path, hosts: list[str], *, common_name: str = "poisonlab federation CA", valid_days: int = VALID_DAYS
) -> TlsFiles:
    """A new CA and a SuperLink certificate it signed, valid for ``hosts`` (names or IPs) and loopback.

    Both expire after ``valid_days``; the CA's private key is not kept.
    """
    if valid_days < 1:
        raise ValueError(f"valid_days must be >= 1, got {valid_days}")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA384())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "superlink")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.SubjectAlternativeName(_subject_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    ca_path = folder / "ca.crt"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path = folder / "server.crt"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return TlsFiles(ca=ca_path, cert=cert_path, key=_write_private(folder / "server.key", _pem_key(key)))


def make_node_keys(folder: Path, node: int) -> NodeKeys:
    """SuperNode ``node``'s EC P-384 key pair, OpenSSH format (what Flower 1.41 loads and registers)."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    folder.mkdir(parents=True, exist_ok=True)
    public_path = folder / f"supernode-{node}.pub"
    public_path.write_bytes(public + b"\n")
    return NodeKeys(private=_write_private(folder / f"supernode-{node}.key", private), public=public_path)
