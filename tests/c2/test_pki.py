"""PKI: the role extension, the TC hierarchy, the CLI, and revocation carried by the protocol."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from edgecloud.c2 import pki
from edgecloud.c2.commander import TcService, push_crl, request_renewal
from edgecloud.c2.link import LinkError
from edgecloud.c2.privileges import PrivilegeError, Role, parse_privileges
from edgecloud.cli import main

from .c2_harness import logged, scene
from .conftest import wait_for


def test_role_and_privileges_round_trip_through_the_extension(pki_dir):
    cert = pki.load_certificates(pki_dir / "gcs-limited.crt")[0]
    raw = cert.extensions.get_extension_for_oid(pki.NC2S_EXTENSION_OID)
    assert not raw.critical
    assert json.loads(raw.value.value) == {
        "v": 1,
        "role": "gcs",
        "privileges": ["cmd:400", "msg:0", "telemetry"],
    }
    identity = pki.identity_of(cert)
    assert identity.holds("cmd:400") and not identity.holds("cmd:183")


def test_privilege_names_resolve_to_mavlink_ids_and_typos_are_named():
    assert parse_privileges(["cmd:MAV_CMD_DO_SET_SERVO,msg:SET_MODE", "cmd:*"]) == {
        "cmd:183",
        "msg:11",
        "cmd:*",
    }
    with pytest.raises(PrivilegeError, match="cmd:NO_SUCH: unknown MAVLink command"):
        parse_privileges(["cmd:NO_SUCH"])
    with pytest.raises(PrivilegeError, match=r"id must be in 0\.\.16777215"):
        parse_privileges(["msg:99999999"])


def test_a_tc_grants_only_what_it_holds_and_never_creates_tcs(own_pki_dir):
    small = parse_privileges(["pki:issue", "telemetry", "cmd:400"])
    pki.issue_to_directory(own_pki_dir, "tc-small", Role.TC, small)
    issuer = pki.Issuer(own_pki_dir, "tc-small")
    with pytest.raises(pki.PkiError, match=r"'tc-small' cannot grant \['cmd:\*'\]"):
        issuer.issue("gcs-x", Role.GCS, parse_privileges(["cmd:*"]))
    with pytest.raises(pki.PkiError, match="only the root CA can"):
        issuer.issue("tc-x", Role.TC, small)
    cert, _ = issuer.issue("gcs-x", Role.GCS, parse_privileges(["cmd:400"]))
    assert pki.check_chain(cert, issuer.cert, pki.load_certificates(own_pki_dir / "ca.crt")[0]).name == "gcs-x"


def test_the_vehicle_rechecks_the_hierarchy_so_a_rogue_tc_signature_cannot_escalate(own_pki_dir):
    pki.issue_to_directory(own_pki_dir, "tc-small", Role.TC, parse_privileges(["pki:issue", "telemetry"]))
    rogue = pki.Issuer(own_pki_dir, "tc-small")
    rogue.privileges = None  # a TC whose software no longer enforces the rule
    cert, _ = rogue.issue("gcs-x", Role.GCS, parse_privileges(["cmd:*", "telemetry"]))
    root = pki.load_certificates(own_pki_dir / "ca.crt")[0]
    with pytest.raises(pki.PkiError, match=r"carries \['cmd:\*'\] its issuer 'tc-small' lacks"):
        pki.check_chain(cert, rogue.cert, root)


def test_cli_init_issue_show_renew_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    directory = tmp_path / "pki"
    assert main(["c2", "pki", "init", str(directory)]) == 0
    assert main(["c2", "pki", "issue", str(directory), "--role", "tc", "--name", "tc-9"]) == 0
    assert (
        main(
            [
                "c2",
                "pki",
                "issue",
                str(directory),
                "--role",
                "gcs",
                "--name",
                "g",
                "--issuer",
                "tc-9",
                "--privileges",
                "telemetry",
                "cmd:COMPONENT_ARM_DISARM",
                "--days",
                "30",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["c2", "pki", "show", str(directory), "g"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["role"], shown["privileges"], shown["issuer"]) == ("gcs", ["cmd:400", "telemetry"], "tc-9")
    before = pki.load_certificates(directory / "g.crt")[0]
    assert main(["c2", "pki", "renew", str(directory), "g"]) == 0
    after = pki.load_certificates(directory / "g.crt")[0]
    assert after.serial_number != before.serial_number
    assert after.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == before.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert main(["c2", "pki", "revoke", str(directory), "g"]) == 0
    from cryptography import x509

    revoked = {e.serial_number for e in x509.load_pem_x509_crl((directory / "crl" / "tc-9.pem").read_bytes())}
    assert revoked == {after.serial_number}
    capsys.readouterr()
    assert main(["c2", "pki", "issue", str(directory), "--role", "gcs", "--name", "h", "--privileges", "fly"]) == 2
    assert "privilege 'fly': expected one of" in capsys.readouterr().err
    assert main(["c2", "pki", "issue", str(directory), "--role", "gcs", "--name", "h", "--days", "0"]) == 2
    assert "days 0: must be in 1..3650" in capsys.readouterr().err


def test_revocation_pushed_by_a_tc_cuts_a_live_link_and_refuses_reconnection(own_pki_dir, c2_log):
    async def run() -> None:
        async with scene(own_pki_dir) as s:
            good = await s.link("gcs-a")
            doomed = await s.link("gcs-b")
            await wait_for(lambda: "gcs-b" in s.uxv.links)
            # A GCS may not push revocations.
            doomed.send_control({"t": "crl", "pem": (own_pki_dir / "crl.pem").read_text()})
            await wait_for(lambda: logged(c2_log, "CRL push from gcs-b (role gcs) without pki:revoke"))
            issuer = pki.Issuer(own_pki_dir, "tc-1")
            crl = issuer.revoke(pki.load_certificates(own_pki_dir / "gcs-b.crt")[0].serial_number)
            pem = crl.public_bytes(serialization.Encoding.PEM) + issuer.cert.public_bytes(serialization.Encoding.PEM)
            assert await push_crl(own_pki_dir, "tc-1", pem, [s.uxv.address]) == ["uxv-1: CRL installed"]
            await wait_for(lambda: logged(c2_log, "closing link to gcs-b: certificate revoked by tc-1"))
            await wait_for(lambda: doomed.closed)
            with pytest.raises(LinkError):
                await s.link("gcs-b")
            await wait_for(lambda: logged(c2_log, "certificate verify failed: certificate revoked"))
            await s.vehicle_obeys(good, tag=1)

    asyncio.run(run())


def test_a_revoked_tc_and_the_gcss_it_issued_lose_their_links_and_cannot_reconnect(own_pki_dir, c2_log):
    # The root revokes TC tc-1 (a sub-CA) and another TC pushes the root's CRL: tc-1's own live
    # link and that of gcs-a, whose certificate tc-1 issued, are cut; neither gets back in.
    async def run() -> None:
        async with scene(own_pki_dir) as s:
            commander = await s.link("tc-1")
            issued = await s.link("gcs-a")
            await s.vehicle_obeys(issued, tag=71)
            await wait_for(lambda: {"tc-1", "gcs-a"} <= s.uxv.links.keys())
            root = pki.Issuer(own_pki_dir, "ca")
            crl = root.revoke(pki.load_certificates(own_pki_dir / "tc-1.crt")[0].serial_number)
            pem = crl.public_bytes(serialization.Encoding.PEM)
            assert await push_crl(own_pki_dir, "tc-other", pem, [s.uxv.address]) == ["uxv-1: CRL installed"]
            await wait_for(lambda: commander.closed and issued.closed, what="both links closed")
            for name in ("tc-1", "gcs-a"):
                with pytest.raises(LinkError, match="TLS handshake refused: SSLV3_ALERT_CERTIFICATE_REVOKED"):
                    await s.link(name)
            assert not {"tc-1", "gcs-a"} & s.uxv.links.keys()
            assert logged(c2_log, "closing link to gcs-a: its issuer tc-1 was revoked by ca")
            await s.link("tc-other")  # a TC the root did not revoke still gets in
            await wait_for(lambda: "tc-other" in s.uxv.links)

    asyncio.run(run())


def test_a_tc_renews_a_gcs_certificate_over_nc2s_for_a_fresh_key(own_pki_dir, c2_log):
    old = pki.load_certificates(own_pki_dir / "gcs-a.crt")[0]
    old_key = (own_pki_dir / "gcs-a.key").read_bytes()
    pki.issue_to_directory(own_pki_dir, "tc-2", Role.TC)

    async def run() -> None:
        service = await TcService(own_pki_dir, "tc-1", ("127.0.0.1", 0)).start()
        try:
            await request_renewal(own_pki_dir, "gcs-a", service.address, tc_name="tc-1", days=30)
            with pytest.raises(pki.PkiError, match="TC certificates are renewed by the root CA"):
                await request_renewal(own_pki_dir, "tc-2", service.address)
        finally:
            await service.stop()
        async with scene(own_pki_dir) as s:  # the renewed credential works at once
            await s.vehicle_obeys(await s.link("gcs-a"), tag=1)

    asyncio.run(run())
    new = pki.load_certificates(own_pki_dir / "gcs-a.crt")[0]
    assert new.serial_number != old.serial_number and (own_pki_dir / "gcs-a.key").read_bytes() != old_key
    assert pki.identity_of(new).privileges == pki.identity_of(old).privileges
    assert pki.identity_of(new).issuer == "tc-1"
    assert logged(c2_log, "refused renewal for tc-2")
