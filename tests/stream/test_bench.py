"""The AutoRec benchmark behind docs/stream.md (``make bench``, not in ``make test``).

Each run is the documented ``edgecloud stream bench`` command line. It writes the file the docs
cite under the same name, but into ``OUT/stream/`` (``make bench OUT=DIR``, default
``out``; see tests/conftest.py), never into the tracked tree: ``make bench ARGS="-k stream"``
reruns them all, ``make bench ARGS="-k acceptance_60s"`` one (the test ids are below); to
refresh the docs, copy the ``.json`` files to docs/data/ and the ``.png`` files to docs/.
Virtual runs repeat exactly; real runs carry the machine's scheduling noise.
``quick_acceptance_60s`` is ``make bench-quick``'s headline: the acceptance case, 30 draws.

Nothing here asserts timing or a result. A run fails only when a stream carried wrong
bytes; a stream the emulated link cut short (an outage longer than aioquic's idle timeout
or the virtual run's drain) is a result, its frozen rest counted as stall.

Not regenerated here: the ``*_previous`` files, which are the acceptance runs with the
previous round's controller (docs/stream.md gives the commands), and
``stream_bench_real_key60_ackloss.json``, an earlier run kept for its description.
"""

from __future__ import annotations

import json

import pytest

from edgecloud.cli import main

KEY = ["--virtual", "--loss", "0.05", "--rtt-ms", "100"]
KEY60 = [*KEY, "--duration", "60", "--draws", "100"]
KEY60_INDEPENDENT = [*KEY60, "--loss-model", "bernoulli"]
KEY60_CUBIC = [*KEY60_INDEPENDENT, "--congestion-control", "cubic"]
KEY600_INDEPENDENT = [*KEY, "--duration", "600", "--draws", "10", "--loss-model", "bernoulli"]
ALL_LOSSES = ["--loss", "0,0.01,0.05,0.1"]
REAL_KEY60 = ["--loss", "0.05", "--rtt-ms", "100", "--duration", "60", "--draws", "10"]
REAL_KEY60_INDEPENDENT = [*REAL_KEY60, "--loss-model", "bernoulli"]

# test id -> (file name, arguments, plot?): OUT/stream/stream_bench_<name>.json and, with a
# plot, OUT/stream/stream_bench_<name>.png (docs/data/ and docs/ hold the committed ones)
RUNS = {
    # make bench-quick's headline: the acceptance case, independent loss, 30 draws (~1.5 min)
    "quick_acceptance_60s": ("virtual_key60x30", [*KEY, "--duration", "60", "--draws", "30",
                                                  "--loss-model", "bernoulli"], False),
    # the acceptance case (5 %, 100 ms), pooled over draws
    "acceptance_60s": ("virtual_key60x100", [*KEY60, "--loss-model", "bernoulli,bursty"], False),
    "acceptance_600s": (
        "virtual_key600x10",
        [*KEY, "--loss-model", "bernoulli,bursty", "--duration", "600", "--draws", "10"],
        False,
    ),
    # a second set of 100 draws (seeds 100-199) of the acceptance case, independent loss
    "second_draws_60s": ("virtual_key60x100_seed100", [*KEY60_INDEPENDENT, "--seed", "100"], False),
    # bursts in time rather than in packets (netem's GilbertElliottTime, 60 ms)
    "bursty_time_60s": ("virtual_key60x100_burstytime", [*KEY60, "--loss-model", "bursty-time"], False),
    "bursty_time_60s_plan": (
        "virtual_key60x100_burstytime_plan",
        [*KEY60, "--loss-model", "bursty-time", "--copy-plan"],
        False,
    ),
    # what each part brings, with independent loss
    "ablation_noearly": ("virtual_key60x100_noearly", [*KEY60_INDEPENDENT, "--no-retransmit-before-reduction"], False),
    "ablation_nolate": ("virtual_key60x100_nolate", [*KEY60_INDEPENDENT, "--no-late-copies"], False),
    "ablation_nolate_second_draws": (
        "virtual_key60x100_seed100_nolate",
        [*KEY60_INDEPENDENT, "--seed", "100", "--no-late-copies"],
        False,
    ),
    "ablation_nolate_third_draws": (
        "virtual_key60x100_seed200_nolate",
        [*KEY60_INDEPENDENT, "--seed", "200", "--no-late-copies"],
        False,
    ),
    "ablation_budget015": ("virtual_key60x100_budget015", [*KEY60_INDEPENDENT, "--overhead-budget", "0.15"], False),
    "ablation_budget02": ("virtual_key60x100_budget02", [*KEY60_INDEPENDENT, "--overhead-budget", "0.2"], False),
    "ablation_budget03": ("virtual_key60x100_budget03", [*KEY60_INDEPENDENT, "--overhead-budget", "0.3"], False),
    # the two lower budgets on the second and third sets of draws too
    **{
        f"ablation_budget{tag}_{label}_draws": (
            f"virtual_key60x100_seed{seed}_budget{tag}",
            [*KEY60_INDEPENDENT, "--seed", str(seed), "--overhead-budget", budget],
            False,
        )
        for tag, budget in (("015", "0.15"), ("02", "0.2"))
        for label, seed in (("second", 100), ("third", 200))
    },
    # a third set (seeds 200-299)
    "third_draws_60s": ("virtual_key60x100_seed200", [*KEY60_INDEPENDENT, "--seed", "200"], False),
    # the earlier default: one packet of credit kept for a retransmission's first copies
    "reserve1_60s": ("virtual_key60x100_reserve1", [*KEY60_INDEPENDENT, "--first-copy-reserve", "1"], False),
    "reserve1_second_draws_60s": (
        "virtual_key60x100_seed100_reserve1",
        [*KEY60_INDEPENDENT, "--seed", "100", "--first-copy-reserve", "1"],
        False,
    ),
    "reserve1_third_draws_60s": (
        "virtual_key60x100_seed200_reserve1",
        [*KEY60_INDEPENDENT, "--seed", "200", "--first-copy-reserve", "1"],
        False,
    ),
    "reserve1_600s": ("virtual_key600x10_reserve1", [*KEY600_INDEPENDENT, "--first-copy-reserve", "1"], False),
    "budget600_015": ("virtual_key600x10_budget015", [*KEY600_INDEPENDENT, "--overhead-budget", "0.15"], False),
    "budget600_02": ("virtual_key600x10_budget02", [*KEY600_INDEPENDENT, "--overhead-budget", "0.2"], False),
    "budget600_03": ("virtual_key600x10_budget03", [*KEY600_INDEPENDENT, "--overhead-budget", "0.3"], False),
    # both sides on aioquic's CUBIC instead of its default NewReno
    "cubic_60s": (
        "virtual_key60x100_cubic",
        [*KEY60, "--loss-model", "bernoulli,bursty", "--congestion-control", "cubic"],
        False,
    ),
    "cubic_second_draws_60s": ("virtual_key60x100_seed100_cubic", [*KEY60_CUBIC, "--seed", "100"], False),
    "cubic_third_draws_60s": ("virtual_key60x100_seed200_cubic", [*KEY60_CUBIC, "--seed", "200"], False),
    "cubic_600s": ("virtual_key600x10_cubic", [*KEY600_INDEPENDENT, "--congestion-control", "cubic"], False),
    "cubic_bursty_time_60s": (
        "virtual_key60x100_burstytime_cubic",
        [*KEY60, "--loss-model", "bursty-time", "--congestion-control", "cubic"],
        False,
    ),
    # the acceptance case on the real clock, in runs of ten draws (one draw says little)
    "real_key60": ("real_key60x10", REAL_KEY60_INDEPENDENT, False),
    "real_key60_second_draws": ("real_key60x10_seed10", [*REAL_KEY60_INDEPENDENT, "--seed", "10"], False),
    "real_key60_third_draws": ("real_key60x10_seed20", [*REAL_KEY60_INDEPENDENT, "--seed", "20"], False),
    "real_key60_fourth_draws": ("real_key60x10_seed30", [*REAL_KEY60_INDEPENDENT, "--seed", "30"], False),
    "real_key60_bursty": ("real_key60x10_bursty", [*REAL_KEY60, "--loss-model", "bursty"], False),
    "real_key60_cubic": ("real_key60x10_cubic", [*REAL_KEY60_INDEPENDENT, "--congestion-control", "cubic"], False),
    "real_key60_cubic_second_draws": (
        "real_key60x10_cubic_seed10",
        [*REAL_KEY60_INDEPENDENT, "--congestion-control", "cubic", "--seed", "10"],
        False,
    ),
    "real_key60_budget015": ("real_key60x10_budget015", [*REAL_KEY60_INDEPENDENT, "--overhead-budget", "0.15"], False),
    # every case
    "all_cases_virtual": ("virtual_120s", ["--virtual", *ALL_LOSSES, "--duration", "120", "--draws", "5"], True),
    "all_cases_real": ("real_60s", [*ALL_LOSSES, "--duration", "60"], True),
}

