"""A throwaway certificate authority for the TLS tests (the `cryptography` package).

`make_material(folder)` writes: the tests' CA, a server certificate for `localhost` signed by it,
the same but expired, a client certificate, and a second CA that signed nothing the node has.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class TlsMaterial:
    ca: Path  # the CA the private nodes trust and present certificates of
    other_ca: Path  # a CA unrelated to any node: the "wrong CA"
    server: Pair  # CN/SAN localhost, valid now
    expired: Pair  # CN/SAN localhost, expired yesterday
    client: Pair  # CN bus-client, signed by `ca`
    client_cn: str = "bus-client"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


_CA_USAGE = x509.KeyUsage(
    digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
    key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
    decipher_only=False,
)  # fmt: skip


def _ca(cn: str) -> tuple[Key, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=2))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _issue(
    ca: tuple[Key, x509.Certificate],
    cn: str,
    *,
    dns: list[str],
    client: bool = False,
    expired: bool = False,
) -> tuple[Key, x509.Certificate]:
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    start, end = (now - dt.timedelta(days=10), now - dt.timedelta(days=1)) if expired else (
        now - dt.timedelta(days=1), now + dt.timedelta(days=30))  # fmt: skip
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if dns:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False
        )
    return key, builder.sign(ca_key, hashes.SHA256())


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_pair(folder: Path, stem: str, pair: tuple[Key, x509.Certificate]) -> Pair:
    key, cert = pair
    key_path = folder / f"{stem}.key"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Pair(_write_cert(folder / f"{stem}.pem", cert), key_path)


def make_material(folder: Path) -> TlsMaterial:
    """Write a CA, server, expired-server and client certificates into *folder*."""
    ca = _ca("bus tests CA")
    other = _ca("some other CA")
    return TlsMaterial(
        ca=_write_cert(folder / "ca.pem", ca[1]),
        other_ca=_write_cert(folder / "other-ca.pem", other[1]),
        server=_write_pair(folder, "server", _issue(ca, "localhost", dns=["localhost"])),
        expired=_write_pair(
            folder, "expired", _issue(ca, "localhost", dns=["localhost"], expired=True)
        ),
        client=_write_pair(folder, "client", _issue(ca, "bus-client", dns=[], client=True)),
    )
