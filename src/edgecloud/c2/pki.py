"""NC2S public-key infrastructure: a root CA, Tactical Commanders as sub-CAs, role-bearing leaves.

NC2S (arXiv 2511.21936, credential management) gives every principal an ECDSA certificate that
carries its role and privileges. Here the root CA signs Tactical Commander certificates, which
are themselves CA certificates (path length 0): a TC issues, renews and revokes the credentials
of its GCSs and UxVs, and may grant only privileges it holds itself. The vehicle re-checks that
rule on every connection (:func:`check_chain`), so a misbehaving TC key cannot escalate.

Role and privileges live in a non-critical X.509 extension, OID :data:`NC2S_EXTENSION_OID`
(a UUID-derived OID under ``2.25``, ITU-T X.667, so no registry is needed). Its value is the
UTF-8 JSON object ``{"v": 1, "role": "gcs", "privileges": ["cmd:400", "telemetry"]}`` with
privileges sorted; see :mod:`edgecloud.c2.privileges` for the tokens.

On disk a PKI directory holds ``ca.crt``/``ca.key`` (root), ``NAME.crt`` (leaf first, then
its issuing TC when there is one) and ``NAME.key``, one CRL per issuer in ``crl/ISSUER.pem``,
and ``crl.pem``, all CRLs concatenated, which TLS contexts load for revocation checking.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgecloud.c2.privileges import (
    DEFAULT_PRIVILEGES,
    PKI_ISSUE,
    PKI_REVOKE,
    PrivilegeError,
    Role,
    holds,
    not_covered,
    parse_privileges,
)

NC2S_EXTENSION_OID = x509.ObjectIdentifier("2.25.315795579641851674759698180583994877794")
ROOT_NAME = "ca"
CRL_VALIDITY = dt.timedelta(days=365)


class PkiError(ValueError):
    """A credential operation that is not allowed or whose inputs are malformed."""


@dataclass(frozen=True)
class Identity:
    """Who a verified certificate says its holder is."""

    name: str
    role: Role
    privileges: frozenset[str]
    serial: int
    issuer: str
    issuer_serial: int | None = None  # the issuing TC's certificate; None when the root issued it

    def holds(self, privilege: str) -> bool:
        return holds(self.privileges, privilege)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def common_name(name: x509.Name) -> str:
    attributes = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attributes[0].value) if attributes else ""


def encode_extension(role: Role, privileges: frozenset[str]) -> bytes:
    return json.dumps({"v": 1, "role": str(role), "privileges": sorted(privileges)}).encode()


def identity_of(cert: x509.Certificate) -> Identity:
    """Read name, role and privileges from a certificate that has already been verified."""
    try:
        raw = cert.extensions.get_extension_for_oid(NC2S_EXTENSION_OID).value
    except x509.ExtensionNotFound as exc:
        raise PkiError(f"certificate {common_name(cert.subject)!r} has no NC2S role extension") from exc
    assert isinstance(raw, x509.UnrecognizedExtension)
    try:
        body = json.loads(raw.value)
        if body.get("v") != 1:
            raise PkiError(f"NC2S extension version {body.get('v')!r} unsupported (expected 1)")
        role = Role(body["role"])
        privileges = parse_privileges(body["privileges"])
    except (ValueError, KeyError, TypeError) as exc:
        raise PkiError(f"certificate {common_name(cert.subject)!r}: malformed NC2S extension: {exc}") from exc
    return Identity(common_name(cert.subject), role, privileges, cert.serial_number, common_name(cert.issuer))


def check_chain(leaf: x509.Certificate, issuer: x509.Certificate | None, root: x509.Certificate) -> Identity:
    """Verify that ``leaf`` descends from ``root`` (through TC ``issuer`` if given) and that every
    privilege it carries is held by its issuer; return the leaf's identity."""
    identity = identity_of(leaf)
    try:
        if issuer is None:
            leaf.verify_directly_issued_by(root)
            return identity
        issuer.verify_directly_issued_by(root)
        leaf.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise PkiError(f"certificate {identity.name!r}: chain does not verify: {exc}") from exc
    identity = replace(identity, issuer_serial=issuer.serial_number)
    parent = identity_of(issuer)
    if parent.role is not Role.TC or not parent.holds(PKI_ISSUE):
        raise PkiError(f"certificate {identity.name!r}: issuer {parent.name!r} is not a TC allowed to issue")
    excess = not_covered(identity.privileges, parent.privileges)
    if excess:
        raise PkiError(f"certificate {identity.name!r} carries {sorted(excess)} its issuer {parent.name!r} lacks")
    return identity


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_private(path: Path, data: bytes) -> None:
    # created owner-only, so the key is never readable by others, not even between write and chmod
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
        out.write(data)
    path.chmod(0o600)  # an existing file keeps its old mode through O_TRUNC


