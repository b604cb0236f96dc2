"""TLS contexts for NC2S links: TLS 1.3 only, client certificates required, P-256 ECDHE, CRLs checked.

Every NC2S link is mutual TLS (NC2S, arXiv 2511.21936, "secure communication"). Both ends
trust only the NC2S root CA of their PKI directory, check the CRL of every CA in the chain
(``VERIFY_CRL_CHECK_CHAIN``: the root's and the issuing TC's), and offer only the P-256 group
for the ephemeral key exchange. A client also checks the server's name, so a GCS knows it
reached the vehicle it meant to.
"""

from __future__ import annotations

import ssl
from pathlib import Path


def _context(purpose: int, directory: Path, name: str) -> ssl.SSLContext:
    directory = Path(directory)
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(directory / f"{name}.crt", directory / f"{name}.key")
    context.load_verify_locations(cafile=directory / "ca.crt")
    context.load_verify_locations(cafile=directory / "crl.pem")
    context.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN
    # TLS 1.3 key exchange restricted to ECDHE over P-256 (set_ecdh_curve sets the group list).
    context.set_ecdh_curve("prime256v1")
    return context


def server_context(directory: Path, name: str) -> ssl.SSLContext:
    return _context(ssl.PROTOCOL_TLS_SERVER, directory, name)


def client_context(directory: Path, name: str) -> ssl.SSLContext:
    context = _context(ssl.PROTOCOL_TLS_CLIENT, directory, name)
    context.check_hostname = True
    return context


def add_crl(context: ssl.SSLContext, crl_path: Path) -> None:
    """Load a CRL (PEM file, possibly several) into a live context; later handshakes see it."""
    context.load_verify_locations(cafile=crl_path)
