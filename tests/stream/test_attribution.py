"""Stall attribution: the byte that arrived last and what held it back."""

from __future__ import annotations

import pytest

from edgecloud.stream.attribution import Transmission, attribute_stalls, late_share, summarize
from edgecloud.stream.player import FrameTiming


def stall(index: int, seconds: float) -> FrameTiming:
    return FrameTiming(index=index, arrival_s=0.0, deadline_s=0.0, stall_s=seconds)


def test_each_stall_gets_the_cause_of_its_last_byte():
    # Four frames of 100 bytes written 0.1 s apart.
    ends, written = [100, 200, 300, 400], [0.0, 0.1, 0.2, 0.3]
    transmissions = [
        Transmission(0, 100, 0.0, 0.05),
        # Frame 1: bytes 150-200 lost once, retransmitted.
        Transmission(100, 150, 0.1, 0.15),
        Transmission(150, 200, 0.1, None),
        Transmission(150, 200, 0.3, 0.35),
        # Frame 2: waited 0.4 s behind the window, then arrived.
        Transmission(200, 300, 0.6, 0.65),
        # Frame 3: lost; its retransmission and a copy sent with it lost, another copy
        # delayed; a later copy arrived first.
        Transmission(300, 400, 0.3, None),
        Transmission(300, 400, 0.5, None),
        Transmission(300, 400, 0.5, 0.95),
        Transmission(300, 400, 0.5, None),
        Transmission(300, 400, 0.55, 0.9),
    ]
    causes = attribute_stalls(ends, written, transmissions, [stall(1, 0.05), stall(2, 0.1), stall(3, 0.2)])
    assert [(c.frame, c.critical_frame, c.losses, c.cause) for c in causes] == [
        (1, 1, 1, "first loss"),
        (2, 2, 0, "queueing"),
        (3, 3, 3, "retransmission loss"),
    ]
    assert [c.queued_s for c in causes] == pytest.approx([0.0, 0.4, 0.0])
    summary = summarize(causes)
    assert summary["retransmission loss"] == {"stalls": 1, "stall_s": 0.2}
    assert summary["stall_s_without_queueing"] == pytest.approx(0.25)


def test_first_losses_are_split_by_what_autorec_did_about_them():
    # Three frames, each stalled by a first loss of its bytes: frame 0's had a copy before
    # any retransmission (it arrived, but later than the playout allowed), frame 1's were
    # flagged as late data and got no copy (only its retransmission did), frame 2's were
    # not flagged.
    ends, written = [100, 200, 300], [0.0, 0.1, 0.2]
    transmissions = [
        Transmission(0, 100, 0.0, None),
        Transmission(0, 100, 0.05, 0.4, kind="copy"),
        Transmission(100, 200, 0.1, None),
        Transmission(100, 200, 0.3, 0.5, kind="retransmission"),
        Transmission(100, 200, 0.3, None, kind="copy"),  # a copy of the retransmission, not of the first
        Transmission(200, 300, 0.2, None),
        Transmission(200, 300, 0.4, 0.6, kind="retransmission"),
    ]
    timings = [stall(0, 0.1), stall(1, 0.2), stall(2, 0.3)]
    causes = attribute_stalls(ends, written, transmissions, timings, late_flags=[(0, 100), (100, 200)])
    assert [(c.cause, c.first_loss_split) for c in causes] == [
        ("first loss", "copy sent"),
        ("first loss", "flagged late, no copy in time"),
        ("first loss", "not flagged"),
    ]
    assert summarize(causes)["first loss split"] == {
        "copy sent": {"stalls": 1, "stall_s": 0.1},
        "flagged late, no copy in time": {"stalls": 1, "stall_s": 0.2},
        "not flagged": {"stalls": 1, "stall_s": 0.3},
    }
    # Without AutoRec's record every first loss is "not flagged".
    assert {c.first_loss_split for c in attribute_stalls(ends, written, transmissions[2:], timings[1:])} == {
        "not flagged"
    }


def test_a_lost_copy_is_no_recovery_round_and_flags_may_overlap():
    # Bytes 500-1000: the first transmission and its copy are both lost, the retransmission
    # arrives: one recovery round, a first loss with a copy. Byte 500 lies in the wider of
    # two overlapping flagged ranges.
    ends, written = [1000], [0.0]
    transmissions = [
        Transmission(0, 500, 0.0, 0.05),
        Transmission(500, 1000, 0.0, None),
        Transmission(500, 1000, 0.01, None, kind="copy"),
        Transmission(500, 1000, 0.3, 0.35, kind="retransmission"),
    ]
    timings = [stall(0, 0.1)]
    (cause,) = attribute_stalls(ends, written, transmissions, timings, late_flags=[(0, 1000), (100, 200)])
    assert (cause.losses, cause.cause, cause.first_loss_split) == (1, "first loss", "copy sent")
    assert cause.flagged_late
    (cause,) = attribute_stalls(ends, written, transmissions, timings, late_flags=[(0, 100), (100, 500)])
    assert not cause.flagged_late


def test_a_stall_waiting_on_an_earlier_frame_is_blamed_on_that_frame():
    # Frame 1 arrived at once, but frame 0's last byte came late: in-order delivery.
    ends, written = [100, 200], [0.0, 0.1]
    transmissions = [
        Transmission(0, 50, 0.0, 0.05),
        Transmission(50, 100, 0.0, None),
        Transmission(50, 100, 0.3, 0.35),
        Transmission(100, 200, 0.1, 0.15),
    ]
    (cause,) = attribute_stalls(ends, written, transmissions, [stall(1, 0.1)])
    assert (cause.frame, cause.critical_frame, cause.cause) == (1, 0, "first loss")


def test_late_share_counts_bytes_by_their_first_transmission():
    ends, written = [100, 200], [0.0, 0.1]
    transmissions = [
        Transmission(0, 100, 0.05, None),  # on time, lost
        Transmission(0, 100, 0.4, 0.45),  # its retransmission does not make it late
        Transmission(100, 150, 0.25, 0.3),  # 0.15 s after written
        Transmission(150, 200, 0.35, 0.4),  # 0.25 s after written
    ]
    assert late_share(ends, written, transmissions) == {"100ms": 0.5, "200ms": 0.25}


def test_bytes_without_a_recorded_arrival_take_no_blame():
    # Frame 0's last ten bytes have no record of arriving; frame 1 was lost once. Frame 1's
    # stall is its own first loss, not frame 0's unknown bytes (which would have taken the
    # blame for every later stall); frame 0's stall goes to its latest recorded byte.
    ends, written = [100, 200], [0.0, 0.1]
    transmissions = [
        Transmission(0, 90, 0.0, 0.05),
        Transmission(100, 200, 0.1, None),
        Transmission(100, 200, 0.3, 0.35),
    ]
    causes = attribute_stalls(ends, written, transmissions, [stall(0, 0.1), stall(1, 0.1)])
    assert [(c.frame, c.critical_frame, c.cause) for c in causes] == [(0, 0, "queueing"), (1, 1, "first loss")]
    # a frame with nothing recorded at all is left unattributed
    assert attribute_stalls([100], [0.0], [], [stall(0, 0.1)]) == []
