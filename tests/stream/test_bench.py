"""The AutoRec benchmark behind docs/stream.md (``make bench``, not in ``make test``).

Each run is the documented ``edgecloud stream bench`` command line and writes the file the
docs cite, under docs/data/ (and the figure under docs/), so ``make bench`` regenerates
every AutoRec number in the docs; ``make bench ARGS="-k key60x100"`` just one of them.
Virtual runs repeat exactly; real runs carry the machine's scheduling noise.

Nothing here asserts timing or a result. The command fails only when a stream that
finished carried other bytes than were sent; a stream the emulated link cut short (an
outage longer than aioquic's idle timeout or the virtual run's drain) is a result, its
frozen rest counted as stall.

The ``*_previous`` files in docs/data come from the same commands at the commit before
the change they are compared with (named in docs/stream.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecloud.cli import main

DOCS = Path(__file__).resolve().parents[2] / "docs"

KEY = ["--virtual", "--loss", "0.05", "--rtt-ms", "100"]
ALL_LOSSES = ["--loss", "0,0.01,0.05,0.1"]

# name -> (arguments, plot?): docs/data/stream_bench_<name>.json, docs/stream_bench_<name>.png
RUNS = {
    # the acceptance case, pooled over draws
    "virtual_key60x100": ([*KEY, "--loss-model", "bernoulli,bursty", "--duration", "60", "--draws", "100"], False),
    "virtual_key600x10": ([*KEY, "--loss-model", "bernoulli,bursty", "--duration", "600", "--draws", "10"], False),
    # what each part brings (independent loss)
    "virtual_key60x100_noearly": (
        [*KEY, "--loss-model", "bernoulli", "--duration", "60", "--draws", "100", "--no-retransmit-before-reduction"],
        False,
    ),
    "virtual_key60x100_nolate": (
        [*KEY, "--loss-model", "bernoulli", "--duration", "60", "--draws", "100", "--no-late-copies"],
        False,
    ),
    "virtual_key60x100_budget02": (
        [*KEY, "--loss-model", "bernoulli", "--duration", "60", "--draws", "100", "--overhead-budget", "0.2"],
        False,
    ),
    # every case
    "virtual_120s": (["--virtual", *ALL_LOSSES, "--duration", "120", "--draws", "5"], True),
    "real_60s": ([*ALL_LOSSES, "--duration", "60"], True),
}

# name -> arguments: docs/data/stream_<name>.json; figure docs/stream_<figure>.png
LOSS_CHANGE = {
    "loss_change_virtual": (["--virtual", "--duration", "120"], "loss_change_virtual"),
    "loss_change_real": (["--duration", "60"], "loss_change"),
}


@pytest.mark.bench
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("name", RUNS)
def test_stream_bench(name):
    args, plot = RUNS[name]
    out = DOCS / "data" / f"stream_bench_{name}.json"
    figure = ["--plot", str(DOCS / f"stream_bench_{name}.png")] if plot else []
    assert main(["stream", "bench", *args, "--json", str(out), *figure]) == 0
    cases = json.loads(out.read_text())
    assert cases and all(case["autorec_config"] for case in cases)


@pytest.mark.bench
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("name", LOSS_CHANGE)
def test_stream_loss_change(name):
    args, figure = LOSS_CHANGE[name]
    out = DOCS / "data" / f"stream_{name}.json"
    argv = ["stream", "bench", "--loss-change", "--rtt-ms", "100", *args, "--json", str(out)]
    assert main([*argv, "--plot", str(DOCS / f"stream_{figure}.png")]) == 0
    assert json.loads(out.read_text())["autorec"]["bytes_equal"]
