"""``edgecloud netem``: a taken port is one line with exit code 1; links print as readable lines."""

from __future__ import annotations

import socket

import pytest

from edgecloud.cli import main
from edgecloud.netem import Bernoulli, GilbertElliott, GilbertElliottTime, LinkProfile, Schedule


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
def test_a_taken_port_is_one_line(protocol: str, capsys: pytest.CaptureFixture[str]) -> None:
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as taken:
        taken.bind(("127.0.0.1", 0))
        if protocol == "tcp":
            taken.listen()
        port = taken.getsockname()[1]
        assert main(["netem", protocol, "--listen", f"127.0.0.1:{port}", "--to", "127.0.0.1:9"]) == 1
    assert capsys.readouterr().err == (
        f"edgecloud netem {protocol}: error: cannot listen on 127.0.0.1:{port}: the address is already in use; "
        "stop what holds it or pass another --listen (port 0 picks a free one)\n"
    )


def test_a_bad_schedule_is_a_one_line_usage_error(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.json"
    path.write_text("{")
    assert main(["netem", "udp", "--to", "127.0.0.1:9", "--schedule", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"edgecloud netem udp: error: --schedule: {path} is not valid JSON") and err.count("\n") == 1


def test_profiles_read_as_words() -> None:
    profile = LinkProfile(delay_ms=50, loss=GilbertElliott.from_mean(0.05, 3))
    assert profile.describe() == (
        "delay 50 ms, no jitter, unlimited rate, 5% loss in bursts of 3 packets (Gilbert-Elliott)"
    )
    shaped = LinkProfile(delay_ms=10, jitter_ms=2, rate_mbps=2, queue_bytes=1000, loss=Bernoulli(0.01))
    assert shaped.describe() == (
        "delay 10 ms, jitter ±2 ms, rate 2 Mbit/s, queue 1000 bytes, 1% loss, independent (Bernoulli)"
    )
    in_time = LinkProfile(loss=GilbertElliottTime.from_mean(0.05, 60))
    assert in_time.describe().endswith("5% loss in bursts of 60 ms (Gilbert-Elliott in time)")
    leaky = GilbertElliott(0.1, 0.5, loss_in_good=0.01, loss_in_bad=0.5)
    assert leaky.describe().endswith(", losing 1% in the good state and 50% in the bad")
    schedule = Schedule([(0, LinkProfile()), (30, LinkProfile(delay_ms=200))])
    assert schedule.describe() == (
        "from 0 s: delay 0 ms, no jitter, unlimited rate, no loss\n"
        "from 30 s: delay 200 ms, no jitter, unlimited rate, no loss"
    )