# test id -> (arguments, figure): OUT/stream/stream_<id>.json and OUT/stream/stream_<figure>.png
LOSS_CHANGE = {
    "loss_change_virtual": (["--virtual", "--duration", "120"], "loss_change_virtual"),
    "loss_change_virtual_cubic": (
        ["--virtual", "--duration", "120", "--congestion-control", "cubic"],
        "loss_change_virtual_cubic",
    ),
    "loss_change_real": (["--duration", "60"], "loss_change"),
}


QUICK = {"quick_acceptance_60s"}


@pytest.mark.bench
@pytest.mark.parametrize(
    "test_id", [pytest.param(i, marks=pytest.mark.bench_quick) if i in QUICK else i for i in RUNS]
)
def test_stream_bench(test_id, bench_out):
    name, args, plot = RUNS[test_id]
    out = bench_out / "stream" / f"stream_bench_{name}.json"
    out.parent.mkdir(exist_ok=True)
    figure = ["--plot", str(out.with_suffix(".png"))] if plot else []
    assert main(["stream", "bench", *args, "--json", str(out), *figure]) == 0
    cases = json.loads(out.read_text())
    assert cases and all(case["autorec_config"] for case in cases)
    if test_id in QUICK:  # the headline: AutoRec's pooled draws against aioquic's own recovery
        from edgecloud.stream.bench import pooled

        for case in pooled(cases):
            retx, stall = case["retx_loss_recovery_ms_p95"], case["stall_s"]
            print(f"HEADLINE stream: AutoRec, {case['loss']:.0%} {case['loss_model']} loss, {case['rtt_ms']:g} ms RTT, "
                  f"{case['draws']} draws pooled ({cases[0]['clock']} clock): retransmission-loss p95 "
                  f"x{retx['ratio']} {retx['ratio_interval95']} of aioquic's, stall time x{stall['ratio']} "
                  f"{stall['ratio_interval95']}, overhead {case['overhead']['all']:.1%}")


@pytest.mark.bench
@pytest.mark.parametrize("test_id", LOSS_CHANGE)
def test_stream_loss_change(test_id, bench_out):
    args, figure = LOSS_CHANGE[test_id]
    out = bench_out / "stream" / f"stream_{test_id}.json"
    out.parent.mkdir(exist_ok=True)
    argv = ["stream", "bench", "--loss-change", "--rtt-ms", "100", *args, "--json", str(out)]
    assert main([*argv, "--plot", str(out.parent / f"stream_{figure}.png")]) == 0
