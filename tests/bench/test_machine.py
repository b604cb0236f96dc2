"""The machine record every benchmark prints and writes: CPU, load at start and end, and the
verdict on whether other work distorted the figures."""

from __future__ import annotations

import io
import json
import multiprocessing
import time

import pytest

from edgecloud.bench.machine import (
    NICED_SHARE_LIMIT,
    OTHERS_SHARE_LIMIT,
    LoadWatch,
    MachineLoad,
    MachineSample,
    cpu_model,
    sample,
)


def at(t: float, busy: float, own: float, niced: float = 0.0, load: float = 0.5) -> MachineSample:
    return MachineSample("2026-01-01T00:00:00", t, (load, load, load), busy, niced, own)


def run(start: MachineSample, end: MachineSample, **kwargs: bool) -> MachineLoad:
    return MachineLoad("Test CPU", 2, start, end, kwargs.get("self_contained", True), kwargs.get("timed", True))


def test_other_processes_share_is_busy_time_less_our_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("edgecloud.bench.machine._niced", lambda: False)
    # 10 s on 2 CPUs = 20 CPU-s; the machine was busy 12 s, 8 of them ours: others used 4 s = 20%
    quiet = run(at(0, 100, 1), at(10, 112, 9))
    assert quiet.others_share == pytest.approx(0.2) and not quiet.busy and quiet.warning() is None
    loaded = run(at(0, 100, 1), at(10, 114, 9))  # others 6 s = 30%
    assert loaded.others_share == pytest.approx(0.3) and loaded.busy
    assert loaded.warning() == (
        "warning: the machine was busy: other processes used 30% of its CPU time during the run (limit 25%); "
        "these timings are distorted: rerun on a quiet machine, or label them as taken under load"
    )
    niced = run(at(0, 100, 1, niced=0), at(10, 108, 9, niced=11))  # niced 11 s = 55%
    assert niced.others_share == 0 and niced.niced_share == pytest.approx(0.55) and niced.busy
    assert OTHERS_SHARE_LIMIT < NICED_SHARE_LIMIT


def test_a_virtual_clock_is_never_busy_and_without_proc_stat_the_start_load_decides() -> None:
    loaded = (at(0, 100, 1), at(10, 120, 2))
    assert run(*loaded).busy and not run(*loaded, timed=False).busy
    assert "virtual clock: the figures do not depend on the load" in run(*loaded, timed=False).end_line()
    # bench serve: the server under test may be on this machine, so only the load at the start counts
    calm = run(at(0, 100, 1, load=1.5), at(10, 120, 2, load=6.0), self_contained=False)
    assert calm.others_share is None and not calm.busy
    busy = run(at(0, 100, 1, load=2.4), at(10, 120, 2), self_contained=False)
    assert busy.busy_reason() == "its load average was 2.40 on 2 CPUs when the run started"


def _burn(cpu_s: float) -> None:
    while time.process_time() < cpu_s:
        pass


def test_a_watch_counts_its_children_as_its_own_and_prints_both_ends() -> None:
    out = io.StringIO()
    watch = LoadWatch.begin(out=out)
    child = multiprocessing.get_context("fork").Process(target=_burn, args=(0.3,))
    child.start()
    child.join()
    load = watch.finish()
    assert load.end.own_cpu_s - load.start.own_cpu_s >= 0.25  # the child's CPU time, reaped
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(f"machine: {cpu_model()}, ") and "load average" in lines[0]
    assert lines[1].startswith("machine: load average ") and "at the end, after" in lines[1]
    assert len(lines) == 2 + load.busy
    record = json.loads(json.dumps(load.as_dict()))
    assert record["cpu"] == cpu_model() and record["busy"] == load.busy
    assert set(record["start"]) == {"time", "monotonic_s", "load_average", "busy_s", "niced_busy_s", "own_cpu_s"}


def test_a_sample_reads_this_machine() -> None:
    now = sample()
    assert len(now.load_average) == 3 and now.own_cpu_s > 0
    assert now.busy_s is None or now.busy_s > 0
