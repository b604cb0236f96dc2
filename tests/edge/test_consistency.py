"""Session guarantees over randomized roaming schedules (hypothesis): clients move between the nodes
of an edge whose links delay and reorder every message, two clients write to one session at once,
nodes crash (for good, or to come back with their store). The checker judges what clients saw:
no read misses the client's own acknowledged turns or a turn an earlier read saw, no acknowledged
turn is lost, and every node ends with the same order."""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecloud.edge.virtual import ClientPlan, Crash, Scenario, run_scenario


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    nodes = draw(st.integers(3, 5))
    delay = st.floats(0.001, 0.12)
    links = tuple(sorted((lo, lo + extra)) for lo, extra in draw(
        st.lists(st.tuples(delay, st.floats(0, 0.08)), min_size=nodes * nodes, max_size=nodes * nodes)))
    op = st.tuples(st.integers(0, nodes - 1), st.sampled_from(["turn", "turn", "read"]), st.floats(0, 0.3))
    clients = []
    for i in range(draw(st.integers(1, 4))):
        session = "shared" if i < 2 and draw(st.booleans()) else f"s{i}"
        clients.append(ClientPlan(session, tuple(draw(st.lists(op, min_size=1, max_size=8)))))
    # At most N - W nodes die for good (what a majority quorum tolerates); others come back.
    tolerated = nodes - (nodes // 2 + 1)
    crashes = tuple(draw(st.lists(st.builds(
        Crash, st.floats(0, 2.0), st.integers(0, nodes - 1), st.one_of(st.none(), st.floats(0.1, 3.0))),
        max_size=2)))
    while sum(c.down_s is None for c in crashes) > tolerated:
        first = next(i for i, c in enumerate(crashes) if c.down_s is None)
        crashes = (*crashes[:first], dataclasses.replace(crashes[first], down_s=1.0), *crashes[first + 1:])
    return Scenario(nodes=nodes, link_delay_s=tuple(links), clients=tuple(clients), crashes=crashes,
                    generate_s=draw(st.floats(0.001, 0.2)), seed=draw(st.integers(0, 2**16)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_no_stale_read_no_lost_turn_no_divergence(scenario: Scenario) -> None:
    outcome = run_scenario(scenario)
    assert outcome.checker.violations == [], outcome.checker.violations[:3]
    assert outcome.checker.reads >= outcome.acked


def test_the_checker_catches_a_node_that_answers_without_waiting() -> None:
    """The same schedules with nodes that answer at once from whatever they hold are caught."""
    from edgecloud.edge import replication
    from edgecloud.edge.virtual import random_scenario

    original = replication.SessionLog.covers
    replication.SessionLog.covers = lambda self, want: True  # type: ignore[method-assign]
    try:
        import random

        kinds = set()
        for seed in range(40):
            kinds |= {v.kind for v in run_scenario(random_scenario(random.Random(seed))).checker.violations}
    finally:
        replication.SessionLog.covers = original  # type: ignore[method-assign]
    assert {"read_your_writes", "monotonic_reads"} <= kinds


def test_a_write_quorum_of_one_loses_turns_to_a_crash_for_good() -> None:
    """Why the default quorum is a majority: acknowledged on its writer alone, a turn dies with it."""
    import random

    from edgecloud.edge.virtual import random_scenario

    lost = 0
    for seed in range(20):
        scenario = dataclasses.replace(random_scenario(random.Random(seed)), write_quorum=1)
        scenario = dataclasses.replace(scenario, crashes=tuple(dataclasses.replace(c, down_s=None)
                                                                for c in scenario.crashes))
        lost += run_scenario(scenario).checker.count("lost_turn")
    assert lost > 0
