"""Userspace link emulator: delay, jitter, rate limit with a bounded queue, Bernoulli and
Gilbert–Elliott loss (bursts counted in packets or in time), per direction and changing over time,
for UDP and TCP on loopback.

The kernel here has no ``netem`` qdisc, so this package plays its part for the streaming, C2 and
replication systems. :class:`Link` is the model (no I/O, explicit time); :class:`UdpRelay` and
:class:`TcpProxy` put it between real sockets. See docs/netem.md.
"""

from edgecloud.netem.link import DirectionStats, Link, Outcome, Transmission
from edgecloud.netem.profile import (
    PROFILES,
    Bernoulli,
    GilbertElliott,
    GilbertElliottTime,
    LinkProfile,
    Schedule,
    profile_from_dict,
)
from edgecloud.netem.tcp import TcpProxy
from edgecloud.netem.udp import RelayStats, UdpRelay

__all__ = [
    "PROFILES",
    "Bernoulli",
    "DirectionStats",
    "GilbertElliott",
    "GilbertElliottTime",
    "Link",
    "LinkProfile",
    "Outcome",
    "RelayStats",
    "Schedule",
    "TcpProxy",
    "Transmission",
    "UdpRelay",
    "profile_from_dict",
]
