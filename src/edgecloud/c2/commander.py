"""What a Tactical Commander does over NC2S: approve handovers, revoke and renew credentials.

NC2S (arXiv 2511.21936, "credential management" and "handover") makes the TC the authority of
its unit: it approves control handovers (:func:`approve_handover`, resent until the vehicle
reports done or rejected), pushes revocations to vehicles (:func:`push_crl`), and renews the
certificates of the GCSs and UxVs it serves (:class:`TcService` answers ``renew-cert``
requests carrying a CSR; :func:`request_renewal` is the requesting side). Renewal keeps the
requester's verified name, role and privileges — a requester cannot ask for more — and the TC
can sign only within its own privileges (:meth:`edgecloud.c2.pki.Issuer.issue`).

Messages (CONTROL frames, JSON)::

    GCS/UxV→TC  renew-cert{csr, days}    PEM CSR for a fresh key, proving possession
    TC→GCS/UxV  cert{pem}                the new certificate followed by the TC's
    TC→GCS/UxV  cert-refused{reason}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgecloud.c2 import tls
from edgecloud.c2.control import HandoverRequest
from edgecloud.c2.gateway import Address
from edgecloud.c2.link import Link, LinkError, accept, connect, log
from edgecloud.c2.pki import Issuer, PkiError
from edgecloud.c2.privileges import Role
from edgecloud.c2.session import Credentials, FrameType


@dataclass(frozen=True)
class HandoverResult:
    state: str
    reason: str
    duration_s: float
    controller: str | None


async def _tc_link(pki_dir: Path, name: str, address: Address, uxv_name: str | None) -> Link:
    """A TC's outgoing link to a vehicle gateway."""
    context = tls.client_context(pki_dir, name)
    context.check_hostname = uxv_name is not None
    return await connect(
        address[0],
        address[1],
        Credentials.load(pki_dir, name),
        context,
        server_hostname=uxv_name,
        label=f"tc {name}",
    )


async def approve_handover(
    pki_dir: Path,
    name: str,
    address: Address,
    source: str | None,
    target: str,
    *,
    uxv_name: str | None = None,
    retry: float = 0.5,
    timeout: float = 60.0,
) -> HandoverResult:
    """As TC ``name``, approve handing the vehicle at ``address`` from ``source`` to ``target``;
    resend until the vehicle reports the handover done or rejected. The duration counts from
    the first approval sent (after the TC's link is up) to the vehicle's "done"."""
    link = await _tc_link(Path(pki_dir), name, address, uxv_name)
    request = HandoverRequest(os.urandom(8).hex(), link.peer.name, source, target, retry=retry)
    controller: list[str | None] = [None]

    def on_message(_link: Link, kind: int, payload: bytes) -> None:
        if kind == FrameType.CONTROL:
            message = json.loads(payload)
            if message.get("t") == "status" and message.get("h") == request.h:
                controller[0] = message.get("controller")
            request.on_message(message, time.monotonic())

    reader = asyncio.create_task(link.run(on_message))
    started = time.monotonic()
    try:
        while request.state == "pending" and time.monotonic() < started + timeout and not link.closed:
            for message in request.on_timer(time.monotonic()):
                link.send_control(message)
            await asyncio.sleep(0.005)
    finally:
        await link.close()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    state = request.state if request.state != "pending" else "timeout"
    finished = request.finished_at if request.finished_at is not None else time.monotonic()
    return HandoverResult(state, request.reason, finished - started, controller[0])


async def push_crl(pki_dir: Path, name: str, crl_pem: bytes, addresses: list[Address]) -> list[str]:
    """As TC ``name``, push a CRL (with its certificate) to each vehicle; one result line each."""
    results = []
    for address in addresses:
        try:
            link = await _tc_link(Path(pki_dir), name, address, None)
        except LinkError as exc:
            results.append(f"{address[0]}:{address[1]}: {exc}")
            continue
        acked = asyncio.Event()

        def on_message(_link: Link, kind: int, payload: bytes, acked=acked) -> None:
            if kind == FrameType.CONTROL and json.loads(payload).get("t") == "crl-ack":
                acked.set()

        reader = asyncio.create_task(link.run(on_message))
        link.send_control({"t": "crl", "pem": crl_pem.decode()})
        try:
            await asyncio.wait_for(acked.wait(), 10.0)
            results.append(f"{link.peer.name}: CRL installed")
        except TimeoutError:
            results.append(f"{link.peer.name}: no acknowledgement (see the vehicle's log for the reason)")
        await link.close()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    return results


