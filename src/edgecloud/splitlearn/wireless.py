"""Wireless link rates between UEs and the base station (C2P2SL Sec. II-B).

Each UE ``k`` reaches the BS over a channel with signal-to-noise ratio ``snr_db``. The uplink
band of ``W`` Hz is shared: UE ``k`` gets a fraction ``b_k`` of it (FDMA bandwidth, or
equivalently a TDMA slot share averaged over a frame), and its rate is Shannon's

    r_k = b_k * W * log2(1 + 10^(snr_db/10))   bit/s.

The downlink is a separate band of the same width, shared equally by the UEs that are served
at the same time. The runtime enforces these rates on the real tensors it sends (see
``transport``), so a transfer of ``n`` bytes occupies its link for ``8 n / r_k`` seconds.
"""

from __future__ import annotations

import math


def spectral_efficiency(snr_db: float) -> float:
    """Shannon capacity per hertz, bit/s/Hz."""
    return math.log2(1.0 + 10.0 ** (snr_db / 10.0))


def shannon_rate_bps(bandwidth_hz: float, share: float, snr_db: float) -> float:
    """Rate of a link holding ``share`` of ``bandwidth_hz`` at ``snr_db``."""
    if bandwidth_hz <= 0:
        raise ValueError(f"bandwidth_hz must be > 0, got {bandwidth_hz}")
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must be in (0, 1], got {share}")
    return share * bandwidth_hz * spectral_efficiency(snr_db)


def transfer_seconds(nbytes: float, rate_bps: float) -> float:
    """Time a link of ``rate_bps`` is busy serialising ``nbytes``."""
    return 8.0 * nbytes / rate_bps
