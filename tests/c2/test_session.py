"""The secure-session core without sockets: HELLO, records, replay window, renewal."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st
from pymavlink.dialects.v20 import ardupilotmega as mavlink

from edgecloud.c2.session import (
    OVERHEAD,
    Credentials,
    Established,
    Failed,
    FrameType,
    KeysRenewed,
    Received,
    Rejected,
    ReplayWindow,
    SecureSession,
    encode_frame,
)


def _der(credentials: Credentials) -> bytes:
    return credentials.chain[0].public_bytes(serialization.Encoding.DER)


def pair(pki_dir, client="gcs-a", server="uxv-1"):
    c, s = Credentials.load(pki_dir, client), Credentials.load(pki_dir, server)
    gcs = SecureSession(c, initiator=True, tls_peer_der=_der(s), rekey_interval=10.0)
    uxv = SecureSession(s, initiator=False, tls_peer_der=_der(c))
    gcs.start(0.0)
    uxv.start(0.0)
    to_uxv, to_gcs = gcs.data_to_send(), uxv.data_to_send()
    assert isinstance(uxv.receive_data(to_uxv, 0.0)[0], Established)
    assert isinstance(gcs.receive_data(to_gcs, 0.0)[0], Established)
    return gcs, uxv


def test_hello_authenticates_both_ends_with_roles_from_the_certificates(pki_dir):
    gcs, uxv = pair(pki_dir)
    assert (gcs.peer.name, str(gcs.peer.role)) == ("uxv-1", "uxv")
    assert (uxv.peer.name, str(uxv.peer.role), uxv.peer.issuer) == ("gcs-a", "gcs", "tc-1")


def test_hello_with_a_certificate_other_than_the_tls_peer_fails(pki_dir):
    a, b, u = (Credentials.load(pki_dir, n) for n in ("gcs-a", "gcs-b", "uxv-1"))
    gcs = SecureSession(a, initiator=True, tls_peer_der=_der(u))
    uxv = SecureSession(u, initiator=False, tls_peer_der=_der(b))  # TLS said gcs-b, HELLO says gcs-a
    gcs.start(0.0)
    events = uxv.receive_data(gcs.data_to_send(), 0.0)
    assert events == [Failed("HELLO certificate differs from the TLS peer certificate")]


def test_messages_flow_and_frames_carry_the_documented_overhead(pki_dir):
    gcs, uxv = pair(pki_dir)
    gcs.send(FrameType.MAVLINK, b"x" * 40)
    wire = gcs.data_to_send()
    assert len(wire) == 40 + OVERHEAD == 90
    assert struct.unpack(">I", wire[:4])[0] == len(wire) - 4
    assert uxv.receive_data(wire[:17], 1.0) == []  # partial frames wait for the rest
    assert uxv.receive_data(wire[17:], 1.0) == [Received(FrameType.MAVLINK, b"x" * 40)]


def test_replay_window_accepts_reordering_within_the_window_once():
    window = ReplayWindow()
    for seq in (5, 3, 4, 60):
        assert window.check(seq) is None
        window.accept(seq)
    assert window.check(4) == "replayed sequence number 4"
    assert window.check(6) is None
    window.accept(70)
    assert window.check(6) == "sequence number 6 is older than the replay window (newest 70)"
    assert window.check(60) == "replayed sequence number 60"
    assert window.check(69) is None


def test_forged_far_future_frame_leaves_the_window_where_it_was(pki_dir):
    gcs, uxv = pair(pki_dir)
    forged = encode_frame(FrameType.MAVLINK, b"evil", 1, 2**60, b"k" * 32)
    [event] = uxv.receive_data(forged, 1.0)
    assert isinstance(event, Rejected) and event.reason.startswith("HMAC does not verify")
    gcs.send(FrameType.MAVLINK, b"valid")
    assert uxv.receive_data(gcs.data_to_send(), 1.1) == [Received(FrameType.MAVLINK, b"valid")]


def test_pymavlink_signing_is_blocked_by_the_same_forgery(pki_dir):
    """The contrast the issue names: pymavlink 2.4.50 records a signed packet's timestamp before
    checking its signature, so one forged far-future timestamp makes it refuse valid traffic."""
    key = bytes(range(32))

    def signed(timestamp: int, secret: bytes) -> bytes:
        sender = mavlink.MAVLink(None, srcSystem=1, srcComponent=1)
        sender.signing.secret_key = secret
        sender.signing.sign_outgoing = True
        sender.signing.timestamp = timestamp
        return bytes(mavlink.MAVLink_heartbeat_message(2, 3, 0, 0, 4, 3).pack(sender))

    receiver = mavlink.MAVLink(None)
    receiver.signing.secret_key = key
    receiver.robust_parsing = True
    now = 10**9
    assert receiver.parse_buffer(signed(now, key))[0].get_type() == "HEARTBEAT"
    receiver.parse_buffer(signed(2**47, b"\x00" * 32))  # forged: wrong key, far-future timestamp
    later = receiver.parse_buffer(signed(now + 100, key)) or []
    assert [m.get_type() for m in later] != ["HEARTBEAT"]  # the valid packet is now refused


def test_renewal_switches_keys_and_retires_the_old_ones(pki_dir):
    gcs, uxv = pair(pki_dir)
    old_epoch, old_key = gcs.send_key()
    gcs.timer(5.0)  # interval (10 s) not reached
    assert gcs.data_to_send() == b""
    gcs.timer(10.0)
    gcs.send(FrameType.MAVLINK, b"in flight under the old keys")
    events = uxv.receive_data(gcs.data_to_send(), 10.1)
    assert events == [KeysRenewed(2, 0.0), Received(FrameType.MAVLINK, b"in flight under the old keys")]
    [renewed] = gcs.receive_data(uxv.data_to_send(), 10.2)
    assert isinstance(renewed, KeysRenewed) and renewed.epoch == 2 and renewed.duration == pytest.approx(0.2)
    assert uxv.receive_data(gcs.data_to_send(), 10.3) == []  # REKEY_CONFIRM, under epoch 2
    stale = encode_frame(FrameType.MAVLINK, b"old", old_epoch, gcs.next_seq() + 1, old_key)
    assert uxv.receive_data(stale, 10.4) == [Rejected("key epoch 1 was retired by renewal (current 2)")]
    uxv.send(FrameType.MAVLINK, b"telemetry")
    assert gcs.receive_data(uxv.data_to_send(), 10.5) == [Received(FrameType.MAVLINK, b"telemetry")]


def test_garbage_length_fails_the_link(pki_dir):
    _, uxv = pair(pki_dir)
    assert uxv.receive_data(b"\xff\xff\xff\xff" + b"\x00" * 60, 1.0) == [
        Failed(f"frame length {2**32 - 1} outside 46..{1 << 20}")
    ]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 300), max_size=80))
def test_replay_window_matches_a_reference_model(sequence):
    window, seen, top = ReplayWindow(), set(), -1
    for seq in sequence:
        expected_ok = seq not in seen and (seq > top or top - seq < 64)
        assert (window.check(seq) is None) == expected_ok
        if expected_ok:
            window.accept(seq)
            seen.add(seq)
            top = max(top, seq)


@settings(max_examples=30, deadline=None)
@given(bit=st.integers(8 * 4, 8 * (4 + 14 + 5 + 32) - 1))
def test_any_single_bit_flip_after_the_length_is_refused_and_the_next_frame_accepted(pki_dir, bit):
    """Version, type, epoch, sequence number, payload and HMAC are all covered. (The length prefix
    only frames the TLS byte stream, which TLS itself protects.)"""
    gcs, uxv = pair(pki_dir)
    gcs.send(FrameType.MAVLINK, b"hello")
    frame = bytearray(gcs.data_to_send())
    frame[bit // 8] ^= 1 << (bit % 8)
    [event] = uxv.receive_data(bytes(frame), 1.0)
    assert isinstance(event, Rejected)
    gcs.send(FrameType.MAVLINK, b"next")
    assert uxv.receive_data(gcs.data_to_send(), 1.1) == [Received(FrameType.MAVLINK, b"next")]
