"""Acceptance: every attack the NC2S issue lists is refused with a logged reason, and the vehicle
gateway keeps serving valid traffic afterwards (a real pymavlink vehicle executes a valid command
sent after the refusal)."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from pymavlink.dialects.v20 import ardupilotmega as mavlink

from edgecloud.c2 import tls
from edgecloud.c2.commander import approve_handover
from edgecloud.c2.link import LinkError, TlsStream, connect
from edgecloud.c2.session import Credentials, FrameType, encode_frame

from .c2_harness import ARM, SET_SERVO, command_long, logged, scene
from .conftest import wait_for


async def _tls_attempt(address, context: ssl.SSLContext) -> None:
    """Try a TLS connection and read once; the server decides, so any outcome on our side is fine."""
    reader, writer = await asyncio.open_connection(*address)
    stream = TlsStream(reader, writer, context, server_side=False, server_hostname="uxv-1")
    try:
        await asyncio.wait_for(stream.handshake(), 5)
        await asyncio.wait_for(stream.read(), 5)
    except (ssl.SSLError, OSError, TimeoutError):
        pass
    finally:
        await stream.close()


def _client_context_without_certificate(pki_dir) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(cafile=pki_dir / "ca.crt")
    return context


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("no-certificate", "PEER_DID_NOT_RETURN_A_CERTIFICATE"),
        ("other-ca", "certificate verify failed: unable to get local issuer certificate"),
        ("expired", "certificate verify failed: certificate has expired"),
        ("revoked", "certificate verify failed: certificate revoked"),
    ],
)
def test_bad_certificates_are_refused_at_the_handshake(pki_dir, foreign_pki_dir, c2_log, case, reason):
    async def run() -> None:
        async with scene(pki_dir) as s:
            good = await s.link("gcs-a")
            if case == "no-certificate":
                context = _client_context_without_certificate(pki_dir)
            elif case == "other-ca":
                # The intruder trusts our CA (so its side completes); we must not trust its CA.
                context = _client_context_without_certificate(pki_dir)
                context.load_cert_chain(foreign_pki_dir / "gcs-a.crt", foreign_pki_dir / "gcs-a.key")
            else:
                context = tls.client_context(pki_dir, f"gcs-{case}")
            await _tls_attempt(s.uxv.address, context)
            await wait_for(lambda: logged(c2_log, reason), what=f"log line {reason!r}")
            assert logged(c2_log, "refused connection from")
            assert s.uxv.links.keys() == {"gcs-a"}
            await s.vehicle_obeys(good, tag=1)

    asyncio.run(run())


def test_vehicle_certificate_acting_as_gcs_is_refused(pki_dir, c2_log):
    async def run() -> None:
        async with scene(pki_dir) as s:
            good = await s.link("gcs-a")
            impostor = await s.link("uxv-2")
            impostor.send(FrameType.MAVLINK, command_long(ARM, 99))
            await wait_for(lambda: logged(c2_log, "role uxv may not connect to a vehicle"))
            await s.vehicle_obeys(good, tag=1)
            assert 99 not in s.obeyed_tags()

    asyncio.run(run())


def test_command_outside_privileges_is_refused(pki_dir, c2_log):
    async def run() -> None:
        async with scene(pki_dir, controller="gcs-limited") as s:
            limited = await s.link("gcs-limited")
            limited.send(FrameType.MAVLINK, command_long(SET_SERVO, 7))
            await wait_for(
                lambda: logged(c2_log, "gcs-limited lacks privilege cmd:183 for COMMAND_LONG(MAV_CMD_DO_SET_SERVO)")
            )
            await s.vehicle_obeys(limited, tag=8, command=ARM)  # cmd:400 is within its privileges
            assert 7 not in s.obeyed_tags()

    asyncio.run(run())


def test_command_to_a_vehicle_the_gcs_does_not_control_is_refused_and_denied(pki_dir, c2_log):
    async def run() -> None:
        async with scene(pki_dir) as s:
            good = await s.link("gcs-a")
            other = await s.link("gcs-b")
            other.send(FrameType.MAVLINK, command_long(ARM, 5, source_system=254))
            await wait_for(lambda: logged(c2_log, "gcs-b does not control uxv-1 (controller: gcs-a)"))
            # The refusal reaches gcs-b's MAVLink software as COMMAND_ACK(DENIED).
            parser = mavlink.MAVLink(None)
            await wait_for(
                lambda: any(
                    m.get_type() == "COMMAND_ACK" and m.result == mavlink.MAV_RESULT_DENIED
                    for kind, payload in s.received["gcs-b"]
                    if kind == FrameType.MAVLINK
                    for m in parser.parse_buffer(payload) or []
                )
            )
            await s.vehicle_obeys(good, tag=6)
            assert 5 not in s.obeyed_tags()

    asyncio.run(run())


def test_tampered_message_is_refused(pki_dir, c2_log):
    async def run() -> None:
        async with scene(pki_dir) as s:
            link = await s.link("gcs-a")
            link.session.send(FrameType.MAVLINK, command_long(ARM, 11))
            frame = bytearray(link.session.data_to_send())
            frame[-40] ^= 0x01  # a payload byte (the last 32 bytes are the HMAC)
            link.send_raw(bytes(frame))
            await wait_for(lambda: logged(c2_log, "HMAC does not verify"))
            await s.vehicle_obeys(link, tag=12)
            assert 11 not in s.obeyed_tags()

    asyncio.run(run())


def test_replayed_message_is_refused(pki_dir, c2_log):
    async def run() -> None:
        async with scene(pki_dir) as s:
            link = await s.link("gcs-a")
            link.session.send(FrameType.MAVLINK, command_long(ARM, 21))
            frame = link.session.data_to_send()
            link.send_raw(frame)
            await wait_for(lambda: 21 in s.obeyed_tags())
            link.send_raw(frame)
            await wait_for(lambda: logged(c2_log, "replayed sequence number"))
            await s.vehicle_obeys(link, tag=22)
            assert [o.tag for o in s.vehicle.obeyed].count(21) == 1

    asyncio.run(run())


def test_forged_far_future_sequence_number_does_not_block_valid_traffic(pki_dir, c2_log):
    async def run() -> None:
        async with scene(pki_dir) as s:
            link = await s.link("gcs-a")
            epoch, _ = link.session.send_key()
            forged = encode_frame(FrameType.MAVLINK, command_long(ARM, 31), epoch, 2**63, b"\x00" * 32)
            link.send_raw(forged)
            await wait_for(lambda: logged(c2_log, "sequence number 9223372036854775808"))
            # pymavlink 2.4.50's signing would now refuse everything older than the forged stamp.
            for tag in (32, 33, 34):
                await s.vehicle_obeys(link, tag=tag)
            assert 31 not in s.obeyed_tags()

    asyncio.run(run())


def test_traffic_under_keys_older_than_a_renewal_is_refused(pki_dir, c2_log):
    async def run() -> None:
        async with scene(pki_dir) as s:
            link = await s.link("gcs-a")
            old_epoch, old_key = link.session.send_key()
            await s.vehicle_obeys(link, tag=41)
            await asyncio.wait_for(link.renew_keys(), 5)
            assert link.session.epoch == old_epoch + 1
            await s.vehicle_obeys(link, tag=42)  # under the new keys
            stale = encode_frame(
                FrameType.MAVLINK, command_long(ARM, 43), old_epoch, link.session.next_seq() + 5, old_key
            )
            link.send_raw(stale)
            await wait_for(lambda: logged(c2_log, f"key epoch {old_epoch} was retired by renewal"))
            await s.vehicle_obeys(link, tag=44)
            assert 43 not in s.obeyed_tags()

    asyncio.run(run())


def test_handover_without_tc_approval_is_refused(pki_dir, c2_log):
    async def run() -> None:
        async with scene(pki_dir) as s:
            good = await s.link("gcs-a")
            usurper = await s.link("gcs-b")
            usurper.send_control({"t": "approve", "h": "grab", "from": "gcs-a", "to": "gcs-b"})
            await wait_for(lambda: logged(c2_log, "handover grab not approved by a TC: gcs-b has role gcs"))
            assert s.uxv.control.controller == "gcs-a"
            await s.vehicle_obeys(good, tag=51)

    asyncio.run(run())


def test_handover_approved_by_a_tc_without_the_approve_privilege_is_refused(pki_dir, c2_log):
    # A TC certificate is not enough: approving a handover takes handover:approve.
    async def run() -> None:
        async with scene(pki_dir) as s:
            holder = await s.link("gcs-a")
            await s.link("gcs-b")
            await wait_for(lambda: "gcs-b" in s.uxv.links)
            result = await approve_handover(
                pki_dir, "tc-no-approve", s.uxv.address, "gcs-a", "gcs-b", uxv_name="uxv-1", timeout=10
            )
            assert (result.state, result.reason) == ("rejected", "approval requires a TC")
            assert logged(c2_log, "not approved by a TC: tc-no-approve has role tc without handover:approve")
            assert s.uxv.control.controller == "gcs-a" and s.uxv.control.pending is None
            await s.vehicle_obeys(holder, tag=55)

    asyncio.run(run())


def test_two_conflicting_handovers_at_once(pki_dir, c2_log):
    async def run() -> None:
        # A lease far longer than the test: the handover must wait for gcs-a's release, never
        # for the lease to run out, however slowly a loaded machine runs the steps below.
        async with scene(pki_dir, lease=600.0) as s:
            holder = await s.link("gcs-a")
            holder.send_control({"t": "renew", "n": 0})  # gcs-a holds a lease, so handover waits for it
            await wait_for(lambda: s.uxv.control.lease_until > 0)
            gcs_b = await s.link("gcs-b")
            await wait_for(lambda: "gcs-b" in s.uxv.links)
            commander = await s.link("tc-1")
            commander.send_control({"t": "approve", "h": "first", "from": "gcs-a", "to": "gcs-b"})
            commander.send_control({"t": "approve", "h": "second", "from": "gcs-a", "to": "gcs-c"})
            await wait_for(lambda: logged(c2_log, "conflicting handover second: handover first (gcs-a→gcs-b)"))
            await s.vehicle_obeys(holder, tag=61)  # still gcs-a's until it releases or its lease ends
            holder.send_control({"t": "released", "epoch": s.uxv.control.epoch})
            await wait_for(lambda: s.uxv.control.controller == "gcs-b")
            assert s.uxv.control.outcomes == {
                "first": ("done", ""),
                "second": ("rejected", "conflicting handover second: handover first (gcs-a→gcs-b) is in progress"),
            }
            await s.vehicle_obeys(gcs_b, tag=62)

    asyncio.run(run())


def test_gcs_refuses_a_server_that_is_not_the_vehicle_it_asked_for(pki_dir):
    async def run() -> None:
        async with scene(pki_dir) as s:
            with pytest.raises(LinkError, match="certificate verify failed: Hostname mismatch"):
                await connect(
                    *s.uxv.address,
                    Credentials.load(pki_dir, "gcs-a"),
                    tls.client_context(pki_dir, "gcs-a"),
                    server_hostname="uxv-2",
                    label="test",
                )

    asyncio.run(run())
