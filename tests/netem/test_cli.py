"""``edgecloud netem``: argument errors are precise, profiles are built per direction, and a real
relay process relays, then prints its stats on Ctrl-C."""

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edgecloud.cli import build_parser, main
from edgecloud.netem import PROFILES, Bernoulli, GilbertElliott, GilbertElliottTime, LinkProfile, Schedule
from edgecloud.netem.cli import _profiles, host_port


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:8080", ("127.0.0.1", 8080)), ("localhost:0", ("localhost", 0)), ("[::1]:443", ("::1", 443))],
)
def test_host_port_parses(text: str, expected: tuple[str, int]) -> None:
    assert host_port(text) == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--loss", "1.5"], "argument --loss: must be in [0, 1], got 1.5"),
        (["--down-loss", "-0.1"], "argument --down-loss: must be in [0, 1], got -0.1"),
        (["--delay-ms", "-5"], "argument --delay-ms: must be >= 0, got -5"),
        (["--rate-mbps", "0"], "argument --rate-mbps: must be > 0, got 0"),
        (["--queue-bytes", "1.5"], "argument --queue-bytes: expected an integer, got '1.5'"),
        (["--listen", "8080"], "argument --listen: expected HOST:PORT with a port in 0..65535, got '8080'"),
        (["--listen", "host:70000"], "got 'host:70000'"),
        (["--profile", "moon"], "argument --profile: invalid choice: 'moon'"),
        (["--burst-ms", "0"], "argument --burst-ms: must be > 0, got 0"),
        (["--up-burst-ms", "fast"], "argument --up-burst-ms: expected a number, got 'fast'"),
        (["--loss-model", "gilbert"], "argument --loss-model: invalid choice: 'gilbert'"),
        (["--burst-ms", "nan"], "argument --burst-ms: expected a finite number, got 'nan'"),
        (["--down-burst-ms", "inf"], "argument --down-burst-ms: expected a finite number, got 'inf'"),
        (["--up-burst-len=-inf"], "argument --up-burst-len: expected a finite number, got '-inf'"),
        (["--loss", "NaN"], "argument --loss: expected a finite number, got 'NaN'"),
        (["--rate-mbps", "inf"], "argument --rate-mbps: expected a finite number, got 'inf'"),
    ],
)
def test_bad_arguments_are_usage_errors_naming_the_option(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["netem", "udp", "--to", "127.0.0.1:9", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_malformed_target_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["netem", "tcp", "--to", "no-port"])
    assert exit_info.value.code == 2
    assert "argument --to: expected HOST:PORT" in capsys.readouterr().err


def test_inconsistent_loss_options_are_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["netem", "udp", "--to", "127.0.0.1:9", "--loss-model", "gilbert-elliott"]) == 2
    assert "--loss is required with --loss-model" in capsys.readouterr().err
    assert main(["netem", "udp", "--to", "127.0.0.1:9", "--loss", "0.1", "--burst-len", "3"]) == 2
    assert (
        "no --loss-model given, so the model is bernoulli; --burst-len applies only to gilbert-elliott"
        in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--loss-model", "gilbert-elliott-time"],
            "--up-loss / --loss is required with --loss-model, --burst-len or --burst-ms",
        ),
        (["--burst-ms", "20"], "--loss is required with --loss-model, --burst-len or --burst-ms"),
        (
            ["--loss", "0.1", "--burst-ms", "20"],
            "no --loss-model given, so the model is bernoulli; --burst-ms applies only to gilbert-elliott-time",
        ),
        (
            ["--loss", "0.1", "--loss-model", "gilbert-elliott", "--burst-ms", "20"],
            "--loss-model is gilbert-elliott; --burst-ms applies only to gilbert-elliott-time; "
            "bursts of gilbert-elliott are set with --burst-len",
        ),
        (
            ["--loss", "0.1", "--loss-model", "gilbert-elliott-time", "--burst-len", "3"],
            "--loss-model is gilbert-elliott-time; --burst-len applies only to gilbert-elliott; "
            "bursts of gilbert-elliott-time are set with --burst-ms",
        ),
        (
            ["--loss", "0.1", "--loss-model", "gilbert-elliott", "--down-burst-ms", "20"],
            "--loss-model is gilbert-elliott; --down-burst-ms applies only to gilbert-elliott-time; "
            "bursts of gilbert-elliott are set with --down-burst-len",
        ),
        (
            ["--loss", "0.1", "--up-loss-model", "gilbert-elliott-time", "--up-burst-len", "3"],
            "--up-loss-model is gilbert-elliott-time; --up-burst-len applies only to gilbert-elliott",
        ),
        (
            ["--loss", "1", "--loss-model", "gilbert-elliott-time"],
            "--loss must be in [0, 1) with --loss-model gilbert-elliott-time "
            "(a mean loss of 1 needs a bad state that is never left), got 1",
        ),
        (
            ["--loss", "0.1", "--down-loss", "1", "--down-loss-model", "gilbert-elliott"],
            "--down-loss must be in [0, 1) with --down-loss-model gilbert-elliott",
        ),
        # Set at the model's level or a more specific one, a burst option must fit the model.
        (
            ["--loss", "0.1", "--up-loss-model", "bernoulli", "--up-burst-ms", "20"],
            "--up-loss-model is bernoulli; --up-burst-ms applies only to gilbert-elliott-time",
        ),
        (
            ["--loss", "0.1", "--loss-model", "gilbert-elliott-time", "--down-burst-len", "3"],
            "--loss-model is gilbert-elliott-time; --down-burst-len applies only to gilbert-elliott; "
            "bursts of gilbert-elliott-time are set with --down-burst-ms",
        ),
        (
            # Ignored uplink (bernoulli of its own), but the downlink runs the shared model.
            ["--loss", "0.1", "--loss-model", "gilbert-elliott", "--burst-ms", "30", "--up-loss-model", "bernoulli"],
            "--loss-model is gilbert-elliott; --burst-ms applies only to gilbert-elliott-time",
        ),
    ],
)
def test_inconsistent_time_model_options_are_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["netem", "udp", "--to", "127.0.0.1:9", *argv]) == 2
    assert message in capsys.readouterr().err


