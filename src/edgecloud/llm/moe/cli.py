"""``edgecloud bench moe``: expert placement policies on the trained MoE's routing (docs/moe.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 2,4, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"every value must be >= 1, got {text!r}")
    return values


def _positive_int(text: str) -> int:
    value = _ints(text)
    if len(value) != 1:
        raise argparse.ArgumentTypeError(f"expected one integer >= 1, got {text!r}")
    return value[0]


def register(commands: Any, bench: Any) -> None:
    from edgecloud.llm.moe.bench import ASSET

    parser = bench.add_parser(
        "moe", help="expert placement (static, EPLB, OmniPlacement) on a trained MoE's real routing",
        description="Record the trained MoE's routing on held-out prose and code, replay it through each "
        "placement policy (per-layer max/mean rank load, recovery after the workload shift), the same for "
        "synthetic Zipf drift, and optionally time real expert parallelism over processes (--ep).",
    )
    parser.add_argument("--model", type=Path, default=ASSET, help="a model written by scripts/train_moe_model.py")
    parser.add_argument("--ranks", type=_ints, default=(2, 4), help="EP sizes for the trace replay")
    parser.add_argument("--spare-slots", type=int, default=1, help="redundant slots per rank (eplb, omni)")
    parser.add_argument("--prompts", type=_positive_int, default=24, help="prompts per workload")
    parser.add_argument("--max-tokens", type=_positive_int, default=32)
    parser.add_argument("--max-num-seqs", type=_positive_int, default=8)
    parser.add_argument("--ep", type=_ints, default=(), help="EP sizes to run for real over processes, e.g. 2")
    parser.add_argument("--ep-prompts", type=_positive_int, default=8)
    parser.add_argument("--ep-repeats", type=_positive_int, default=3)
    parser.add_argument("--threads", type=_positive_int, default=None, help="torch threads of the trace run")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--plot", type=Path, help="write the imbalance-over-steps plot here (PNG)")
    parser.add_argument("--trace-out", type=Path, help="write the recorded routing traces here (JSON)")
    parser.add_argument("--trace-in", type=Path,
                        help="replay routing traces recorded earlier (--trace-out) instead of recording them")
    parser.add_argument("--prompt-set", choices=("eval", "tune"), default="eval",
                        help="held-out text to record: eval, or tune (other text of the same workloads, to "
                        "choose settings on)")
    parser.set_defaults(handler=_bench_moe)

    ep = bench.add_parser(
        "moe-ep", help="real expert parallelism: does step time follow the busiest rank's expert load?",
        description="Serve the same held-out code prompts again and again with the trained MoE's experts over "
        "--ep processes under five placements taking turns (static, eplb, omni, omni-fit, packed); per step the "
        "time and the busiest rank's (token, expert) pairs; medians with bootstrap intervals and a line fit.",
    )
    ep.add_argument("--model", type=Path, default=ASSET, help="a model written by scripts/train_moe_model.py")
    ep.add_argument("--ep", type=_positive_int, default=2, help="EP ranks (processes, one torch thread each)")
    ep.add_argument("--spare-slots", type=int, default=1, help="redundant slots per rank (eplb, omni, omni-fit)")
    ep.add_argument("--prompts", type=_positive_int, default=8, help="code prompts served together each round")
    ep.add_argument("--max-tokens", type=_positive_int, default=8)
    ep.add_argument("--rounds", type=_positive_int, default=20, help="rounds; every placement serves once a round")
    ep.add_argument("--json", type=Path, help="write the report here")
    ep.add_argument("--plot", type=Path, help="write step time against the busiest rank's pairs here (PNG)")
    ep.set_defaults(handler=_bench_moe_ep)


def _bench_moe(args: argparse.Namespace) -> int:
    from edgecloud.errors import USAGE, CLIError
    from edgecloud.llm.moe.bench import plot, run

    if args.spare_slots < 0:
        raise CLIError(f"--spare-slots must be >= 0, got {args.spare_slots}", USAGE)
    try:
        report = run(args.model, args.ranks, args.spare_slots, args.prompts, args.max_tokens, args.max_num_seqs,
                     args.ep, args.ep_prompts, args.ep_repeats, threads=args.threads, trace_out=args.trace_out,
                     trace_in=args.trace_in, prompt_set=args.prompt_set)
    except (FileNotFoundError, ValueError) as error:
        raise CLIError(str(error), USAGE) from None
    print(f"{'mode':9} {'EP':>3} {'policy':7} {'phase':14} {'max/mean':>9} {'step ms':>8} {'TPOT ms':>8} recovery")
    for case in report["cases"]:
        step = "-" if case["step_ms"] is None else f"{case['step_ms']:.2f}"
        tpot = "-" if case["tpot_ms"] is None else f"{case['tpot_ms']:.2f}"
        recovery = "" if case["recovery_steps"] is None else f"{case['recovery_steps']} steps"
        print(f"{case['mode']:9} {case['ep']:>3} {case['policy']:7} {case['phase']:14} {case['max_mean_load']:>9.3f} "
              f"{step:>8} {tpot:>8} {recovery}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.plot:
        plot(args.plot, report)
    return 0


def _bench_moe_ep(args: argparse.Namespace) -> int:
    from edgecloud.errors import USAGE, CLIError
    from edgecloud.llm.moe.ep_timing import plot, run

    if args.spare_slots < 0:
        raise CLIError(f"--spare-slots must be >= 0, got {args.spare_slots}", USAGE)
    try:
        report = run(args.model, args.ep, args.spare_slots, args.prompts, args.max_tokens, args.rounds)
    except (FileNotFoundError, ValueError) as error:
        raise CLIError(str(error), USAGE) from None
    print(f"{'policy':8} {'max/mean':>8} {'prefill ms [95% CI]':>26} {'x static [95% CI]':>24} "
          f"{'decode ms [95% CI]':>24} {'TPOT ms':>8}")
    for case in report["cases"]:
        lo, hi = case["prefill_step_ms_ci"]
        rlo, rhi = case["prefill_vs_static_ci"]
        dlo, dhi = case["decode_step_ms_ci"]
        print(f"{case['policy']:8} {case['max_mean_load']:>8.3f} {case['prefill_step_ms']:>8.2f} "
              f"[{lo:7.2f}, {hi:7.2f}] "
              f"{case['prefill_vs_static']:>8.3f} [{rlo:.3f}, {rhi:.3f}] {case['decode_step_ms']:>6.2f} "
              f"[{dlo:6.2f}, {dhi:6.2f}] {case['tpot_ms']:>8.2f}")
    for key, fit in report["fits"].items():
        lo, hi = fit["slope_ci"]
        print(f"{key} steps: {1000 * fit['slope']:.3f} ms per 1000 pairs of the busiest ranks [{1000 * lo:.3f}, "
              f"{1000 * hi:.3f}], r = {fit['r']:.3f}, {fit['points']} steps")
    if args.json:  # compact: every step is recorded
        args.json.write_text(json.dumps(report, separators=(",", ":")) + "\n")
    if args.plot:
        plot(args.plot, report)
    return 0
