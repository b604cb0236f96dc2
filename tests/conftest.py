"""Suite-wide settings: the hypothesis profile, where benchmarks write, and ``make bench-quick``.

Hypothesis runs every property test with the ``edgecloud`` profile: derandomized (each test's
examples are drawn from a seed derived from the test's own code, so every run of ``make test``
tries the same examples), no example database, and no deadline — no unit test asserts timing
(ARCHITECTURE.md), and a shared 2-core machine makes per-example deadlines flaky. To look for
new counterexamples, ``pytest --hypothesis-profile=explore --hypothesis-seed=N`` draws fresh
examples from seed ``N``; a failure prints the ``@reproduce_failure`` blob that replays it.

Benchmarks (``@pytest.mark.bench``, run by ``make bench``) write their JSON and figures under
``$EDGECLOUD_BENCH_OUT`` (``make bench OUT=DIR``; default ``out``, which git ignores), one folder
per system, never into the tracked tree. ``make bench-quick`` runs the tests marked ``bench_quick``: one headline
figure per system. A test whose directory is being rewritten is listed in :data:`BENCH_QUICK`
by node id instead of being decorated; either way it gets the marker.

Every test starts from the same process-wide state as when it runs alone, whatever ran before it
(:func:`same_process_state_for_every_test`): the global random generators seeded, torch's thread
count put back after the test.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# Triton (a dev dependency) runs PAT's kernel tests in its CPU interpreter. It reads this when it
# builds a kernel, its own library's included, and those it builds when first imported — which torch
# may do while test modules are collected (torch.utils.flop_counter imports it). So it is set here,
# before any test module is imported, unless the caller chose (TRITON_INTERPRET=0: compiled kernels,
# and the interpreter tests skip). No test runs Triton on a GPU: scripts/gpu_check_pat.py does.
os.environ.setdefault("TRITON_INTERPRET", "1")

settings.register_profile(
    "edgecloud",
    derandomize=True,  # implies database=None
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],  # a timing check: it fails on a loaded machine
)
settings.register_profile("explore", settings.get_profile("edgecloud"), derandomize=False, database=None)
settings.load_profile("edgecloud")  # `pytest --hypothesis-profile=NAME` overrides it

# Benchmarks that give a system's headline figure in `make bench-quick`, for tests in directories
# whose owners have not decorated them with @pytest.mark.bench_quick. Add a node id here or the
# decorator there (docs/testing.md lists every system's quick benchmark and the measured total).
BENCH_QUICK = (
    # the server: 500-request Azure replay, client TTFT/TPOT against the server's /metrics (~1 min)
    "tests/server/test_bench_agreement.py::test_azure_replay_500_requests_agrees_with_server_metrics",
)

# Every benchmark may run for $EDGECLOUD_BENCH_TIMEOUT seconds (`make bench BENCH_TIMEOUT=N`; default
# 3600) however it is started: the suite's 300 s per-test timeout is for unit tests, and a loaded
# machine stretches a benchmark several times over. This one place replaces per-test timeout markers.
BENCH_TIMEOUT_S = float(os.environ.get("EDGECLOUD_BENCH_TIMEOUT", "3600"))


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid in BENCH_QUICK:
            item.add_marker(pytest.mark.bench_quick)
        if item.get_closest_marker("bench") is not None:
            item.add_marker(pytest.mark.timeout(BENCH_TIMEOUT_S), append=False)  # first: it wins


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The ``HEADLINE`` line each benchmark prints (one per system in ``make bench-quick``), together
    at the end, in the order the benchmarks ran."""
    lines = [line for status in ("passed", "failed") for report in terminalreporter.stats.get(status, [])
             if report.when == "call" for line in report.capstdout.splitlines() if line.startswith("HEADLINE ")]
    if lines:
        terminalreporter.write_sep("=", "benchmark headlines")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def bench_out(pytestconfig: pytest.Config) -> Path:
    """The benchmarks' output folder, ``$EDGECLOUD_BENCH_OUT`` (default ``out``; relative to the
    repository), created on first use."""
    path = Path(os.environ.get("EDGECLOUD_BENCH_OUT", "out"))
    if not path.is_absolute():
        path = pytestconfig.rootpath / path
    path.mkdir(parents=True, exist_ok=True)
    return path


# The seed of the global random generators before each test when pytest-randomly is off (`make test`).
TEST_SEED = 0


@pytest.fixture(autouse=True)
def same_process_state_for_every_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test sees the same process-wide state alone and after any other test.

    torch's global generator is seeded before each test (a module's weights are initialised from it,
    and an unseeded ``torch.randn`` draws from it); so are ``random`` and numpy's, unless
    pytest-randomly is on (``make test-random``), which reseeds those itself and whose seed is then
    used for torch too. torch's thread count is put back after the test: tests, and the engine core
    running in a thread, set it for the whole process, and a float reduction's rounding can depend on it.
    Only modules already imported are touched (every test module is imported before the first test runs).
    """
    randomly = request.config.pluginmanager.hasplugin("randomly")
    seed = int(request.config.option.randomly_seed) if randomly else TEST_SEED
    if not randomly:
        random.seed(seed)
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed(seed)
    torch = sys.modules.get("torch")
    threads = None
    if torch is not None:
        torch.manual_seed(seed)
        threads = torch.get_num_threads()
    yield
    if torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


RAY_MEMORY_MONITOR = "RAY_memory_monitor_refresh_ms"  # Ray spells it so


@contextlib.contextmanager
def local_ray_cluster(num_cpus: int) -> Iterator[None]:
    """This process's own local Ray cluster (never `ray stop`), for the Ray backend's tests.

    Without Ray's memory monitor: it kills workers when the *machine* is nearly full, which on a
    shared test machine is other processes' memory (it killed the cluster test's actors at 23.3 of
    23.5 GB). Ray reads the variable when it starts its processes; it is put back afterwards, so no
    later test inherits it."""
    ray = importlib.import_module("ray")
    with pytest.MonkeyPatch.context() as env:
        env.setenv(RAY_MEMORY_MONITOR, os.environ.get(RAY_MEMORY_MONITOR, "0"))
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        except Exception as error:  # e.g. no shared memory in a sandbox
            pytest.fail(f"Ray did not start (ray is a dev dependency; the Ray backend is part of the suite): {error}")
        try:
            yield
        finally:
            ray.shutdown()
