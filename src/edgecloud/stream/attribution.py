"""Why each stall happened: the byte that arrived last, and what held it back.

A frame plays once every byte up to its end has arrived (the stream is delivered in
order), so a stalled frame waited for one *critical* byte: the one, in this frame or an
earlier one, whose first successful arrival came last. What held that byte back is read
off the server's transmissions of it:

* ``queued_s`` — from the moment the application wrote its frame to the byte's first
  transmission: time spent behind the congestion window (or the pacer);
* ``losses`` — how many of its transmissions (not counting AutoRec's copies) were lost before
  one arrived.

The cause is **queueing** when nothing was lost, a **first loss** when one transmission was
lost (one RFC 9002 recovery round), a **retransmission loss** when the retransmission was
lost too — the case AutoRec exists for. Lost AutoRec copies are not counted: they are not
recovery rounds. A first loss is further split by what AutoRec did about the byte before it
was lost: a *copy* of it left before its retransmission (and arrived too late, or was lost
too), its first transmission was *flagged* as late data but no copy left before the
retransmission (a late copy waits for nothing but credit, so the budget had none), or it was
*not flagged*. A stall whose frames have no recorded arrival is left unattributed. Used by
the virtual benchmark, which sees every datagram; baseline and AutoRec are attributed by the
same code.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgecloud.stream.player import FrameTiming

CAUSES = ("queueing", "first loss", "retransmission loss")
# What AutoRec did about a first loss's byte (see the module docstring).
FIRST_LOSS_SPLIT = ("copy sent", "flagged late, no copy in time", "not flagged")


@dataclass(frozen=True)
class Transmission:
    """Stream bytes ``[start, stop)`` sent at ``sent_at``; ``arrived_at`` None if lost;
    ``kind`` "first", "retransmission" or "copy" (an AutoRec copy)."""

    start: int
    stop: int
    sent_at: float
    arrived_at: float | None
    kind: str = "first"


@dataclass(frozen=True)
class StallCause:
    frame: int  # the frame whose deadline passed
    stall_s: float
    critical_frame: int  # the frame holding the byte that arrived last
    losses: int  # transmissions of that byte lost before one arrived
    queued_s: float  # from its frame's write to its first transmission
    copied: bool = False  # an AutoRec copy of that byte left before its first retransmission
    flagged_late: bool = False  # its first transmission was flagged as late data

    @property
    def cause(self) -> str:
        return CAUSES[min(self.losses, 2)]

    @property
    def first_loss_split(self) -> str:
        """For a first loss: copy sent, flagged late with no copy in time, or not flagged."""
        return FIRST_LOSS_SPLIT[0 if self.copied else 1 if self.flagged_late else 2]


def attribute_stalls(
    frame_ends: Sequence[int],
    written_at: Sequence[float],
    transmissions: Sequence[Transmission],
    timings: Sequence[FrameTiming],
    late_flags: Sequence[tuple[int, int]] = (),
) -> list[StallCause]:
    """One :class:`StallCause` per stalled frame.

    ``frame_ends[i]`` is the stream offset where frame *i* ends and ``written_at[i]`` when
    the application wrote it; ``timings`` are the player's (see ``playback_timings``);
    ``late_flags`` the byte ranges AutoRec flagged as late data when they were first sent
    (``ReinjectionController.late_flags``).
    """
    flags = sorted(late_flags)
    flag_starts = [lo for lo, _ in flags]
    reach = list(itertools.accumulate((hi for _, hi in flags), max))  # ranges may overlap

    def flagged(offset: int) -> bool:
        i = bisect.bisect_right(flag_starts, offset) - 1
        return i >= 0 and offset < reach[i]

    starts = [0, *frame_ends[:-1]]
    by_frame = _by_frame(frame_ends, transmissions)
    # Per frame: its own last-arriving byte, then the running maximum over frames.
    latest: list[tuple[float, int, int]] = []  # (arrival, frame, offset) of the critical byte
    for i, (lo, hi) in enumerate(zip(starts, frame_ends, strict=True)):
        arrival = np.full(hi - lo, np.inf)
        for t in by_frame[i]:
            if t.arrived_at is not None:
                seg = arrival[max(t.start, lo) - lo : min(t.stop, hi) - lo]
                np.minimum(seg, t.arrived_at, out=seg)
        # a byte with no recorded arrival (a record the run could not read) cannot be
        # the critical one: it would take the blame for every later stall
        arrival[np.isinf(arrival)] = -np.inf
        offset = int(np.argmax(arrival)) if hi > lo else 0
        own = (float(arrival[offset]) if hi > lo else -np.inf, i, lo + offset)
        latest.append(max(own, latest[-1]) if latest else own)
    causes = []
    for timing in timings:
        if timing.stall_s <= 0 or timing.index >= len(latest):
            continue
        _, frame, offset = latest[timing.index]
        carrying = [t for t in by_frame[frame] if t.start <= offset < t.stop]
        # By send time only: a copy and a retransmission can leave at the same instant.
        sends = sorted(((t.sent_at, t.arrived_at) for t in carrying), key=lambda s: s[0])
        delivered = [s for s in sends if s[1] is not None]
        if not delivered:  # nothing of this frame was recorded as arriving: not attributed
            continue
        delivered_by = min(delivered, key=lambda s: s[1])
        retransmitted = min((t.sent_at for t in carrying if t.kind == "retransmission"), default=np.inf)
        # Recovery rounds, not packets: a lost AutoRec copy is not a lost transmission of
        # its own (its original or retransmission is still out).
        losses = sum(1 for t in carrying if t.kind != "copy" and t.arrived_at is None and t.sent_at < delivered_by[0])
        causes.append(
            StallCause(
                frame=timing.index,
                stall_s=timing.stall_s,
                critical_frame=frame,
                losses=losses,
                queued_s=sends[0][0] - written_at[frame],
                # a copy of the first transmission, not one of a retransmission's copies
                copied=any(t.kind == "copy" and t.sent_at < retransmitted for t in carrying),
                flagged_late=flagged(offset),
            )
        )
    return causes


def _by_frame(frame_ends: Sequence[int], transmissions: Sequence[Transmission]) -> list[list[Transmission]]:
    """The transmissions overlapping each frame."""
    starts = [0, *frame_ends[:-1]]
    by_frame: list[list[Transmission]] = [[] for _ in frame_ends]
    for t in transmissions:
        for i in range(bisect.bisect_right(frame_ends, t.start), len(frame_ends)):
            if starts[i] >= t.stop:
                break
            by_frame[i].append(t)
    return by_frame


def late_share(
    frame_ends: Sequence[int],
    written_at: Sequence[float],
    transmissions: Sequence[Transmission],
    after_s: Sequence[float] = (0.1, 0.2),
) -> dict[str, float]:
    """Share of the stream's bytes first transmitted more than each ``after_s`` after their
    frame was written: how much of the stream waited behind the window."""
    starts = [0, *frame_ends[:-1]]
    late = dict.fromkeys(after_s, 0)
    for i, frame in enumerate(_by_frame(frame_ends, transmissions)):
        lo, hi = starts[i], frame_ends[i]
        first = np.full(hi - lo, np.inf)
        for t in frame:
            seg = first[max(t.start, lo) - lo : min(t.stop, hi) - lo]
            np.minimum(seg, t.sent_at, out=seg)
        for after in after_s:
            late[after] += int(np.count_nonzero(first - written_at[i] > after))
    total = frame_ends[-1] if frame_ends else 0
    return {f"{after * 1000:g}ms": round(n / total, 4) if total else 0.0 for after, n in late.items()}


def summarize(causes: Sequence[StallCause]) -> dict[str, object]:
    """Stall count and time per cause, first losses split by what AutoRec did about them,
    and the stall time left had every critical byte left when its frame was written (what
    queueing behind the window cost)."""
    out: dict[str, object] = {
        cause: {
            "stalls": sum(1 for c in causes if c.cause == cause),
            "stall_s": round(sum(c.stall_s for c in causes if c.cause == cause), 4),
        }
        for cause in CAUSES
    }
    first = [c for c in causes if c.cause == "first loss"]
    out["first loss split"] = {
        split: {
            "stalls": sum(1 for c in first if c.first_loss_split == split),
            "stall_s": round(sum(c.stall_s for c in first if c.first_loss_split == split), 4),
        }
        for split in FIRST_LOSS_SPLIT
    }
    queued = sorted(c.queued_s for c in causes)
    out["queued_ms_median"] = round(queued[len(queued) // 2] * 1000, 1) if queued else None
    out["stall_s_without_queueing"] = round(sum(max(0.0, c.stall_s - c.queued_s) for c in causes), 4)
    return out