def load_certificates(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path}: expected an EC private key")
    return key


class Issuer:
    """A certificate authority — the root or a TC — that can issue, renew and revoke."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = Path(directory)
        self.name = name
        chain = load_certificates(self.directory / f"{name}.crt")
        self.cert = chain[0]
        self.chain = chain
        self.key = load_key(self.directory / f"{name}.key")
        if name == ROOT_NAME:
            self.privileges: frozenset[str] | None = None  # the root may grant anything
        else:
            identity = identity_of(self.cert)
            if identity.role is not Role.TC:
                raise PkiError(f"{name!r} has role {identity.role}; only the root CA and TCs issue credentials")
            self.privileges = identity.privileges

    @property
    def is_root(self) -> bool:
        return self.privileges is None

    def _require(self, privilege: str, action: str) -> None:
        if self.privileges is not None and not holds(self.privileges, privilege):
            raise PkiError(f"{self.name!r} cannot {action}: it lacks the {privilege!r} privilege")

    def issue(
        self,
        name: str,
        role: Role,
        privileges: frozenset[str] | None = None,
        days: int = 365,
        public_key: ec.EllipticCurvePublicKey | None = None,
        valid_from: dt.datetime | None = None,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey | None]:
        """Sign a certificate for ``name``; generate its key unless ``public_key`` is given (renewal
        or a CSR). ``valid_from`` back-dates the validity period (default: now). Writes nothing:
        :func:`issue_to_directory` does that."""
        self._require(PKI_ISSUE, "issue credentials")
        if not name or name == ROOT_NAME or "/" in name or name.startswith("."):
            raise PkiError(f"name {name!r}: must be non-empty, not {ROOT_NAME!r}, without '/' or leading '.'")
        if not 1 <= days <= 3650:
            raise PkiError(f"days {days}: must be in 1..3650")
        if role is Role.TC and not self.is_root:
            raise PkiError(f"{self.name!r} cannot issue a TC certificate: only the root CA can")
        granted = DEFAULT_PRIVILEGES[role] if privileges is None else privileges
        if self.privileges is not None:
            excess = not_covered(granted, self.privileges)
            if excess:
                raise PkiError(f"{self.name!r} cannot grant {sorted(excess)}: a TC grants only privileges it holds")
        key = None
        if public_key is None:
            key = ec.generate_private_key(ec.SECP256R1())
            public_key = key.public_key()
        now = valid_from or _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(
                x509.UnrecognizedExtension(NC2S_EXTENSION_OID, encode_extension(role, granted)),
                critical=False,
            )
        )
        if role is Role.TC:
            builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            usage = dict(digital_signature=True, key_cert_sign=True, crl_sign=True)
        else:
            builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            usage = dict(digital_signature=True, key_cert_sign=False, crl_sign=False)
        builder = builder.add_extension(
            _signing_usage(**usage),
            critical=True,
        ).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        return builder.sign(self.key, hashes.SHA256()), key

    def crl_path(self) -> Path:
        return self.directory / "crl" / f"{self.name}.pem"

    def revoked_serials(self) -> set[int]:
        path = self.crl_path()
        if not path.exists():
            return set()
        return {entry.serial_number for entry in x509.load_pem_x509_crl(path.read_bytes())}

    def sign_crl(self, serials: set[int]) -> x509.CertificateRevocationList:
        if serials:
            # An empty CRL revokes nothing, and every CA must publish one (peers check the chain).
            self._require(PKI_REVOKE, "revoke credentials")
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + CRL_VALIDITY)
        )
        for serial in sorted(serials):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
            )
        return builder.sign(self.key, hashes.SHA256())

    def revoke(self, serial: int) -> x509.CertificateRevocationList:
        """Add ``serial`` to this issuer's CRL, write it and the combined ``crl.pem``; return the CRL."""
        crl = self.sign_crl(self.revoked_serials() | {serial})
        write_crl(self.directory, self.name, crl)
        return crl


