"""The benchmark runs end to end (marked ``bench``: ``make bench``, not ``make test``).

``documented`` is the run behind docs/c2.md (``edgecloud c2 bench`` with its default command
counts); ``quick`` is ``make bench-quick``'s headline, fewer commands. Both write
``OUT/c2/c2-bench[-quick].json`` and the plot beside it (``make bench OUT=DIR``, default out/).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from edgecloud.cli import main


@pytest.mark.bench
@pytest.mark.parametrize(
    ("name", "counts"),
    [
        ("c2-bench", []),  # the defaults: 200 commands on wifi, 100 on tactical radio
        pytest.param("c2-bench-quick", ["--commands", "30", "--radio-commands", "10"], marks=pytest.mark.bench_quick),
    ],
    ids=["documented", "quick"],
)
def test_bench_writes_report_and_plot_for_both_profiles(name, counts, bench_out):
    out = bench_out / "c2" / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    assert main(["c2", "bench", "--json", str(out), *counts]) == 0
    report = json.loads(out.read_text())
    assert set(report["profiles"]) == {"wifi", "tactical-radio"}
    for result in report["profiles"].values():
        assert result["baseline_rtt"]["n"] + result["baseline_rtt"]["lost"] == result["commands"]
        assert result["nc2s_rtt"]["n"] + result["nc2s_rtt"]["lost"] == result["commands"]
        assert result["key_renewal"]["n"] == 5 and result["handover"]["n"] == 4
        assert result["goal"]["no_commands_lost_across_renewals_and_handovers"]
    assert out.with_suffix(".png").stat().st_size > 0
    for name, result in report["profiles"].items():
        print(f"HEADLINE c2: NC2S on {name}: median command RTT {result['baseline_rtt']['p50_ms']:.2f} -> "
              f"{result['nc2s_rtt']['p50_ms']:.2f} ms (+{result['median_rtt_added_ms']:.2f} ms), "
              f"{result['commands']} commands; lost across {result['key_renewal']['n']} key renewals and "
              f"{result['handover']['n']} handovers: "
              f"{result['key_renewal']['commands_lost'] + result['handover']['commands_lost']}")


def test_unknown_profile_is_named(capsys):
    from edgecloud.c2.bench import run_bench

    with pytest.raises(ValueError, match=r"profiles \['moon'\]: known are"):
        asyncio.run(run_bench(["moon"]))
