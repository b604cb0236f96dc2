"""C2P2SL's joint optimiser: cut layer, micro-batches per UE and uplink shares (Sec. IV).

The problem: minimise the round time ``round_time_bound`` (see ``latency``) over

* the cut layer ``c`` (discrete),
* every UE's number of equal micro-batches ``m_k in 1..M`` (discrete),
* every UE's uplink share ``b_k > 0`` with ``sum b_k <= 1`` (continuous).

It is mixed-integer and non-linear, so, as in the paper, we alternate:

1. **Discrete step — MILP.** With the shares fixed every candidate (k, c, m) has a known round
   time ``tau[k,c,m]``. Binary ``x_c`` picks the cut and ``z[k,c,m] <= x_c`` picks each UE's
   micro-batch count; ``T >= sum z·tau`` per UE and ``T >= sum z·(BS work)`` for the shared BS.
   Minimising ``T + sum x_c·sync_c`` (the client-model averaging per round, which grows with
   the UE-side parameters) is an exact MILP, solved by HiGHS through ``scipy.optimize.milp``.
2. **Continuous step — convex program.** With (c, m) fixed each UE's time is a max of pieces
   ``const + coef·U_k/b_k`` (convex in ``b_k``); minimise the epigraph variable ``T`` subject
   to every piece and ``sum b <= 1`` with SLSQP (``scipy.optimize.minimize``).

Each step is optimal given the other, so the round time never increases; we stop when it stops
improving and keep the best of two starts (equal shares, and shares that equalise rates).
``exhaustive`` enumerates every (c, m) and solves the shares exactly by bisection on ``T`` —
the reference the tests hold the optimiser to (within 2%).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp, minimize

from edgecloud.splitlearn.latency import (
    Plan,
    Scenario,
    UEBoundTerms,
    bound_terms,
    bs_bound,
    round_time_bound,
    simulate,
    sync_per_round,
)
from edgecloud.splitlearn.wireless import spectral_efficiency

MIN_SHARE = 1e-4


@dataclass(frozen=True)
class OptimisedPlan:
    plan: Plan
    bound_s: float  # the optimiser's objective (closed-form round time)
    iterations: int


class _Terms:
    """Cache of ``bound_terms`` for every (cut, UE, m)."""

    def __init__(self, scenario: Scenario, cuts: list[int], max_m: int) -> None:
        self.scenario = scenario
        self.cuts = cuts
        self.ms = list(range(1, max_m + 1))
        self.ue = {
            (c, k, m): bound_terms(scenario, c, k, m)
            for c in cuts
            for k in range(scenario.num_ues)
            for m in self.ms
        }


def _milp_step(terms: _Terms, shares: tuple[float, ...]) -> tuple[int, tuple[int, ...]]:
    """Best (cut, micro-batches) for fixed shares: exact, by HiGHS."""
    sc = terms.scenario
    cuts, ms, k_count = terms.cuts, terms.ms, sc.num_ues
    n_x = len(cuts)
    z_index = {(k, c, m): n_x + i for i, (k, c, m) in enumerate(itertools.product(range(k_count), cuts, ms))}
    t_index = n_x + len(z_index)
    n = t_index + 1
    rows, lo, hi = [], [], []

    def row() -> np.ndarray:
        return np.zeros(n)

    pick_cut = row()
    pick_cut[:n_x] = 1.0
    rows.append(pick_cut), lo.append(1.0), hi.append(1.0)
    for k in range(k_count):
        for ci, c in enumerate(cuts):
            link = row()
            link[ci] = -1.0
            for m in ms:
                link[z_index[k, c, m]] = 1.0
            rows.append(link), lo.append(0.0), hi.append(0.0)
        ue_time = row()
        for c in cuts:
            for m in ms:
                ue_time[z_index[k, c, m]] = terms.ue[c, k, m].round_s(shares[k])
        ue_time[t_index] = -1.0
        rows.append(ue_time), lo.append(-np.inf), hi.append(0.0)
    bs_time = row()
    for ci, c in enumerate(cuts):
        # The BS step depends on the cut only; per-micro-batch BS work is attributed to each z.
        bs_time[ci] = bs_bound(sc, c, (1,) * k_count) - sum(terms.ue[c, k, 1].s for k in range(k_count))
        for k in range(k_count):
            for m in ms:
                bs_time[z_index[k, c, m]] = m * terms.ue[c, k, m].s
    bs_time[t_index] = -1.0
    rows.append(bs_time), lo.append(-np.inf), hi.append(0.0)

    cost = row()
    cost[t_index] = 1.0
    for ci, c in enumerate(cuts):
        cost[ci] = sync_per_round(sc, c)
    integrality = np.ones(n)
    integrality[t_index] = 0
    upper = np.ones(n)
    upper[t_index] = np.inf
    result = milp(
        cost,
        constraints=LinearConstraint(np.array(rows), lo, hi),
        integrality=integrality,
        bounds=Bounds(np.zeros(n), upper),
    )
    if not result.success:
        raise RuntimeError(f"HiGHS failed on the discrete step: {result.message}")
    x = result.x
    cut = cuts[int(np.argmax(x[:n_x]))]
    micro = tuple(max(ms, key=lambda m, k=k: x[z_index[k, cut, m]]) for k in range(k_count))
    return cut, micro


def _convex_step(ue_terms: list[UEBoundTerms], bs_s: float, start: tuple[float, ...]) -> tuple[float, ...]:
    """Best shares for fixed (cut, micro-batches): min T s.t. T >= every piece, sum b <= 1."""
    k_count = len(ue_terms)
    pieces = [
        (k, const, coef * t.uplink_s_at_full_share)
        for k, t in enumerate(ue_terms)
        for const, coef in t.pieces()
    ]
    # Variables: [T, b_1..b_K]; work in milliseconds so SLSQP's tolerances mean something.
    scale = 1e3

    def t_minus_pieces(v: np.ndarray) -> np.ndarray:
        return np.array([v[0] - scale * (const + w / v[1 + k]) for k, const, w in pieces])

    def t_minus_pieces_jac(v: np.ndarray) -> np.ndarray:
        jac = np.zeros((len(pieces), k_count + 1))
        for i, (k, _, w) in enumerate(pieces):
            jac[i, 0] = 1.0
            jac[i, 1 + k] = scale * w / v[1 + k] ** 2
        return jac

    x0 = np.array(
        [scale * max(max(t.round_s(b) for t, b in zip(ue_terms, start, strict=True)), bs_s), *start]
    )
    result = minimize(
        lambda v: v[0],
        x0,
        jac=lambda v: np.eye(k_count + 1)[0],
        method="SLSQP",
        bounds=[(scale * bs_s, None)] + [(MIN_SHARE, 1.0)] * k_count,
        constraints=[
            {"type": "ineq", "fun": t_minus_pieces, "jac": t_minus_pieces_jac},
            {
                "type": "ineq",
                "fun": lambda v: 1.0 - v[1:].sum(),
                "jac": lambda v: np.r_[0.0, -np.ones(k_count)],
            },
        ],
        options={"ftol": 1e-10, "maxiter": 500},
    )
    shares = np.clip(result.x[1:], MIN_SHARE, 1.0)
    shares = shares / max(1.0, shares.sum())
    return tuple(float(b) for b in shares)


def _starts(scenario: Scenario) -> list[tuple[float, ...]]:
    k = scenario.num_ues
    inverse = np.array([1.0 / spectral_efficiency(u.snr_db) for u in scenario.ues])
    return [(1.0 / k,) * k, tuple(float(b) for b in inverse / inverse.sum())]


def optimise(
    scenario: Scenario, max_micro_batches: int = 8, cut: int | None = None, max_iterations: int = 20
) -> OptimisedPlan:
    """Alternate MILP (cut, micro-batches) and convex (shares) steps; ``cut`` pins the cut."""
    max_m = min(max_micro_batches, scenario.batch_per_ue)
    if max_m < 1:
        raise ValueError(f"max_micro_batches must be >= 1, got {max_micro_batches}")
    cuts = list(scenario.profile.cuts) if cut is None else [cut]
    if cut is not None and cut not in scenario.profile.cuts:
        raise ValueError(
            f"cut must be in {scenario.profile.cuts.start}..{scenario.profile.cuts.stop - 1}, got {cut}"
        )
    best: OptimisedPlan | None = None
    # Alternation finds a coordinate-wise optimum; the cut is the coarsest coordinate, so we
    # also restart with each cut pinned (a handful of MILPs) and keep the best.
    restarts = [cuts] + ([[c] for c in cuts] if len(cuts) > 1 else [])
    for allowed in restarts:
        terms = _Terms(scenario, allowed, max_m)
        for start in _starts(scenario):
            best = _alternate(scenario, terms, start, max_iterations, best)
    assert best is not None
    return best


def _alternate(
    scenario: Scenario,
    terms: _Terms,
    shares: tuple[float, ...],
    max_iterations: int,
    best: OptimisedPlan | None,
) -> OptimisedPlan:
    previous = float("inf")
    for iteration in range(1, max_iterations + 1):
        c, micro = _milp_step(terms, shares)
        ue_terms = [terms.ue[c, k, m] for k, m in enumerate(micro)]
        shares = _convex_step(ue_terms, bs_bound(scenario, c, micro), shares)
        plan = Plan("c2p2sl", c, micro, shares)
        value = round_time_bound(scenario, plan)
        if best is None or value < best.bound_s:
            best = OptimisedPlan(plan, value, iteration)
        if value >= previous * (1 - 1e-6):
            break
        previous = value
    assert best is not None
    return best


def optimal_shares(ue_terms: list[UEBoundTerms], bs_s: float) -> tuple[float, tuple[float, ...]]:
    """Exact optimum of the continuous step by bisection on T (each UE's minimal share is closed-form)."""
    lo = max(bs_s, *(max(const for const, coef in t.pieces() if coef == 0) for t in ue_terms))
    hi = max(bs_s, *(t.round_s(1.0 / len(ue_terms)) for t in ue_terms))
    if sum(t.min_share(lo) for t in ue_terms) <= 1.0:
        hi = lo
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if sum(t.min_share(mid) for t in ue_terms) <= 1.0:
            hi = mid
        else:
            lo = mid
    needed = [t.min_share(hi) for t in ue_terms]
    slack = (1.0 - sum(needed)) / len(needed)
    return hi, tuple(max(b + slack, MIN_SHARE) for b in needed)


def exhaustive(scenario: Scenario, max_micro_batches: int = 8, cut: int | None = None) -> OptimisedPlan:
    """Every cut and micro-batch vector, with exactly optimal shares: the reference optimum."""
    max_m = min(max_micro_batches, scenario.batch_per_ue)
    cuts = list(scenario.profile.cuts) if cut is None else [cut]
    terms = _Terms(scenario, cuts, max_m)
    best: OptimisedPlan | None = None
    for c in cuts:
        for micro in itertools.product(terms.ms, repeat=scenario.num_ues):
            ue_terms = [terms.ue[c, k, m] for k, m in enumerate(micro)]
            value, shares = optimal_shares(ue_terms, bs_bound(scenario, c, micro))
            value += sync_per_round(scenario, c)
            if best is None or value < best.bound_s:
                best = OptimisedPlan(Plan("c2p2sl", c, micro, shares), value, 0)
    assert best is not None
    return best


def sequential_plan(scenario: Scenario) -> Plan:
    """Sequential split learning at its own best cut (by the simulated round time)."""
    k = scenario.num_ues
    plans = [Plan("sequential", c, (1,) * k, (1.0 / k,) * k) for c in scenario.profile.cuts]
    period = scenario.rounds_per_sync
    return min(plans, key=lambda p: simulate(scenario, p, rounds=period, rounds_per_sync=period).total_s)