def parse(*argv: str) -> tuple[object, object]:
    return _profiles(build_parser().parse_args(["netem", "udp", "--to", "127.0.0.1:9", *argv]))


def test_options_shape_both_directions_and_up_down_override_one() -> None:
    up, down = parse("--delay-ms", "10", "--loss", "0.02", "--down-delay-ms", "50", "--up-rate-mbps", "2")
    assert up == LinkProfile(delay_ms=10.0, rate_mbps=2.0, loss=Bernoulli(0.02))
    assert down == LinkProfile(delay_ms=50.0, loss=Bernoulli(0.02))


def test_named_profile_with_bursty_loss_override() -> None:
    up, down = parse(
        "--profile", "tactical-radio", "--loss", "0.05", "--loss-model", "gilbert-elliott", "--burst-len", "4"
    )
    expected = LinkProfile(**{**PROFILES["tactical-radio"].__dict__, "loss": GilbertElliott.from_mean(0.05, 4)})
    assert up == down == expected


def test_time_model_options_build_time_based_bursts() -> None:
    up, down = parse("--loss", "0.05", "--loss-model", "gilbert-elliott-time", "--burst-ms", "40")
    assert up == down == LinkProfile(loss=GilbertElliottTime.from_mean(0.05, 40.0))
    up, down = parse("--loss", "0.05", "--loss-model", "gilbert-elliott-time")
    assert up == down == LinkProfile(loss=GilbertElliottTime.from_mean(0.05, 20.0))  # default burst


def test_time_model_per_direction() -> None:
    up, down = parse(
        "--loss",
        "0.05",
        "--up-loss-model",
        "gilbert-elliott",
        "--up-burst-len",
        "4",
        "--down-loss-model",
        "gilbert-elliott-time",
        "--down-burst-ms",
        "50",
        "--down-loss",
        "0.1",
    )
    assert up == LinkProfile(loss=GilbertElliott.from_mean(0.05, 4.0))
    assert down == LinkProfile(loss=GilbertElliottTime.from_mean(0.1, 50.0))


def test_a_shared_burst_option_skips_a_direction_with_a_model_of_its_own() -> None:
    # --burst-len is for the shared packet model; the downlink's own time model ignores it.
    up, down = parse(
        "--loss",
        "0.05",
        "--loss-model",
        "gilbert-elliott",
        "--burst-len",
        "3",
        "--down-loss-model",
        "gilbert-elliott-time",
        "--down-burst-ms",
        "50",
    )
    assert up == LinkProfile(loss=GilbertElliott.from_mean(0.05, 3.0))
    assert down == LinkProfile(loss=GilbertElliottTime.from_mean(0.05, 50.0))
    # --burst-ms is for the shared time model; the uplink's own bernoulli ignores it.
    up, down = parse(
        "--loss", "0.05", "--loss-model", "gilbert-elliott-time", "--burst-ms", "30", "--up-loss-model", "bernoulli"
    )
    assert up == LinkProfile(loss=Bernoulli(0.05))
    assert down == LinkProfile(loss=GilbertElliottTime.from_mean(0.05, 30.0))
    # A shared burst that fits a direction's own model applies to it.
    up, down = parse(
        "--loss",
        "0.05",
        "--burst-ms",
        "30",
        "--up-loss-model",
        "gilbert-elliott-time",
        "--down-loss-model",
        "bernoulli",
    )
    assert up == LinkProfile(loss=GilbertElliottTime.from_mean(0.05, 30.0))
    assert down == LinkProfile(loss=Bernoulli(0.05))


