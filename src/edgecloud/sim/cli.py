"""``edgecloud sim run|calibrate|validate`` and ``edgecloud bench cluster``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

# sim.cli's _positive and _count are imported by other CLIs (bench ooco); one definition, in cluster.cli
from edgecloud.cluster.cli import count_arg as _count
from edgecloud.cluster.cli import positive_arg as _positive
from edgecloud.errors import USAGE, CLIError, output_file

DEFAULT_TRACE = "../shared/traces/azure_llm_2023_conv.csv"


def _policies(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected policy names separated by commas")
    return names


def _add_trace_options(parser: argparse.ArgumentParser, trace_default: str | None, num_requests: int | None,
                       input_scale: float = 1.0, output_scale: float = 1.0) -> None:
    group = parser.add_argument_group("workload")
    group.add_argument("--trace", default=trace_default,
                       help="Azure LLM 2023 .csv or Mooncake .jsonl trace (read where it is, never copied)")
    group.add_argument("--num-requests", type=_count, default=num_requests, help="the trace's first N requests")
    group.add_argument("--input-scale", type=_positive, default=input_scale, help="scale prompt lengths")
    group.add_argument("--output-scale", type=_positive, default=output_scale, help="scale output lengths")
    group.add_argument("--max-input-len", type=int, default=None, help="cap on scaled prompt length")
    group.add_argument("--max-output-len", type=int, default=None, help="cap on scaled output length")
    group.add_argument("--time-scale", type=_positive, default=1.0, help="arrival times are multiplied by this")
    group.add_argument("--seed", type=int, default=0)


def register(commands: Any, bench: Any) -> None:
    from edgecloud.cluster.cli import policy_option
    from edgecloud.llm.cli import add_engine_options

    sim = commands.add_parser(
        "sim", help="discrete-event cluster simulator: the router's policies over the engine's scheduler",
        description="Simulate a cluster of engine instances: the same routing policies and the engine's own "
        "scheduler and KV manager, with steps priced by the cost model (PerfModel). Every figure it prints is "
        "simulated.",
    )
    verbs = sim.add_subparsers(dest="sim_command", metavar="<verb>")
    verbs.required = True

    run = verbs.add_parser("run", help="replay a trace on a simulated cluster",
                           description="Replay a trace on a simulated cluster and report TTFT, TPOT, e2e (simulated).")
    shape = run.add_argument_group("cluster")
    shape.add_argument("--model", default="llama-3-8b",
                       help="llama-3-8b, llama-3-70b, qwen2.5-7b, deepseek-v3, or a config.json / model directory")
    shape.add_argument("--hardware", default="h100",
                       help="a100, h100, h200, ascend910c, or a JSON profile from `edgecloud sim calibrate`")
    shape.add_argument("--instances", type=_count, default=None, help="mixed instances (default 1 without P/D)")
    shape.add_argument("--prefill", type=_count, default=0)
    shape.add_argument("--decode", type=_count, default=0)
    shape.add_argument("--devices", type=int, default=1, help="accelerators per instance (tensor/expert parallel)")
    shape.add_argument("--max-num-seqs", type=int, default=256)
    shape.add_argument("--max-num-batched-tokens", type=int, default=8192)
    shape.add_argument("--block-size", type=int, default=16)
    shape.add_argument("--no-prefix-caching", action="store_true")
    shape.add_argument("--policy", default=None, help="routing policy (default: pd with P/D instances, else "
                       "round-robin)")
    shape.add_argument("--policy-option", type=policy_option, action="append", default=[], metavar="KEY=VALUE")
    _add_trace_options(run, DEFAULT_TRACE, None)
    run.add_argument("--duration", type=_positive, default=None, help="only the trace's first S seconds")
    run.add_argument("--rate-scale", type=_positive, default=1.0,
                     help="multiply the arrival rate, keeping the trace's pattern over time")
    run.add_argument("--token-times", action="store_true", help="record every token's time (ITL, plots)")
    run.add_argument("--decode-runs", action="store_true",
                     help="advance runs of pure decode steps as one event (faster; times equal to float rounding)")
    run.add_argument("--incremental", action="store_true",
                     help="step only the requests a step changes (fastest; times equal to float rounding; "
                     "no --token-times, no --decode-runs)")
    run.add_argument("--json", dest="json_path", type=output_file, help="write bench-serve-style JSON here")
    run.add_argument("--plot", dest="plot_path", type=output_file, help="write bench-serve-style plots (PNG)")
    run.set_defaults(handler=_run)

    calibrate = verbs.add_parser(
        "calibrate", help="fit the cost model's factors to the engine on this machine",
        description="Time the engine's steps over a sweep of shapes on this machine, fit the cost model's "
        "efficiency factors and overheads, and measure the serving path and the zmq KV transfer; write the "
        "profile (JSON) that --hardware takes.",
    )
    calibrate.add_argument("--out", type=output_file, required=True, help="profile to write (JSON)")
    calibrate.add_argument("--repeats", type=int, default=3, help="times each step shape is measured")
    calibrate.add_argument("--budget", type=_positive, default=120.0, help="seconds for the step sweep at most")
    calibrate.add_argument("--instances", type=int, default=2,
                           help="instances of the cluster the serving path is measured on: the layout the profile "
                           "is for (they share this machine's cores; default 2, as sim validate)")
    calibrate.add_argument("--no-serving-path", action="store_true",
                           help="skip the HTTP and KV-transfer measurements (they start real instances)")
    add_engine_options(calibrate)
    calibrate.set_defaults(handler=_calibrate, threads=1, kv_cache_memory_mb=64.0)

    validate = verbs.add_parser(
        "validate", help="replay one trace slice on a real CPU cluster and in the calibrated simulator",
        description="Replay the same trace slice on a real cluster (edgecloud cluster serve) and in the simulator "
        "calibrated for this machine, per routing policy; report TTFT, TPOT and e2e p50/p90 errors (goal: 10%).",
    )
    validate.add_argument("--hardware", required=True, help="profile from `edgecloud sim calibrate`")
    validate.add_argument("--instances", type=int, default=2)
    validate.add_argument("--policies", type=_policies, default=["round-robin", "prefix-aware"])
    _add_trace_options(validate, DEFAULT_TRACE, 300, input_scale=0.1, output_scale=0.1)
    validate.set_defaults(time_scale=0.5, max_input_len=400, max_output_len=100)
    validate.add_argument("--json", dest="json_path", type=output_file, help="write the cases here")
    validate.add_argument("--step-log", metavar="DIR",
                          help="log the real instances' steps under DIR (one folder per policy) and compare them "
                          "with the cost model per step class (in the JSON's \"steps\")")
    validate.set_defaults(handler=_validate)

    from edgecloud.sim.bench_cli import register_bench

    register_bench(bench)


def _run(args: argparse.Namespace) -> int:
    from edgecloud.bench.report import plot, report_console, summary_table, write_json
    from edgecloud.bench.workload import LengthScaling
    from edgecloud.sim.compare import sim_run_result
    from edgecloud.sim.profiles import ProfileError
    from edgecloud.sim.run import SimClusterSpec, build_instances, simulate, trace_workload_for

    mixed = args.instances if args.instances is not None else (0 if args.prefill or args.decode else 1)
    spec = SimClusterSpec(args.model, args.hardware, mixed, args.prefill, args.decode, args.devices,
                          args.block_size, args.max_num_seqs, args.max_num_batched_tokens,
                          enable_prefix_caching=not args.no_prefix_caching)
    policy = args.policy or ("pd" if args.prefill or args.decode else "round-robin")
    try:
        _, _, max_len = build_instances(spec)
        scaling = LengthScaling(args.input_scale, args.output_scale, args.max_input_len, args.max_output_len)
        workload = trace_workload_for(args.trace, max_len, num_requests=args.num_requests, duration_s=args.duration,
                                      rate_scale=args.rate_scale, time_scale=args.time_scale, scaling=scaling,
                                      seed=args.seed, stream=True)
        result = simulate(spec, policy, workload, dict(args.policy_option), args.token_times, args.decode_runs,
                          args.incremental)
    except (ProfileError, ValueError, OSError) as error:
        raise CLIError(str(error), USAGE) from None
    run = sim_run_result(policy, result)
    title = f"edgecloud sim run (SIMULATED): {spec.describe()}, policy {policy}"
    console = report_console()
    console.print(summary_table(run.summary, title))
    console.print(f"prefix-cache hit rate {run.hit_rate:.1%}; simulated {result.simulated_s:.1f} s in "
                  f"{result.wall_s:.1f} s wall ({result.speedup:.1f}x real time), {result.cpu_s:.1f} CPU s "
                  f"({result.cpu_speedup:.1f}x real time per CPU second), {result.events} events", highlight=False)
    config = {**{k: v for k, v in vars(args).items() if k != "handler" and not callable(v)}, "simulated": True,
              "cluster": spec.describe(), "accelerators": spec.accelerators, "policy": policy,
              "wall_s": result.wall_s, "cpu_s": result.cpu_s, "simulated_s": result.simulated_s,
              "prefix_hit_rate": run.hit_rate}
    if args.json_path:
        write_json(args.json_path, run.summary, run.records, config)
    if args.plot_path:
        plot(args.plot_path, run.records, run.summary, title=f"SIMULATED: {spec.describe()}, {policy}")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from edgecloud.llm import InvalidRequestError, ModelLoadError
    from edgecloud.llm.cli import engine_config_from_args
    from edgecloud.sim.calibrate import calibrate, describe

    try:
        config = engine_config_from_args(args)
        profile = calibrate(config, repeats=args.repeats, serving_path=not args.no_serving_path, budget_s=args.budget,
                            instances=args.instances)
    except (InvalidRequestError, ModelLoadError) as error:
        raise CLIError(str(error), USAGE) from None
    Path(args.out).write_text(json.dumps(profile.to_json(), indent=2) + "\n")
    print(describe(profile))
    print(f"wrote {args.out}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from edgecloud.sim.profiles import ProfileError, load_hardware
    from edgecloud.sim.validate import TOLERANCE, ValidationSettings, validate, write

    try:
        _, profile = load_hardware(args.hardware)
    except ProfileError as error:
        raise CLIError(str(error), USAGE) from None
    if profile is None:
        raise CLIError(f"--hardware must be a profile from `edgecloud sim calibrate`, got the preset {args.hardware!r}",
                       USAGE)
    settings = ValidationSettings(args.trace, args.num_requests, args.input_scale, args.output_scale,
                                  args.max_input_len, args.max_output_len, args.time_scale, args.instances,
                                  args.policies, args.seed)
    try:
        result = validate(profile, settings, args.step_log)
    except (OSError, ValueError) as error:
        raise CLIError(str(error)) from None
    for case in result["cases"]:
        error = case["error"]
        mark = "ok" if error is not None and abs(error) <= TOLERANCE else "MISSED"
        shown = "-" if error is None else f"{error:+.1%}"
        print(f"{case['policy']:>16} {case['metric']:>4} {case['quantile']}: real {case['real_ms']:8.1f} ms, "
              f"simulated {case['sim_ms']:8.1f} ms, error {shown:>7} {mark}")
    for policy, classes in result.get("steps", {}).items():
        for name, c in classes.items():
            print(f"{policy:>16} {name:>12} steps: {c['steps']:5d}, real p50/mean {c['real_ms_p50']:6.2f}/"
                  f"{c['real_ms_mean']:6.2f} ms, model {c['model_ms_p50']:6.2f}/{c['model_ms_mean']:6.2f} ms, "
                  f"model/real p10 {c['ratio_p10']:.2f} p50 {c['ratio_p50']:.2f} p90 {c['ratio_p90']:.2f}, loop "
                  f"p50/mean {c['gap_ms_p50']:.3f}/{c['gap_ms_mean']:.3f} ms")
    print("passed" if result["passed"] else "not within 10% everywhere")
    if args.json_path:
        write(args.json_path, result)
    return 0 if result["passed"] else 1
