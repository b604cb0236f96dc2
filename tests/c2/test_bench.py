"""The benchmark runs end to end (marked ``bench``: ``make bench``, not ``make test``)."""

from __future__ import annotations

import asyncio
import json

import pytest

from edgecloud.cli import main


@pytest.mark.bench
def test_bench_writes_report_and_plot_for_both_profiles(tmp_path, capsys):
    out = tmp_path / "c2.json"
    assert main(["c2", "bench", "--json", str(out), "--commands", "30", "--radio-commands", "10"]) == 0
    report = json.loads(out.read_text())
    assert set(report["profiles"]) == {"wifi", "tactical-radio"}
    for result in report["profiles"].values():
        assert result["baseline_rtt"]["n"] + result["baseline_rtt"]["lost"] == result["commands"]
        assert result["nc2s_rtt"]["n"] + result["nc2s_rtt"]["lost"] == result["commands"]
        assert result["key_renewal"]["n"] == 5 and result["handover"]["n"] == 4
        assert result["goal"]["no_commands_lost_across_renewals_and_handovers"]
    assert out.with_suffix(".png").stat().st_size > 0


def test_unknown_profile_is_named(capsys):
    from edgecloud.c2.bench import run_bench

    with pytest.raises(ValueError, match=r"profiles \['moon'\]: known are"):
        asyncio.run(run_bench(["moon"]))