class TcService:
    """A TC listening for NC2S links from the GCSs and UxVs it serves, renewing their certificates."""

    def __init__(self, pki_dir: Path, name: str, listen: Address) -> None:
        self.pki_dir = Path(pki_dir)
        self.name = name
        self.listen = listen
        self.issuer = Issuer(self.pki_dir, name)
        self.credentials = Credentials.load(self.pki_dir, name)
        self.context = tls.server_context(self.pki_dir, name)
        self.renewed: list[str] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def address(self) -> Address:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[:2]

    async def start(self) -> TcService:
        self._server = await asyncio.start_server(self._on_connection, *self.listen)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        link = await accept(reader, writer, self.credentials, self.context, label=f"tc {self.name}")
        if link is not None:
            await link.run(self._on_message)

    def _on_message(self, link: Link, kind: int, payload: bytes) -> None:
        if kind != FrameType.CONTROL:
            return
        message = json.loads(payload)
        if not isinstance(message, dict) or message.get("t") != "renew-cert":
            return
        try:
            pem = self.renew(link, str(message.get("csr", "")).encode(), int(message.get("days", 365)))
        except (PkiError, ValueError) as exc:
            log.warning("tc %s: refused renewal for %s: %s", self.name, link.peer.name, exc)
            link.send_control({"t": "cert-refused", "reason": str(exc)})
            return
        link.send_control({"t": "cert", "pem": pem.decode()})

    def renew(self, link: Link, csr_pem: bytes, days: int) -> bytes:
        """Sign a new certificate for the link's verified peer, for the key in its CSR."""
        peer = link.peer
        if peer.role is Role.TC:
            raise PkiError(f"{peer.name}: TC certificates are renewed by the root CA, not by a TC")
        csr = x509.load_pem_x509_csr(csr_pem)
        if not csr.is_signature_valid:
            raise PkiError(f"{peer.name}: CSR signature does not verify")
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != "secp256r1":
            raise PkiError(f"{peer.name}: CSR key must be ECDSA P-256")
        cert, _ = self.issuer.issue(peer.name, peer.role, peer.privileges, days, public_key=public_key)
        self.renewed.append(peer.name)
        log.info("tc %s: renewed %s (%s) for %d days", self.name, peer.name, peer.role, days)
        return cert.public_bytes(serialization.Encoding.PEM) + self.issuer.cert.public_bytes(serialization.Encoding.PEM)


async def request_renewal(
    pki_dir: Path, name: str, address: Address, *, tc_name: str | None = None, days: int = 365
) -> Path:
    """Ask the TC at ``address`` to renew ``name``'s certificate for a fresh key; on success write the
    new ``NAME.crt`` and ``NAME.key`` (the old ones are replaced only then)."""
    directory = Path(pki_dir)
    context = tls.client_context(directory, name)
    context.check_hostname = tc_name is not None
    link = await connect(
        *address, Credentials.load(directory, name), context, server_hostname=tc_name, label=f"{name} renewal"
    )
    if link.peer.role is not Role.TC:
        await link.close()
        raise LinkError(f"{link.peer.name} has role {link.peer.role}, not tc")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    answer: asyncio.Future[dict] = asyncio.get_running_loop().create_future()

    def on_message(_link: Link, kind: int, payload: bytes) -> None:
        message = json.loads(payload) if kind == FrameType.CONTROL else None
        if isinstance(message, dict) and message.get("t") in ("cert", "cert-refused") and not answer.done():
            answer.set_result(message)

    reader = asyncio.create_task(link.run(on_message))
    link.send_control({"t": "renew-cert", "csr": csr.public_bytes(serialization.Encoding.PEM).decode(), "days": days})
    try:
        message = await asyncio.wait_for(answer, 30)
    finally:
        await link.close()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    if message["t"] == "cert-refused":
        raise PkiError(f"renewal refused by {link.peer.name}: {message.get('reason')}")
    pem = str(message["pem"]).encode()
    chain = x509.load_pem_x509_certificates(pem)
    if chain[0].public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise PkiError("renewed certificate is not for the key we sent")
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.crt"
    key_path.with_suffix(".key.new").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.with_suffix(".key.new").chmod(0o600)
    cert_path.with_suffix(".crt.new").write_bytes(pem)
    os.replace(key_path.with_suffix(".key.new"), key_path)
    os.replace(cert_path.with_suffix(".crt.new"), cert_path)
    return cert_path