def test_schedule_file_per_direction(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(
        json.dumps(
            {
                "uplink": [{"at_s": 0, "delay_ms": 5}, {"at_s": 10, "loss": 0.1}],
                "downlink": [{"at_s": 0, "profile": "wifi"}],
            }
        )
    )
    up, down = parse("--schedule", str(path))
    assert isinstance(up, Schedule) and up.at(11) == LinkProfile(loss=0.1)
    assert isinstance(down, Schedule) and down.at(0) == PROFILES["wifi"]


def test_schedule_with_shaping_options_or_bad_file_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps([{"at_s": 0, "delay_ms": -3}]))
    assert main(["netem", "udp", "--to", "127.0.0.1:9", "--schedule", str(path), "--down-loss", "0.1"]) == 2
    assert "--schedule cannot be combined with --down-loss" in capsys.readouterr().err
    assert main(["netem", "udp", "--to", "127.0.0.1:9", "--schedule", str(path), "--up-burst-ms", "20"]) == 2
    assert "--schedule cannot be combined with --up-burst-ms" in capsys.readouterr().err
    assert main(["netem", "udp", "--to", "127.0.0.1:9", "--schedule", str(path)]) == 2
    assert "LinkProfile.delay_ms must be a finite number >= 0, got -3" in capsys.readouterr().err
    assert main(["netem", "udp", "--to", "127.0.0.1:9", "--schedule", str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_help_explains_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["netem", "tcp", "--help"])
    out = capsys.readouterr().out
    for option in (
        "--listen",
        "--to",
        "--delay-ms",
        "--down-delay-ms",
        "--loss-model",
        "--burst-len",
        "--burst-ms",
        "--up-burst-ms",
        "--down-burst-ms",
        "gilbert-elliott-time",
        "--schedule",
        "--seed",
    ):
        assert option in out


def test_help_explains_the_two_bursty_models(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping: argparse breaks lines at hyphens too
    with pytest.raises(SystemExit):
        main(["netem", "udp", "--help"])
    text = capsys.readouterr().out
    for explanation in (
        "gilbert-elliott: bursts counted in packets (--burst-len), so a burst lasts N packets however far apart",
        "gilbert-elliott-time: bursts lasting a time (--burst-ms), whatever the packet rate",
        "gilbert-elliott: bursts counted in packets (--up-burst-len)",
        "gilbert-elliott-time: bursts lasting a time (--down-burst-ms)",
        "packets sent far apart see nearly independent losses",
        "mean loss burst in packets, for gilbert-elliott only; default 3",
        "mean loss burst in ms (time in the bad state), for gilbert-elliott-time only; default 20",
        '{"model": "gilbert-elliott-time", "mean": 0.05, "burst_ms": 20} (bursts in time)',
    ):
        assert explanation in text


@pytest.mark.parametrize("sigint_ignored", [False, True], ids=["foreground", "background"])
def test_relay_process_relays_and_prints_stats_on_ctrl_c(sigint_ignored: bool) -> None:
    # "background": started the way a non-interactive shell starts `cmd &`, with SIGINT
    # ignored, which the relay must still honour.
    def ignore_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    async def scenario() -> str:
        loop = asyncio.get_running_loop()
        echo_transport, _ = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
        target_port = echo_transport.get_extra_info("sockname")[1]
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edgecloud.cli",
            "netem",
            "udp",
            "--to",
            f"127.0.0.1:{target_port}",
            "--delay-ms",
            "5",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=ignore_sigint if sigint_ignored else None,
        )
        assert process.stdout is not None
        try:
            first_line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
            assert first_line.startswith("netem udp: listening on 127.0.0.1:")
            relay_port = int(first_line.split(",")[0].rsplit(":", 1)[1])
            received: asyncio.Queue[bytes] = asyncio.Queue()
            client, _ = await loop.create_datagram_endpoint(
                lambda: _Collector(received), remote_addr=("127.0.0.1", relay_port)
            )
            client.sendto(b"through the relay process")
            assert await asyncio.wait_for(received.get(), 10) == b"through the relay process"
            client.close()
            process.send_signal(signal.SIGINT)
            out, err = await asyncio.wait_for(process.communicate(), 20)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            echo_transport.close()
        assert process.returncode == 0, err.decode()
        return out.decode()

    output = asyncio.run(scenario())
    uplink_row = next(line for line in output.splitlines() if line.startswith("uplink "))
    assert uplink_row.split()[1:4] == ["1", "25", "1"]  # packets in, bytes in, delivered


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)


class _Collector(asyncio.DatagramProtocol):
    def __init__(self, queue: asyncio.Queue[bytes]) -> None:
        self.queue = queue

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait(data)
