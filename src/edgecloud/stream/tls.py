"""TLS material for the stream server: a self-signed certificate when none is given."""

from __future__ import annotations

import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def self_signed_certificate(
    hostname: str = "localhost", *, fixed_size: bool = False
) -> tuple[x509.Certificate, PrivateKey]:
    """A fresh certificate valid for ``hostname``, localhost and 127.0.0.1, for 30 days.

    P-256 by default (what every client accepts). ``fixed_size`` makes an Ed25519 one with
    serial number 1 instead: its signatures, and those of every handshake it signs, have
    one length, so handshakes have the same sizes run after run (the virtual clock needs
    that to repeat a run; a P-256 signature is 70 to 72 bytes at random).
    """
    key: PrivateKey = ed25519.Ed25519PrivateKey.generate() if fixed_size else ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    if hostname != "localhost":
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(hostname)))
        except ValueError:
            alt_names.append(x509.DNSName(hostname))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1 if fixed_size else x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .sign(key, None if fixed_size else hashes.SHA256())
    )
    return cert, key


def pem_files(cert: x509.Certificate, key: PrivateKey) -> tuple[bytes, bytes]:
    """The certificate and key as PEM bytes (for clients that read them from files)."""
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
