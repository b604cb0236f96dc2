"""A live video source: frames at a fixed rate in GOP bursts, each with a presentation time.

The wire format of a stream is a sequence of frames, each a 20-byte header
(``b"ECLF"``, frame index, payload size, presentation time in microseconds, all network
order) followed by the payload. Frame sizes are synthetic by default — a keyframe every
``gop`` frames, ``keyframe_ratio`` times larger than the others, with ±20 % variation and
the configured mean bitrate — or taken from a real encoding: one size per line, as
``ffprobe -select_streams v -show_entries packet=size -of csv=p=0 video.mp4`` prints.
The payload bytes are pseudo-random from ``seed`` and the frame index, so any client can
check the exact bytes it received against :meth:`LiveSource.body`.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FRAME_MAGIC = b"ECLF"
FRAME_HEADER = struct.Struct("!4sIIQ")


@dataclass(frozen=True)
class SourceConfig:
    fps: float = 30.0
    bitrate_mbps: float = 2.0
    gop: int = 30
    keyframe_ratio: float = 4.0
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            ("fps", self.fps, 1.0, 240.0),
            ("bitrate_mbps", self.bitrate_mbps, 0.01, 1000.0),
            ("gop", self.gop, 1, 10_000),
            ("keyframe_ratio", self.keyframe_ratio, 1.0, 100.0),
        ]
        for name, value, low, high in checks:
            if not (low <= value <= high):
                raise ValueError(f"{name} must be in [{low}, {high}], got {value}")


@dataclass(frozen=True)
class Frame:
    index: int
    pts_s: float
    payload_size: int

    def encode(self, seed: int) -> bytes:
        payload = random.Random(seed * 1_000_003 + self.index).randbytes(self.payload_size)
        return FRAME_HEADER.pack(FRAME_MAGIC, self.index, self.payload_size, round(self.pts_s * 1e6)) + payload


class LiveSource:
    """Frame schedule and bytes of a live stream."""

    def __init__(self, config: SourceConfig | None = None, frame_sizes: list[int] | None = None) -> None:
        self.config = config or SourceConfig()
        if frame_sizes is not None and not frame_sizes:
            raise ValueError("frame_sizes must hold at least one size")
        self._sizes = frame_sizes

    @classmethod
    def from_sizes_file(cls, path: str | Path, config: SourceConfig | None = None) -> LiveSource:
        sizes = []
        for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
            field = line.strip().split(",")[0]
            if not field:
                continue
            if not field.isdigit() or int(field) <= 0:
                raise ValueError(f"{path}:{number}: a frame size must be a positive integer, got {field!r}")
            sizes.append(int(field))
        return cls(config, sizes)

    def frame_count(self, seconds: float) -> int:
        return max(1, round(seconds * self.config.fps))

    def frame(self, index: int) -> Frame:
        c = self.config
        if self._sizes is not None:
            size = self._sizes[index % len(self._sizes)]
        else:
            mean = c.bitrate_mbps * 1e6 / 8 / c.fps
            # Mean over a GOP is `mean`: one keyframe of ratio r and gop-1 others of 1.
            unit = mean * c.gop / (c.keyframe_ratio + c.gop - 1)
            scale = c.keyframe_ratio if index % c.gop == 0 else 1.0
            jitter = random.Random(c.seed * 7_919 + index).uniform(0.8, 1.2)
            size = max(1, round(unit * scale * jitter))
        return Frame(index=index, pts_s=index / c.fps, payload_size=size)

    def frames(self, seconds: float) -> Iterator[Frame]:
        for index in range(self.frame_count(seconds)):
            yield self.frame(index)

    def body(self, seconds: float) -> bytes:
        """Every byte a viewer of ``seconds`` of stream must receive."""
        return b"".join(f.encode(self.config.seed) for f in self.frames(seconds))


@dataclass(frozen=True)
class ReceivedFrame:
    index: int
    pts_s: float
    size: int
    arrival: float  # when its last byte arrived


class FrameParser:
    """Splits a received byte stream back into frames, stamping each with its arrival time."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.frames: list[ReceivedFrame] = []

    def feed(self, data: bytes, now: float) -> list[ReceivedFrame]:
        self._buffer += data
        done = []
        while len(self._buffer) >= FRAME_HEADER.size:
            magic, index, size, pts_us = FRAME_HEADER.unpack_from(self._buffer)
            if magic != FRAME_MAGIC:
                raise ValueError(f"bad frame header at frame {len(self.frames)}: magic {magic!r}")
            end = FRAME_HEADER.size + size
            if len(self._buffer) < end:
                break
            del self._buffer[:end]
            frame = ReceivedFrame(index=index, pts_s=pts_us / 1e6, size=size, arrival=now)
            self.frames.append(frame)
            done.append(frame)
        return done

    @property
    def leftover(self) -> int:
        return len(self._buffer)