def write_crl(directory: Path, issuer: str, crl: x509.CertificateRevocationList) -> None:
    (directory / "crl").mkdir(exist_ok=True)
    (directory / "crl" / f"{issuer}.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    combined = b"".join(path.read_bytes() for path in sorted((directory / "crl").glob("*.pem")))
    (directory / "crl.pem").write_bytes(combined)


def init(directory: Path, common_name: str = "edgecloud NC2S root", days: int = 3650) -> Path:
    """Create a root CA (ECDSA P-256) and its empty CRL in ``directory``."""
    directory = Path(directory)
    if (directory / "ca.key").exists():
        raise PkiError(f"{directory}/ca.key exists: refusing to overwrite a CA")
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(
            _signing_usage(digital_signature=True, key_cert_sign=True, crl_sign=True),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    (directory / "ca.crt").write_bytes(_pem(cert))
    _write_private(directory / "ca.key", _key_pem(key))
    root = Issuer(directory, ROOT_NAME)
    write_crl(directory, ROOT_NAME, root.sign_crl(set()))
    return directory / "ca.crt"


def issue_to_directory(
    directory: Path,
    name: str,
    role: Role,
    privileges: frozenset[str] | None = None,
    days: int = 365,
    issuer: str = ROOT_NAME,
    valid_from: dt.datetime | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Issue ``name`` from ``issuer`` and write ``NAME.crt`` (with the issuer's chain) and ``NAME.key``.

    An existing ``NAME.crt`` or ``NAME.key`` is replaced only with ``overwrite``: a credential in
    use, or a CA's key, is not lost to a command run twice (as :func:`init` keeps the root's).
    """
    directory = Path(directory)
    authority = Issuer(directory, issuer)
    cert, key = authority.issue(name, role, privileges, days, valid_from=valid_from)  # checks the name
    existing = [p for p in (directory / f"{name}.crt", directory / f"{name}.key") if p.exists()]
    if existing and not overwrite:
        raise PkiError(
            f"{existing[0]} exists: refusing to overwrite {name!r}'s credential; pass --force to replace it, "
            "or use `c2 pki renew` for a fresh validity with the same key"
        )
    assert key is not None
    chain = [cert] if authority.is_root else [cert, authority.cert]
    (directory / f"{name}.crt").write_bytes(b"".join(_pem(c) for c in chain))
    _write_private(directory / f"{name}.key", _key_pem(key))
    if role is Role.TC:
        # A sub-CA publishes its (empty) CRL at once: TLS peers check the whole chain's CRLs.
        write_crl(directory, name, Issuer(directory, name).sign_crl(set()))
    return directory / f"{name}.crt"


def renew(directory: Path, name: str, days: int = 365) -> Path:
    """Re-issue ``name`` with the same key, role and privileges and a fresh validity period, by its issuer."""
    directory = Path(directory)
    chain = load_certificates(directory / f"{name}.crt")
    identity = identity_of(chain[0])
    authority = Issuer(directory, identity.issuer if len(chain) > 1 else ROOT_NAME)
    public_key = chain[0].public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    cert, _ = authority.issue(name, identity.role, identity.privileges, days, public_key=public_key)
    out = [cert] if authority.is_root else [cert, authority.cert]
    (directory / f"{name}.crt").write_bytes(b"".join(_pem(c) for c in out))
    return directory / f"{name}.crt"


def revoke(directory: Path, name: str) -> Path:
    """Revoke ``name`` by its issuer; returns the combined ``crl.pem``."""
    directory = Path(directory)
    path = directory / f"{name}.crt"
    if not path.exists():
        raise PkiError(f"no certificate {path}")
    chain = load_certificates(path)
    issuer = ROOT_NAME if len(chain) == 1 else common_name(chain[1].subject)
    Issuer(directory, issuer).revoke(chain[0].serial_number)
    return directory / "crl.pem"


def verify_crl(crl_pem: bytes, root: x509.Certificate) -> tuple[str, x509.CertificateRevocationList]:
    """Accept a CRL pushed over the protocol only if the root or a TC holding ``pki:revoke`` signed it.

    The TC's certificate travels with the CRL (PEM concatenated after it); returns the issuer name."""
    crl = x509.load_pem_x509_crl(crl_pem)
    certs = x509.load_pem_x509_certificates(crl_pem) if b"CERTIFICATE-----" in crl_pem else []
    if crl.issuer == root.subject:
        signer, name = root, ROOT_NAME
    else:
        if not certs:
            raise PkiError("CRL from a TC must carry the TC's certificate")
        signer = certs[0]
        try:
            identity = check_chain(signer, None, root)
        except PkiError as exc:
            raise PkiError(f"CRL signer: {exc}") from exc
        if identity.role is not Role.TC or not identity.holds(PKI_REVOKE) or crl.issuer != signer.subject:
            raise PkiError(f"CRL signer {identity.name!r} is not a TC allowed to revoke")
        name = identity.name
    public_key = signer.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    if not crl.is_signature_valid(public_key):
        raise PkiError("CRL signature does not verify")
    return name, crl


__all__ = [
    "NC2S_EXTENSION_OID",
    "Identity",
    "Issuer",
    "PkiError",
    "PrivilegeError",
    "check_chain",
    "identity_of",
    "init",
    "issue_to_directory",
    "renew",
    "revoke",
    "verify_crl",
]


def _signing_usage(*, digital_signature: bool, key_cert_sign: bool, crl_sign: bool) -> x509.KeyUsage:
    """Key usage for NC2S keys: signing only (TLS 1.3 signs; no key encipherment or agreement)."""
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )
