"""The benchmark's JSON schema, on a short virtual-clock run (no timing asserted)."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from edgecloud.cli import main
from edgecloud.netem import GilbertElliottTime, Link
from edgecloud.stream import bench
from edgecloud.stream.controller import AutoRecConfig
from edgecloud.stream.source import LiveSource, SourceConfig
from edgecloud.stream.virtual import VirtualPair, fixed_delay, stream_live

REQUIRED = {
    "recovery_ms_p50",
    "recovery_ms_p95",
    "recovery_ms_p99",
    "retx_loss_recovery_ms_p95",
    "stalls",
    "stall_s",
    "unfinished_stall_s",
    "complete",
    "overhead",
    "goodput_mbps",
}


def short_cases(loss_model: str, **kwargs: int) -> list[dict]:
    """3 s of a small stream at 5 % loss and 40 ms on the virtual clock."""
    return bench.run_cases(
        [0.05],
        [loss_model],
        [40.0],
        duration_s=3.0,
        autorec=AutoRecConfig(),
        source=SourceConfig(fps=20, bitrate_mbps=0.2),
        playout_delay_s=0.3,
        rate_mbps=20.0,
        virtual=True,
        **kwargs,
    )


def test_cases_have_the_issue_schema_and_deliver_every_byte():
    cases = short_cases("bursty")
    (case,) = cases
    assert (case["loss"], case["loss_model"], case["rtt_ms"]) == (0.05, "bursty", 40.0)
    for side in ("baseline", "autorec"):
        assert set(case[side]) >= REQUIRED
        assert case[side]["bytes_equal"] and case[side]["frames"] == 60
    assert case["baseline"]["overhead"] == 0.0
    # the file says how to rerun it
    assert case["autorec_config"] == asdict(AutoRecConfig())
    assert case["source"]["bitrate_mbps"] == 0.2 and case["playout_delay_s"] == 0.3
    assert case["congestion_control"] == "reno"  # aioquic's default


def test_cubic_runs_on_both_sides_and_is_recorded(capsys):
    (case,) = short_cases("bernoulli", congestion_control="cubic")
    assert case["congestion_control"] == "cubic"
    assert case["baseline"]["bytes_equal"] and case["autorec"]["bytes_equal"]
    pair = VirtualPair(AutoRecConfig(), fixed_delay(0.02), fixed_delay(0.02), congestion_control="cubic")
    assert type(pair.server._loss._cc).__name__ == "CubicCongestionControl"
    link = bench.LinkSpec(loss=0.05, loss_model="bernoulli", rtt_ms=40.0)
    spec = bench.SideSpec(link, AutoRecConfig(), 3.0, SourceConfig(fps=20, bitrate_mbps=0.2), congestion_control="x")
    with pytest.raises(ValueError, match="congestion_control must be one of reno, cubic, got 'x'"):
        bench.run_virtual_side(spec)
    with pytest.raises(SystemExit) as exit_info:
        main(["stream", "bench", "--virtual", "--congestion-control", "bbr", "--json", "out.json"])
    assert exit_info.value.code == 2
    assert "argument --congestion-control: invalid choice: 'bbr'" in capsys.readouterr().err


def test_bursts_in_time_are_recorded_and_every_byte_arrives():
    (case,) = short_cases("bursty-time")
    assert case["loss_model"] == "bursty-time" and case["burst_ms"] == bench.BURST_MS
    assert case["baseline"]["bytes_equal"] and case["autorec"]["bytes_equal"]
    model = bench.LinkSpec(loss=0.05, loss_model="bursty-time", rtt_ms=100.0).profile().loss
    assert isinstance(model, GilbertElliottTime)
    assert model.mean_loss == pytest.approx(0.05) and model.mean_burst_ms == bench.BURST_MS
    assert bench.LinkSpec(loss=0.05, loss_model="bursty", rtt_ms=100.0).burst() == {"burst_len": 3.0}
    (pooled,) = bench.pooled([case])
    assert pooled["loss_model"] == "bursty-time" and pooled["burst_ms"] == bench.BURST_MS


def test_loss_change_records_the_controller_over_time():
    result = bench.run_loss_change(
        duration_s=6.0,
        rtt_ms=100.0,
        autorec=AutoRecConfig(),
        source=SourceConfig(fps=20, bitrate_mbps=0.2),
        playout_delay_s=0.3,
        rate_mbps=20.0,
        virtual=True,
    )
    history = result["autorec"]["history"]
    assert result["loss_steps"] == [[0.0, 0.01], [2.0, 0.1], [4.0, 0.01]]
    assert len(history) >= 20 and {"t", "loss", "burst_loss", "copies", "overhead"} <= set(history[0])
    assert result["autorec"]["bytes_equal"]


def test_a_virtual_side_repeats_exactly_and_the_seed_changes_the_draw():
    def side(seed: int) -> dict:
        link = bench.LinkSpec(loss=0.1, loss_model="bernoulli", rtt_ms=40.0)
        source = SourceConfig(fps=20, bitrate_mbps=0.2)
        spec = bench.SideSpec(link, AutoRecConfig(), 3.0, source, seed=seed, virtual=True)
        result = bench.run_virtual_side(spec)
        result.pop("history")
        return result

    first = side(0)
    assert side(0) == first  # same seed, same run: the handshake has fixed sizes
    assert side(1) != first


def test_draws_repeat_each_case_and_pool_the_stall_time():
    cases = short_cases("bernoulli", seed=4, draws=2)
    assert [c["seed"] for c in cases] == [4, 5]
    assert cases[0]["autorec"]["copy_bytes_by_reason"].keys() == {"retransmission", "late", "overdue"}
    (pooled,) = bench.pooled(cases)
    assert pooled["draws"] == 2
    assert pooled["incomplete"] == {"baseline": 0, "autorec": 0}
    for side in bench.SIDES:  # the stall causes of both draws, summed; nothing cut short
        causes = pooled["stall_causes"][side]
        for cause in ("queueing", "first loss", "retransmission loss"):
            assert causes[cause]["stalls"] == sum(c[side]["stall_causes"][cause]["stalls"] for c in cases)
        assert causes["cut short"] == {"stalls": 0, "stall_s": 0}
        split = causes["first loss split"]  # the first losses, by what AutoRec did about them
        assert sum(v["stalls"] for v in split.values()) == causes["first loss"]["stalls"]
    assert pooled["stall_s"]["ratio_interval95"] is None  # two draws are too few for one
    assert pooled["retx_loss_recovery_ms_p95"]["ratio_interval95"] is None
    overheads = [c["autorec"]["overhead"] for c in cases]
    assert (pooled["overhead"]["min"], pooled["overhead"]["max"]) == (min(overheads), max(overheads))
    for side in bench.SIDES:  # stall time and every retransmission loss of both draws
        assert pooled["stall_s"][side] == round(sum(c[side]["stall_s"] for c in cases), 4)
        latencies = [v for c in cases for v in c[side]["retx_loss_recovery_ms"]]
        assert pooled["retx_loss_recovery_ms_p95"][f"n_{side}"] == len(latencies) > 0
        slow = sum(v >= 2 * cases[0]["rtt_ms"] for v in latencies)
        assert pooled["retx_loss_over_2rtt"][side] == round(slow / len(latencies), 4)
    # without copies every lost retransmission waits for another loss-detection round
    assert pooled["retx_loss_over_2rtt"]["baseline"] == 1.0


def test_the_share_over_two_rtts_counts_each_side_and_tolerates_no_losses():
    def case(base: list[float], auto: list[float]) -> dict:
        side = {"stall_s": 0.0, "overhead": 0.0, "copy_bytes": 0, "goodput_bytes": 1, "complete": True}
        return {
            "loss": 0.05,
            "loss_model": "bernoulli",
            "rtt_ms": 100.0,
            "ratios": {"retx_loss_recovery_p95": None},
            "baseline": side | {"retx_loss_recovery_ms": base},
            "autorec": side | {"retx_loss_recovery_ms": auto},
        }

    (pooled,) = bench.pooled([case([250.0, 199.9], [102.0, 126.0, 200.0]), case([310.0], [])])
    assert pooled["retx_loss_over_2rtt"] == {"baseline": round(2 / 3, 4), "autorec": round(1 / 3, 4)}
    (pooled,) = bench.pooled([case([], [])])
    assert pooled["retx_loss_over_2rtt"] == {"baseline": None, "autorec": None}


def test_the_stall_ratio_interval_resamples_whole_draws():
    def case(base: float, auto: float) -> dict:
        return {"baseline": {"stall_s": base}, "autorec": {"stall_s": auto}}

    # Every draw has the same ratio: every resample has it too.
    assert bench.stall_ratio_interval([case(1.0, 0.5), case(2.0, 1.0)] * 5) == [0.5, 0.5]
    # One draw carries all the stall: resamples without it have no baseline stall and are
    # left out; those with it give 0.5.
    assert bench.stall_ratio_interval([case(2.0, 1.0)] + [case(0.0, 0.0)] * 9) == [0.5, 0.5]
    lo, hi = bench.stall_ratio_interval([case(1.0, 0.2), case(1.0, 1.0), case(1.0, 0.6), case(1.0, 0.4)] * 3)
    assert 0.2 < lo < 0.55 < hi < 1.0
    assert bench.stall_ratio_interval([case(1.0, 0.5)] * 9) is None  # too few draws for an interval


def test_the_p95_ratio_interval_resamples_whole_draws_and_sees_the_cliff():
    def case(base: list[float], auto: list[float]) -> dict:
        return {"baseline": {"retx_loss_recovery_ms": base}, "autorec": {"retx_loss_recovery_ms": auto}}

    # 19 draws whose lost retransmissions came through a copy in one RTT and one whose two took
    # another round: the pooled p95 is on the copy path, but resamples holding that draw twice or
    # more have over 5 % of their losses past the cliff, so the interval reaches across it.
    fast = [case([300.0, 300.0], [100.0, 100.0])] * 19
    lo, hi = bench.p95_ratio_interval([*fast, case([300.0, 300.0], [250.0, 250.0])])
    assert lo == round(100 / 300, 3) and hi > 0.5
    assert bench.p95_ratio_interval(fast[:9]) is None  # too few draws for an interval
    # draws without lost retransmissions on a side leave only resamples that have some
    assert bench.p95_ratio_interval([case([], [])] * 9 + [case([300.0], [150.0])]) == [0.5, 0.5]


def test_wrong_bytes_are_an_error_and_a_stream_cut_short_is_not():
    def side(complete: bool, bytes_equal: bool, prefix_equal: bool) -> dict:
        return {"complete": complete, "bytes_equal": bytes_equal, "prefix_equal": prefix_equal}

    assert bench.wrong_bytes(side(True, True, True)) is None
    assert bench.wrong_bytes(side(False, False, True)) is None  # the link cut it short
    assert bench.wrong_bytes(side(True, False, False)) == "the stream ended with other bytes than were sent"
    assert "not the start of the stream" in bench.wrong_bytes(side(False, False, False))
    case = {"loss": 0.05, "loss_model": "bursty", "rtt_ms": 100.0, "seed": 7}
    cases = [case | {"baseline": side(False, False, True), "autorec": side(True, False, True)}]
    assert bench.bad_streams(cases) == [
        "loss 0.05 bursty rtt 100 ms seed 7 autorec: the stream ended with other bytes than were sent"
    ]


def test_pool_reads_bench_files_and_refuses_others(tmp_path, capsys):
    cases = short_cases("bernoulli", seed=4, draws=2)
    good, bad = tmp_path / "cases.json", tmp_path / "other.json"
    bench.write_json(good, cases)
    bad.write_text('{"loss": 0.05}')
    assert main(["stream", "pool", str(good), "--json", str(tmp_path / "pooled.json")]) == 0
    out = capsys.readouterr().out
    assert "pooled over 2 draws, loss 0.05 bernoulli rtt 40 ms" in out
    assert "100.0% / " in out and "took >= 2 RTT" in out  # the baseline's lost retransmissions all did
    pooled = json.loads((tmp_path / "pooled.json").read_text())
    assert pooled == {str(good): bench.pooled(cases)}
    assert main(["stream", "pool", str(bad)]) == 2
    assert "not the case list" in capsys.readouterr().err
    # a file from before `complete` was recorded still pools
    older = [c | {side: {k: v for k, v in c[side].items() if k != "complete"} for side in bench.SIDES} for c in cases]
    bench.write_json(good, older)
    assert main(["stream", "pool", str(good)]) == 0
    assert "cut short: not recorded (an older file)" in capsys.readouterr().out
    assert main(["stream", "pool", str(tmp_path / "missing.json")]) == 2
    bad.write_text("[]")
    assert main(["stream", "pool", str(bad)]) == 2
    bad.write_text('[{"baseline": {}}]')
    assert main(["stream", "pool", str(bad)]) == 2
    assert "a case lacks 'loss'" in capsys.readouterr().err
    bad.write_bytes(bytes(range(256)))
    assert main(["stream", "pool", str(bad)]) == 2


def test_pool_together_pools_runs_of_one_condition_and_refuses_mixed_ones(tmp_path, capsys):
    def stub(seed: int, **settings) -> dict:
        side = {"stall_s": 1.0 + seed, "overhead": 0.05, "copy_bytes": 5, "goodput_bytes": 100, "complete": True}
        return {
            "loss": 0.05,
            "loss_model": "bernoulli",
            "rtt_ms": 100.0,
            "seed": seed,
            "duration_s": 60.0,
            "ratios": {"retx_loss_recovery_p95": None},
            "baseline": side | {"retx_loss_recovery_ms": [300.0]},
            "autorec": side | {"stall_s": 0.5, "retx_loss_recovery_ms": [102.0]},
        } | settings

    first, second, other = (tmp_path / f"{n}.json" for n in ("first", "second", "other"))
    bench.write_json(first, [stub(s) for s in range(10)])
    # recorded NewReno is the same condition as a file from before the controller was recorded
    bench.write_json(second, [stub(s, congestion_control="reno") for s in range(10, 20)])
    out_json = tmp_path / "together.json"
    assert main(["stream", "pool", "--together", str(first), str(second), "--json", str(out_json)]) == 0
    assert "pooled over 20 draws" in capsys.readouterr().out
    (pooled,) = json.loads(out_json.read_text())["together"]
    assert pooled["stall_s"]["baseline"] == sum(1.0 + s for s in range(20)) and pooled["stall_s"]["autorec"] == 10.0
    assert pooled["retx_loss_recovery_ms_p95"]["n_autorec"] == 20
    assert pooled["stall_s"]["ratio_interval95"] is not None
    # every draw's lost retransmission took 102 ms against the baseline's 300: so does every resample
    assert pooled["retx_loss_recovery_ms_p95"]["ratio_interval95"] == [0.34, 0.34]
    # another controller, or the same draw twice, is not one sample
    bench.write_json(other, [stub(s, congestion_control="cubic") for s in range(20, 30)])
    assert main(["stream", "pool", "--together", str(first), str(other)]) == 2
    assert "different congestion_control" in capsys.readouterr().err
    assert main(["stream", "pool", "--together", str(first), str(first)]) == 2
    assert "both hold seed 0" in capsys.readouterr().err
    # without --together each file is pooled on its own, so a mix is fine there
    assert main(["stream", "pool", str(first), str(other)]) == 0
    bench.write_json(other, [{"baseline": {}}])
    assert main(["stream", "pool", "--together", str(first), str(other)]) == 2
    assert "a case lacks 'loss'" in capsys.readouterr().err


def test_the_virtual_run_records_copies_and_late_flags_for_attribution():
    def side(autorec):
        link = bench.LinkSpec(loss=0.1, loss_model="bernoulli", rtt_ms=100.0)
        spec = bench.SideSpec(link, autorec, 6.0, SourceConfig(fps=30, bitrate_mbps=0.3), seed=2, virtual=True)
        down = Link(spec.data_path(), seed=f"{spec.seed}/downlink")
        downlink = lambda now, data, frames: down.send(now, len(data))  # noqa: E731
        pair = VirtualPair(autorec, downlink=downlink, uplink=fixed_delay(0.05))
        pair.handshake()
        stream_live(pair, LiveSource(spec.source), spec.duration_s, spec.playout_delay_s)
        return pair

    autorec, baseline = side(AutoRecConfig(viewer_buffer_ms=0)), side(None)
    kinds = {t.kind for t in autorec.transmissions}
    assert kinds == {"first", "retransmission", "copy"} and autorec.server.controller.late_flags
    assert {t.kind for t in baseline.transmissions} == {"first", "retransmission"}
